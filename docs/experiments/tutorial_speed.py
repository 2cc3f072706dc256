"""Each tutorial recipe's training speed in mnistlab against its own framework's, on this CPU.

    .venv/bin/python docs/experiments/tutorial_speed.py [--recipes deep-mnist,keras-cnn]
        [--turns 10] [--tf-env ~/.cache/mnistlab/tf-env] [--json PATH]

The TensorFlow side is docs/experiments/tutorial_speed_tf.py, run in a TensorFlow environment
of its own (made at --tf-env on first use: tensorflow-cpu, never a dependency of mnistlab);
the mnistlab side is mnistlab's training engine on the CPU. Both train in fp32 at the recipe's
batch size, each in a process of its own, the two processes alive together and taking turns:
N steps of one side, then N of the other (N below, about a second of training or more; for
Keras a whole epoch, one fit), --turns times each, the side that goes first alternating. This
shared machine changes speed every few seconds (docs/BENCHMARKS.md, Known gaps), so each
turn's pair of timings is the comparison it disturbs least: the table gives each side's total
time and TF's time over mnistlab's as the median of the turns' ratios, with their range.

Each side's rate is the recipe's training arithmetic (one forward and backward of the mnistlab
model, counted by torch's FlopCounterMode: convolutions and matrix products) per update,
times the updates, over the time. The peak is the faster of two large fp32 matrix products
measured here: MKL's sgemm (torch.mm) and oneDNN's (torch's mkldnn_linear).

Timing: each side first trains one step untimed, after which TensorFlow has optimised its
graph and Keras traced its train function (see tutorial_speed_tf.py) and oneDNN has built
mnistlab's kernels. A turn's time runs from its first step to its last; mnistlab's leaves out
its engine's checkpoints and validations at an epoch's end, which are not training time.

`--baseline TREE` puts mnistlab's side from another source tree (TREE/src: a worktree of
another commit, say) in TensorFlow's place, to measure a change the same way:

    git worktree add /tmp/before HEAD~1
    .venv/bin/python docs/experiments/tutorial_speed.py --baseline /tmp/before --recipes strided-cnn

`--mnistlab-side RECIPE --steps N` runs mnistlab's side alone, once: its train_seconds for N
steps, the first included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TF_REQUIREMENT = "tensorflow-cpu==2.21.0"
TF_SCRIPT = Path(__file__).with_name("tutorial_speed_tf.py")

# Steps per turn: half a second of training or more on two cores, so that a turn's start (caches
# gone cold, threads asleep) weighs little.
STEPS = {
    "softmax-regression": 2000,  # twice its schedule
    "deep-mnist": 100,  # a multiple of 100: the tutorial logs its accuracy at every 100th
    "deep-mnist-as-printed": 5000,  # iterations (50 updates): a multiple of 100 likewise
    "opengenus-cnn": 40,
    "strided-cnn": 400,
    "keras-cnn": 938,  # one epoch of 60,000 at 64: a fit() of one epoch a turn
}


class Failed(SystemExit):
    """One clear line on stderr, exit status 1."""

    def __init__(self, line: str) -> None:
        super().__init__(f"tutorial_speed: {line}")


# -----------------------------------------------------------------------------
# The TensorFlow environment.


def tf_python(env: Path) -> Path:
    """The TensorFlow environment's Python, making the environment first if it has none."""
    python = env / "bin" / "python"
    if not python.exists():
        print(f"creating a TensorFlow environment at {env} ({TF_REQUIREMENT})", file=sys.stderr)
        _check([sys.executable, "-m", "venv", str(env)], f"python -m venv {env} failed")
    if not _has_tensorflow(python):
        _check([str(python), "-m", "pip", "install", "--quiet", TF_REQUIREMENT],
               f"pip install {TF_REQUIREMENT} into {env} failed")
        if not _has_tensorflow(python):
            raise Failed(f"{env} has no tensorflow after pip install {TF_REQUIREMENT}")
    return python


def _has_tensorflow(python: Path) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is None)"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def _check(command: list[str], message: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise Failed(f"{message}: {last[-1] if last else f'exit status {done.returncode}'}")


# -----------------------------------------------------------------------------
# The machine: its CPU and its fp32 peak.


def cpu_info() -> dict:
    """/proc/cpuinfo's first model name and cpu family, and the CPUs this process may use."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            fields.setdefault(key, value)  # the first CPU's; they are all alike here
    except OSError:  # not Linux: the table says unknown
        pass
    return {"model_name": fields.get("model name", platform.processor() or "unknown"),
            "cpu_family": fields.get("cpu family", "unknown"),
            "cpus": len(os.sched_getaffinity(0))}


def median_gflops(product, flops: float, repeats: int) -> float:
    """The median rate of `product()` over `repeats` calls, after one untimed call (oneDNN
    builds its kernel then; MKL packs its buffers)."""
    product()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        seconds.append(time.perf_counter() - start)
    return flops / statistics.median(seconds) / 1e9


def measure_peak(n: int, repeats: int) -> dict:
    """fp32 n x n by n x n products through MKL (torch.mm) and oneDNN (mkldnn_linear, which
    multiplies by the transposed weight: the same arithmetic). The faster one is the peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2.0 * n**3
    mkl = median_gflops(lambda: torch.mm(a, b), flops, repeats)
    a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
    onednn = median_gflops(lambda: torch.ops.aten.mkldnn_linear(a_dnn, b_dnn), flops, repeats)
    return {"n": n, "repeats": repeats, "mkl_sgemm_gflops": mkl, "onednn_sgemm_gflops": onednn,
            "peak_gflops": max(mkl, onednn), "threads": torch.get_num_threads()}


# -----------------------------------------------------------------------------
# The recipes: their batch, their updates, their arithmetic.


def _inner_product_flops(input_shape, weight_shape, *_args, **_kwargs) -> int:
    """oneDNN's inner product (a @ w.T + bias), which FlopCounterMode does not know."""
    return 2 * math.prod(input_shape[:-1]) * weight_shape[0] * weight_shape[1]


def training_flops(recipe) -> int:
    """One update's arithmetic: a forward and backward of the recipe's mnistlab model on a batch,
    as FlopCounterMode counts it (matrix products and convolutions, which both frameworks
    perform alike; the elementwise rest and the optimizer are not counted).

    mnistlab may run a layer through an op FlopCounterMode has no formula for (its dense
    layers call oneDNN directly), which would count as nothing: the known ones get a formula,
    and every layer with a weight matrix must then count at least what its weights imply
    (forward and weight gradient: 4 x batch x weights), or this stops rather than understate."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from mnistlab.models import build_model

    model = build_model(recipe.model.name, init=recipe.model.init, **recipe.model.args)
    batch = recipe.train.batch_size
    images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with torch.no_grad():  # a first call outside the count: layers may probe their backend then
        model(images)
    formulas = {torch.ops.mkldnn._linear_pointwise: _inner_product_flops}
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        F.cross_entropy(model(images), labels).backward()
    by_module = counter.get_flop_counts()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not name or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        counted = sum(by_module.get(f"{type(model).__name__}.{name}", {}).values())
        if counted < 4 * batch * weight.numel():
            raise Failed(f"{recipe.name}: FlopCounterMode counted {counted:,} FLOPs for layer "
                         f"{name} ({type(module).__name__}), fewer than its weights imply: it "
                         "runs an op without a flop formula; add one to training_flops")
    return counter.get_total_flops()


def recipe_facts(name: str, steps: int) -> dict:
    from mnistlab.recipebook import load_recipe

    recipe = load_recipe(name)
    update_every = recipe.quirks.update_every  # Deep MNIST as printed trains every 100th
    return {"steps": steps, "batch_size": recipe.train.batch_size,
            "updates": math.ceil(steps / update_every), "flops_per_update": training_flops(recipe)}


# -----------------------------------------------------------------------------
# The two sides, each in a process of its own.


class Side:
    """One side's process, alive for all of a recipe's turns: it prints its facts as a JSON
    line once it has trained its untimed first step, then the seconds of N steps as a JSON
    line at each "go" written to it. A failure is one line with its last error."""

    def __init__(self, command: list[str], what: str, cwd: str, env: dict | None = None):
        self.what = what
        self._errors = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._errors, text=True, cwd=cwd, env=env)
        self.facts = self._read()

    def turn(self) -> float:
        try:
            self._process.stdin.write("go\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            self._fail()
        return self._read()["seconds"]

    def close(self) -> None:
        self._process.stdin.close()
        if self._process.wait() != 0:
            self._fail()

    def _read(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            self._fail()
        return json.loads(line)

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()

    def _fail(self):
        self.kill()
        self._errors.seek(0)
        errors = self._errors.read().strip().splitlines()
        raise Failed(f"{self.what} failed (exit status {self._process.returncode}): "
                     f"{errors[-1] if errors else 'no output'}")


def take_turns(recipe: str, steps: int, turns: int, other: dict) -> dict:
    """mnistlab's side of a recipe against `other` (its "command", "what" and optionally "env"),
    `turns` turns of `steps` steps each, the other side first in odd turns: their facts and
    seconds as {"other": ..., "mnistlab": ...}."""
    starts = {"other": other, "mnistlab": {"command": mnistlab_command(recipe, steps, turns),
                                           "what": f"mnistlab's {recipe}"}}
    sides: dict[str, Side] = {}
    seconds = {"other": [], "mnistlab": []}
    with tempfile.TemporaryDirectory() as cwd:  # nothing a side writes lands in the repository
        try:
            for side, start in starts.items():
                sides[side] = Side(start["command"], start["what"], cwd, start.get("env"))
            for turn in range(1, turns + 1):
                for side in ("other", "mnistlab") if turn % 2 else ("mnistlab", "other"):
                    seconds[side].append(sides[side].turn())
                print(f"turn {turn}/{turns} {recipe}: {other['what']} {seconds['other'][-1]:.3f} s, "
                      f"mnistlab {seconds['mnistlab'][-1]:.3f} s", file=sys.stderr, flush=True)
            for side in sides.values():
                side.close()
        finally:  # a side that failed takes the other down with it
            for side in sides.values():
                side.kill()
    return {side: {**sides[side].facts, "seconds": seconds[side]} for side in sides}


def tensorflow_side(recipe: str, steps: int, tf_python: Path, data: Path) -> dict:
    return {"command": [str(tf_python), str(TF_SCRIPT), recipe, "--steps", str(steps), "--data",
                        str(data), "--turns"], "what": f"TensorFlow's {recipe}"}


def baseline_side(recipe: str, steps: int, turns: int, tree: Path) -> dict:
    """mnistlab's side run from another source tree (a worktree of another commit, say)."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve() / "src")}
    return {"command": mnistlab_command(recipe, steps, turns), "what": f"{tree}'s {recipe}",
            "env": env}


def mnistlab_command(recipe: str, steps: int, turns: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--mnistlab-side", recipe,
            "--steps", str(steps), "--turns", str(turns)]


def mnistlab_side(recipe: str, steps: int) -> None:
    """The mnistlab side run alone, once: its train_seconds for `steps` steps."""
    import mnistlab

    with tempfile.TemporaryDirectory() as out:
        run = mnistlab.train(recipe, steps=steps, device="cpu", quiet=True, report=False,
                             out=Path(out) / "run")
    print(json.dumps({"recipe": recipe, "steps": run.result.steps_done, "seconds": run.train_seconds,
                      **mnistlab_facts()}))


def mnistlab_facts() -> dict:
    import torch

    import mnistlab

    return {"mnistlab_version": mnistlab.__version__, "torch_version": torch.__version__,
            "threads": torch.get_num_threads()}


def mnistlab_turns(recipe_name: str, steps: int, turns: int) -> None:
    """The mnistlab side's process in turns (Side): 1 + steps x turns steps of the engine, the
    first untimed."""
    from mnistlab.recipebook import load_recipe
    from mnistlab.training.engine import Trainer
    from mnistlab.training.progress import Progress

    class TurnTrainer(Trainer):
        """The engine, with the seconds of its checkpoints (and validations) counted apart."""

        paused = 0.0

        def _checkpoint(self, *args, **kwargs) -> None:  # its arguments vary between commits
            start = time.perf_counter()
            super()._checkpoint(*args, **kwargs)
            self.paused += time.perf_counter() - start

    total = 1 + steps * turns
    began = paused = 0.0

    def on_step(trainer: TurnTrainer, done: int) -> None:  # before that step's checkpoint
        nonlocal began, paused
        if (done - 1) % steps:
            return
        if done == 1:
            print(json.dumps({"recipe": recipe_name, "steps": steps, **mnistlab_facts()}), flush=True)
        else:
            seconds = time.perf_counter() - began - (trainer.paused - paused)
            print(json.dumps({"seconds": seconds}), flush=True)
        if done == total:  # the run's end (a checkpoint, a test) waits for the other side's turn
            sys.stdin.read()
        elif sys.stdin.readline().strip() != "go":
            raise SystemExit("tutorial_speed: the mnistlab side expected 'go' on stdin")
        began, paused = time.perf_counter(), trainer.paused

    recipe = load_recipe(recipe_name).with_length(steps=total)
    with tempfile.TemporaryDirectory() as out:
        TurnTrainer(recipe, Path(out) / "run", device="cpu", progress=Progress(1, quiet=True),
                    on_step=on_step).run()


# -----------------------------------------------------------------------------
# The report.


def side_cell(seconds: float, facts: dict, peak: float) -> str:
    gflops = facts["flops_per_update"] * facts["updates"] / seconds / 1e9
    ms = seconds / facts["steps"] * 1e3
    # three significant figures: the recipes' steps run from a fraction of a ms to 100 ms
    return (f"{seconds:.3g} s ({ms:.3g} ms/step, {gflops:.3g} GFLOP/s, "
            f"{100 * gflops / peak:.3g}% of peak)")


def table(results: dict, peak: dict, cpu: dict, found: dict) -> str:
    rows = [
        f"CPU: {cpu['model_name']} (cpu family {cpu['cpu_family']}), {cpu['cpus']} CPUs; "
        f"torch threads {peak['threads']}; TensorFlow's pools at their defaults ({tf_threads(results)})",
        f"fp32 peak: {peak['peak_gflops']:.1f} GFLOP/s (oneDNN sgemm {peak['onednn_sgemm_gflops']:.1f}, "
        f"MKL sgemm {peak['mkl_sgemm_gflops']:.1f}; {peak['n']}x{peak['n']} products, "
        f"median of {peak['repeats']})",
        "versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
        "",
        "| recipe | turns x steps x batch | TF, all turns | mnistlab, all turns "
        "| TF / mnistlab: median of the turns (range) |",
        "|---|---|---|---|---|",
    ]
    fastest = 0.0
    for name, r in results.items():
        tf_s, ml_s = sum(r["tf"]["seconds"]), sum(r["mnistlab"]["seconds"])
        ratios = turn_ratios(r)
        rows.append(f"| {name} | {r['turns']} x {r['steps_per_turn']:,} x {r['batch_size']} "
                    f"| {side_cell(tf_s, r, peak['peak_gflops'])} "
                    f"| {side_cell(ml_s, r, peak['peak_gflops'])} "
                    f"| {statistics.median(ratios):.3f}x ({min(ratios):.3f} to {max(ratios):.3f}) |")
        fastest = max(fastest, max(r["flops_per_update"] * r["updates"] / r["turns"] / s / 1e9
                                   for s in r["tf"]["seconds"] + r["mnistlab"]["seconds"]))
    if fastest > peak["peak_gflops"]:  # the machine was busier while the peak was measured
        rows.append(f"\nnote: a turn ran at {fastest:.3g} GFLOP/s, above the measured peak: "
                    "the peak was measured in a slow spell; rerun on a quiet machine")
    return "\n".join(rows)


def turn_ratios(r: dict) -> list[float]:
    """TF's time over mnistlab's, turn by turn: two timings a second or so apart."""
    return [tf / ml for tf, ml in zip(r["tf"]["seconds"], r["mnistlab"]["seconds"])]


def tf_threads(results: dict) -> str:
    """The TF side's report of its pools (0: sized by TensorFlow, one thread per CPU)."""
    t = next(iter(results.values()))["tf"]["threads"]
    return f"intra-op {t['intra_op']}, inter-op {t['inter_op']}, of {t['cpus']} CPUs"


def versions(results: dict) -> dict:
    import torch

    import mnistlab

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "mnistlab": mnistlab.__version__}
    for r in results.values():
        found["tensorflow"] = r["tf"]["tf_version"]
        if "keras_version" in r["tf"]:
            found["keras"] = r["tf"]["keras_version"]
    return found


# -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(STEPS),
                        help="comma-separated; default: all six tutorial recipes")
    parser.add_argument("--turns", type=int, help="turns of each side per recipe (default 10)")
    parser.add_argument("--tf-env", type=Path, default=Path.home() / ".cache/mnistlab/tf-env")
    parser.add_argument("--json", type=Path, help="write every turn's figures here")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="instead of TensorFlow, mnistlab from TREE/src against this tree's")
    parser.add_argument("--peak-size", type=int, default=4096)
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--mnistlab-side", metavar="RECIPE", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mnistlab_side:
        return args
    args.turns = 10 if args.turns is None else args.turns
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in STEPS]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}: expected some of {', '.join(STEPS)}")
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.mnistlab_side:  # a side's own process (--turns: in turns, else once)
        if args.turns is not None:
            mnistlab_turns(args.mnistlab_side, args.steps, args.turns)
        else:
            mnistlab_side(args.mnistlab_side, args.steps)
        return

    if args.baseline:
        compare_trees(args)
        return

    import mnistlab

    python = tf_python(args.tf_env.expanduser())
    data = Path(mnistlab.__file__).parent / "data" / "mnist"
    cpu = cpu_info()
    peak = measure_peak(args.peak_size, args.peak_repeats)
    results = {}
    for name in args.recipes:
        steps = STEPS[name]
        sides = take_turns(name, steps, args.turns, tensorflow_side(name, steps, python, data))
        results[name] = {**recipe_facts(name, steps * args.turns), "turns": args.turns,
                         "steps_per_turn": steps, "tf": sides["other"], "mnistlab": sides["mnistlab"]}

    found = versions(results)
    print(table(results, peak, cpu, found))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "peak": peak, "versions": found,
                                         "recipes": results}, indent=2) + "\n")


def compare_trees(args: argparse.Namespace) -> None:
    """mnistlab's side from --baseline TREE against this tree's, in turns: a change's effect."""
    for name in args.recipes:
        sides = take_turns(name, STEPS[name], args.turns,
                           baseline_side(name, STEPS[name], args.turns, args.baseline))
        before, after = sides["other"]["seconds"], sides["mnistlab"]["seconds"]
        ratios = [b / a for b, a in zip(before, after)]
        print(f"{name}: {args.turns} x {STEPS[name]:,} steps, {args.baseline} {sum(before):.3g} s, "
              f"this tree {sum(after):.3g} s: {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f} to {max(ratios):.3f})", flush=True)

if __name__ == "__main__":
    main()

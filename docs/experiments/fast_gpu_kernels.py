"""Where a `fast` step's GPU time goes, and which switches that keep its recipe make it faster.

A `fast` step replayed from its CUDA graph costs 0.43 ms on an H100 (docs/BENCHMARKS.md), about
a hundred small kernels; bigger batches cost accuracy (fast_gpu.py). So this looks at the
kernels themselves, in two parts, in one process:

1. The profile. torch.profiler over 100 steps of a `fast` run replayed from its graph (steps 100
   to 200, after the capture and both freezes), and over 40 eager steps (20 to 60) for the
   kernels' launches: each kernel's GPU time and calls per step, the top of each table printed
   and every row written to the JSON.
2. Switches that leave the recipe's batch, steps and rates alone, fixed in advance:
   - `cudnn.benchmark`: cuDNN times its algorithms at a convolution's first call and keeps the
     fastest (its heuristic's choice is not always that for small tensors);
   - float32 (`docs/experiments/fast-fp32.toml`: `precision = "fp32"`, cuDNN's TF32 as PyTorch
     has it by default): no bf16 copies of weights, activations and gradients to make;
   - both; and each of the four through torch.compile (compile time apart, as always).
   Each trains SEEDS seeds on the 55,000 training images and is scored on the 5,000 validation
   images. The rule, fixed before any run: of the switches whose validation mean is at most 0.05
   points below plain `fast`'s, the one with the least median training time. Only it then meets
   the test split: `mnistlab bench` with 10 seeds, beside plain `fast` (and `fast --compile`
   when the choice compiles), in this one process.

    PYTHONPATH=src python3 docs/experiments/fast_gpu_kernels.py --json /tmp/fast-gpu-kernels.json

`--device cpu --steps 3 --seeds 1 --bench-seeds 1` checks the script on a CPU, measuring nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mnistlab.bench import bench, format_bench
from mnistlab.recipebook import load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

FP32 = str(Path(__file__).parent / "fast-fp32.toml")
MARGIN = 0.0005  # validation accuracy a switch may lose against plain fast


@dataclass(frozen=True)
class Switches:
    recipe: str = "fast"
    cudnn_benchmark: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        parts = ["fast" if self.recipe == "fast" else "fast fp32"]
        parts += ["cudnn.benchmark"] * self.cudnn_benchmark + ["compiled"] * self.compile
        return ", ".join(parts)

    @contextlib.contextmanager
    def applied(self):
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before


CANDIDATES = [Switches(recipe, benchmark, compiled) for compiled in (False, True)
              for recipe in ("fast", FP32) for benchmark in (False, True)]


def kernel_table(prof, steps: int) -> list[dict]:
    """Every GPU kernel (and copy) in the profile: its GPU time and calls, per step."""
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:  # older PyTorch
            device_us = event.self_cuda_time_total
        if device_us <= 0:
            continue
        rows.append({"kernel": event.key, "us_per_step": device_us / steps,
                     "calls_per_step": event.count / steps})
    return sorted(rows, key=lambda r: -r["us_per_step"])


def print_table(title: str, rows: list[dict], top: int = 30) -> None:
    total = sum(r["us_per_step"] for r in rows)
    calls = sum(r["calls_per_step"] for r in rows)
    print(f"== {title}: {total:.1f} us of GPU time a step in {calls:.1f} kernels and copies")
    for r in rows[:top]:
        print(f"{r['us_per_step']:8.2f} us {r['calls_per_step']:6.2f}x  {r['kernel'][:110]}")


def profiled_run(device: str, *, graph: bool, first: int, last: int, total: int | None) -> dict:
    """`fast` with seed 1, the profiler on from step `first` to step `last`."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    prof = profile(activities=activities)

    def on_step(trainer: Trainer, done: int) -> None:
        if done == first:
            torch.cuda.synchronize() if device.startswith("cuda") else None
            prof.start()
        elif done == last:
            torch.cuda.synchronize() if device.startswith("cuda") else None
            prof.stop()

    recipe = load_recipe("fast").with_length(steps=total)
    with tempfile.TemporaryDirectory(prefix="fast-kernels-") as tmp:
        result = Trainer(recipe, Path(tmp) / "run", seed=1, device=device, cuda_graphs=graph,
                         progress=Progress(1, quiet=True), on_step=on_step).run()
    rows = kernel_table(prof, last - first) if device.startswith("cuda") else []
    title = f"fast, {'graph replays' if graph else 'eager'}, steps {first} to {last}"
    print_table(title, rows)
    return {"steps": [first, last], "cuda_graph": result.cuda_graph,
            "train_seconds": result.train_seconds, "kernels": rows}


def validate(switches: Switches, seeds: int, device: str, steps: int | None) -> dict:
    recipe = load_recipe(switches.recipe).with_length(steps=steps)
    runs = []
    with switches.applied(), tempfile.TemporaryDirectory(prefix="fast-kernels-") as tmp:
        for seed in range(seeds):
            runs.append(Trainer(recipe, Path(tmp) / f"seed-{seed}", seed=seed, device=device,
                                compile=switches.compile, progress=Progress(1, quiet=True)).run())
    accuracies = [r.validation.accuracy for r in runs]
    seconds = [r.train_seconds for r in runs]
    row = {"label": switches.label, "recipe": switches.recipe,
           "cudnn_benchmark": switches.cudnn_benchmark, "compile": switches.compile,
           "validation": accuracies, "validation_mean": statistics.fmean(accuracies),
           "train_seconds": seconds, "train_seconds_median": statistics.median(seconds),
           "compile_seconds": [r.compile_seconds for r in runs],
           "ms_per_step": 1e3 * statistics.median(seconds) / runs[0].total_steps,
           "cuda_graph": all(r.cuda_graph for r in runs)}
    print(f"{switches.label:40} validation {100 * row['validation_mean']:.2f}%  train "
          f"{row['train_seconds_median']:.4f} s (median of {seeds}; {row['ms_per_step']:.3f} ms "
          f"a step)", flush=True)
    return row


def choose(rows: list[dict]) -> dict | None:
    """The fastest switch within MARGIN of plain fast on validation (the docstring's rule)."""
    plain = rows[0]["validation_mean"]
    eligible = [r for r in rows if r["validation_mean"] >= plain - MARGIN]
    return min(eligible, key=lambda r: r["train_seconds_median"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per switch on validation")
    parser.add_argument("--bench-seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, help="cut every run to this many steps (a smoke test)")
    args = parser.parse_args()
    report: dict = {"device": args.device, "margin": MARGIN}

    def save() -> None:
        args.json.write_text(json.dumps(report, indent=1))

    # the first run in a process pays CUDA's and cuDNN's start-up: not the profiled one
    validate(Switches(), 1, args.device, args.steps)
    short = args.steps is not None
    try:  # profiling graph replays needs a CUPTI that sees inside them
        report["profile_graph"] = profiled_run(args.device, graph=True, first=1 if short else 100,
                                               last=2 if short else 200, total=args.steps)
    except Exception as e:  # the eager profile has the same kernels
        print(f"no profile of the graph replays: {type(e).__name__}: {e}", flush=True)
    report["profile_eager"] = profiled_run(args.device, graph=False, first=1 if short else 20,
                                           last=2 if short else 60, total=args.steps)
    save()
    report["candidates"] = []
    for switches in CANDIDATES:
        report["candidates"].append(validate(switches, args.seeds, args.device, args.steps))
        save()
    chosen = choose(report["candidates"])
    report["chosen"] = chosen and chosen["label"]
    print(f"chosen on validation: {report['chosen']}", flush=True)
    save()
    if chosen is None:
        return
    report["test"] = {}
    plain = Switches(compile=chosen["compile"])
    picked = Switches(chosen["recipe"], chosen["cudnn_benchmark"], chosen["compile"])
    for switches in dict.fromkeys([Switches(), plain, picked]):
        with switches.applied():
            result = bench(switches.recipe, seeds=args.bench_seeds, device=args.device,
                           compile=switches.compile)
        print(f"{switches.label}: {format_bench(result)}", flush=True)
        report["test"][switches.label] = result.to_dict()
        report["device"] = result.hardware
        save()


if __name__ == "__main__":
    main()

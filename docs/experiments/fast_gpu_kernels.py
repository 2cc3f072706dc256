"""Where a `fast` step's GPU time goes, and which switches that keep its recipe make it faster.

A `fast` step replayed from its CUDA graph costs 0.43 ms on an H100 (docs/BENCHMARKS.md), about
a hundred small kernels; bigger batches cost accuracy (fast_gpu.py). So this looks at the
kernels themselves, in two parts, in one process:

1. The profile. torch.profiler over 100 steps of a `fast` run replayed from its graph (steps 100
   to 200, after the capture and both freezes), compiled and not, and over 40 eager steps (20 to
   60) for the kernels' launches: each kernel's GPU time and calls per step, the top of each
   table printed and every row written to the JSON.
2. Ways of running the same recipe (its batch, steps and rates), fixed in advance: plain `fast`
   and compiled (`--compile`: the batch's gather, the forward pass, the loss and, inside the
   graph, the optimiser's update, with Inductor's combo kernels), each with its stem computed
   as a product of patches and weights (PatchConv2d) and by cuDNN as before. Each trains
   SEEDS seeds on the 55,000 training images and is scored on the 5,000 validation images.
   The rule, fixed before any run: of the ways whose validation mean is at most 0.05 points
   below plain `fast`'s, the one with the least median training time. Only it then meets the
   test split: `mnistlab bench` with 10 seeds, beside plain `fast`, in this one process.

Its earlier versions measured float32 and cudnn.benchmark (commits 3dbd1c9 and c54fb46), the
update left to PyTorch's fused kernel (9240ff7) and combo kernels (c54fb46); docs/BENCHMARKS.md
has their figures.

    PYTHONPATH=src python3 docs/experiments/fast_gpu_kernels.py --json /tmp/fast-gpu-kernels.json

`--device cpu --steps 3 --seeds 1 --bench-seeds 1` checks the script on a CPU, measuring nothing.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from fast_gpu import MARGIN, choose, parse_arguments  # the same rule and command line
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mnistlab.bench import bench, format_bench
from mnistlab.models.layers import PatchConv2d
from mnistlab.recipebook import load_recipe
from mnistlab.training import optim, step
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress


@dataclass(frozen=True)
class Way:
    compile: bool = False
    cudnn_stem: bool = False  # the stem by cuDNN, as before PatchConv2d

    @property
    def label(self) -> str:
        return ", ".join(["fast"] + ["compiled"] * self.compile + ["stem by cuDNN"] * self.cudnn_stem)

    @contextlib.contextmanager
    def applied(self):
        if not self.cudnn_stem:
            yield
            return
        forget_compiled()
        try:
            with mock.patch.object(PatchConv2d, "forward", nn.Conv2d.forward):
                yield
        finally:
            forget_compiled()


def forget_compiled() -> None:
    """Drop what torch.compile made, so that the next compiled step traces the network anew."""
    torch._dynamo.reset()
    for made in (step.compiled_step_loss, step.compiled_training_batch, step.compiled_fed_batch,
                 optim._compiled_adam_update):
        made.cache_clear()


WAYS = [Way(), Way(cudnn_stem=True), Way(compile=True), Way(compile=True, cudnn_stem=True)]


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


def profiled_run(device: str, way: Way, *, graph: bool, first: int, last: int,
                 total: int | None) -> dict:
    """`fast` with seed 1, the profiler on from step `first` to step `last`."""
    cuda = device.startswith("cuda")
    prof = profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda)

    def on_step(trainer: Trainer, done: int) -> None:
        if done in (first, last) and cuda:
            torch.cuda.synchronize()
        if done == first:
            prof.start()
        elif done == last:
            prof.stop()

    recipe = load_recipe("fast").with_length(steps=total)
    with way.applied(), tempfile.TemporaryDirectory(prefix="fast-kernels-") as tmp:
        result = Trainer(recipe, Path(tmp) / "run", seed=1, device=device, cuda_graphs=graph,
                         compile=way.compile, progress=Progress(1, quiet=True),
                         on_step=on_step).run()
    rows = kernel_table(prof, last - first) if cuda else []
    print_table(f"{way.label}, {'graph replays' if graph else 'eager'}, steps {first} to {last}", rows)
    return {"way": way.label, "steps": [first, last], "cuda_graph": result.cuda_graph,
            "train_seconds": result.train_seconds, "kernels": rows}


def validate(way: Way, seeds: int, device: str, steps: int | None) -> dict:
    recipe = load_recipe("fast").with_length(steps=steps)
    runs = []
    with way.applied(), tempfile.TemporaryDirectory(prefix="fast-kernels-") as tmp:
        for seed in range(seeds):
            runs.append(Trainer(recipe, Path(tmp) / f"seed-{seed}", seed=seed, device=device,
                                compile=way.compile, progress=Progress(1, quiet=True)).run())
    accuracies = [r.validation.accuracy for r in runs]
    seconds = [r.train_seconds for r in runs]
    row = {"label": way.label, "compile": way.compile, "cudnn_stem": way.cudnn_stem,
           "validation": accuracies, "validation_mean": statistics.fmean(accuracies),
           "train_seconds": seconds, "train_seconds_median": statistics.median(seconds),
           "compile_seconds": [r.compile_seconds for r in runs],
           "ms_per_step": 1e3 * statistics.median(seconds) / runs[0].total_steps,
           "cuda_graph": all(r.cuda_graph for r in runs)}
    print(f"{way.label:40} validation {100 * row['validation_mean']:.2f}%  train "
          f"{row['train_seconds_median']:.4f} s (median of {seeds}; {row['ms_per_step']:.3f} ms "
          f"a step)", flush=True)
    return row


def main() -> None:
    args = parse_arguments(__doc__, "way")
    report: dict = {"device": args.device, "margin": MARGIN}

    def save() -> None:
        args.json.write_text(json.dumps(report, indent=1))

    # the first run in a process pays CUDA's and cuDNN's start-up: not a profiled one
    validate(Way(), 1, args.device, args.steps)
    first, last = (1, 2) if args.steps else (100, 200)
    for key, way in (("profile_graph", Way()), ("profile_graph_compiled", Way(compile=True))):
        try:  # profiling graph replays needs a CUPTI that sees inside them
            report[key] = profiled_run(args.device, way, graph=True, first=first, last=last,
                                       total=args.steps)
        except Exception as e:  # the eager profile has the same kernels
            print(f"no profile of {way.label}'s graph replays: {type(e).__name__}: {e}", flush=True)
    first, last = (1, 2) if args.steps else (20, 60)
    report["profile_eager"] = profiled_run(args.device, Way(), graph=False, first=first,
                                           last=last, total=args.steps)
    save()
    report["ways"] = []
    for way in WAYS:
        try:
            report["ways"].append(validate(way, args.seeds, args.device, args.steps))
        except Exception as e:  # an option this PyTorch lacks, say: the other ways still count
            print(f"{way.label}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        save()
    chosen = choose(report["ways"][0], report["ways"])  # fast_gpu.py's rule, plain fast the baseline
    report["chosen"] = chosen and chosen["label"]
    print(f"chosen on validation: {report['chosen']}", flush=True)
    save()
    report["test"] = {}
    picked = Way(chosen["compile"], chosen["cudnn_stem"]) if chosen else Way()
    for way in dict.fromkeys([Way(), picked]):
        with way.applied():
            result = bench("fast", seeds=args.bench_seeds, device=args.device, compile=way.compile)
        print(f"{way.label}: {format_bench(result)}", flush=True)
        report["test"][way.label] = result.to_dict()
        report["device"] = result.hardware
        save()


if __name__ == "__main__":
    main()

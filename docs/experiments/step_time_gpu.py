"""How long a `fast --compile` step takes on a GPU, on the device and on the host, apart.

A step replayed from a CUDA graph is bound by whichever is slower: the GPU running the step's
kernels, or the host running the training loop's Python and launching the replay. For steps
100 to 200 of each seed (after the capture and the first freeze) this records a CUDA event and
the host's clock at both ends: the events give the GPU's time per step, the clock the host's.
If the host's is the smaller, the host runs ahead and the GPU's time is the step's.

    PYTHONPATH=src python3 docs/experiments/step_time_gpu.py --seeds 10 --json /tmp/step-time.json

gpu_check.sh `steps` runs it from two source trees in turns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.recipebook import load_recipe
from mnistlab.training import step
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

FIRST, LAST = 100, 200  # steps done when the two marks are taken


def one_seed(recipe, seed: int, out: Path, compile: bool, timeline: bool = False) -> dict:
    marks = {}

    def on_step(_trainer, done: int) -> None:
        if timeline or done in (FIRST, LAST):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks[done] = (time.perf_counter(), event)

    start = time.perf_counter()
    result = Trainer(recipe, out, seed=seed, device="cuda", progress=Progress(1, quiet=True),
                     compile=compile, on_step=on_step).run()
    torch.cuda.synchronize()
    (host_0, gpu_0), (host_1, gpu_1) = marks[FIRST], marks[LAST]
    steps = LAST - FIRST
    row = {"seed": seed, "train_seconds": result.train_seconds,
           "capture_seconds": result.capture_seconds, "compile_seconds": result.compile_seconds,
           "accuracy": result.test.accuracy,
           "gpu_us_per_step": gpu_0.elapsed_time(gpu_1) * 1000 / steps,
           "host_us_per_step": (host_1 - host_0) * 1e6 / steps}
    if timeline:  # each step's end, from the run's start: on the host, and on the GPU from step 1's
        done = sorted(marks)
        row["host_ms"] = [round((marks[d][0] - start) * 1e3, 3) for d in done]
        row["gpu_ms"] = [round(marks[done[0]][1].elapsed_time(marks[d][1]), 3) for d in done]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--eager", action="store_true", help="without --compile")
    parser.add_argument("--timeline", action="store_true",
                        help="an event and a clock reading at every step, written to the JSON")
    parser.add_argument("--warmup-steps", type=int, default=step.WARMUP_STEPS,
                        help="eager steps before the capture (training/step.py's WARMUP_STEPS)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    step.WARMUP_STEPS = args.warmup_steps
    recipe = load_recipe(args.recipe)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one_seed(recipe, 99, Path(tmp) / "warm-up", not args.eager)  # compiles; not counted
        for seed in range(args.seeds):
            rows.append(one_seed(recipe, seed, Path(tmp) / f"seed-{seed}", not args.eager,
                                 args.timeline))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_ms")}),
                  flush=True)
    summary = {key: statistics.median(r[key] for r in rows)
               for key in ("train_seconds", "gpu_us_per_step", "host_us_per_step")}
    summary["accuracy_mean"] = statistics.fmean(r["accuracy"] for r in rows)
    print("medians:", json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                         "rows": rows, "medians": summary}, indent=1))


if __name__ == "__main__":
    main()

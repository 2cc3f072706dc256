"""Where a recipe's CPU training step spends its time: torch.profiler around the real engine.

    python docs/experiments/profile_cpu.py deep-mnist --steps 160

Trains the recipe (into a temporary folder) and profiles steps 100 to 150 of the run, after
oneDNN has built its kernels and the allocator holds its memory. Prints the operators by their
own time, then three sums the issue of tutorial speed asks about: layout conversions (copies
between memory formats), host syncs (reads of a tensor's value), and everything outside the
50 steps (setup, validation, the test).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule

import mnistlab
from mnistlab.recipebook import load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

SKIP, WARMUP, ACTIVE = 90, 10, 50
LAYOUT_OPS = ("aten::copy_", "aten::contiguous", "aten::clone", "aten::to", "aten::_to_copy")
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::tolist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=SKIP + WARMUP + ACTIVE + 10)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe).with_length(steps=args.steps)
    prof = profile(activities=[ProfilerActivity.CPU],
                   schedule=schedule(wait=SKIP, warmup=WARMUP, active=ACTIVE, repeat=1))

    def on_step(trainer: Trainer, done: int) -> None:
        prof.step()

    with tempfile.TemporaryDirectory() as folder, prof:
        start = time.perf_counter()
        trainer = Trainer(recipe, f"{folder}/run", device="cpu", progress=Progress(1, quiet=True),
                          on_step=on_step)
        result = trainer.run()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(f"{args.recipe}: {args.steps} steps, {result.train_seconds:.2f} s training, "
          f"{wall:.2f} s in all (mnistlab {mnistlab.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    for what, names in (("layout conversions and copies", LAYOUT_OPS), ("host syncs", SYNC_OPS)):
        own = sum(e.self_cpu_time_total for e in events if e.key in names)
        calls = sum(e.count for e in events if e.key in names)
        print(f"{what}: {own / 1e3 / ACTIVE:.3f} ms a step ({100 * own / total:.1f}%), "
              f"{calls / ACTIVE:.1f} calls a step")
    print(f"profiled: {total / 1e3 / ACTIVE:.2f} ms a step of operator time")


if __name__ == "__main__":
    main()

"""Where a recipe's CPU training step spends its time, inside the real engine.

    python docs/experiments/profile_cpu.py deep-mnist [--steps 160] [--wall] [--plain-layout]
        [--windows W] [--batch N]

Trains the recipe (into a temporary folder) and profiles steps 100 to 150 of the run, after
oneDNN has built its kernels and the allocator holds its memory. By default with
torch.profiler: the operators by their own time, then two sums: layout conversions (copies
between memory formats) and host syncs (reads of a tensor's value).

torch.profiler inflates operators that write large new tensors (a zero-filled 12.8 MB
gradient took 2.5 ms under it and 0.1 ms without: the memory it hands out is touched for
the first time), so `--wall` times each operator instead by the wall clock around its call
(a dispatch mode; the Python between operators is not counted): the figures to trust for
where a step's time goes.

`--plain-layout` keeps the convolutions on PyTorch's own tensors, where the tutorial CNNs
train on oneDNN's (models/layers.py, to_onednn_layout): the figures to compare.

`--batch N` trains at another batch size than the recipe's. A step's cost that does not
shrink with the batch (calls into PyTorch and oneDNN, the optimiser's pass over the weights)
shows at `--batch 1`.

`--windows W` profiles nothing: it prints the median wall time of a step in each window of W
steps of the run, and the CPU seconds each thread of the process used meanwhile. This shared
machine changes speed while a run goes on, and this shows when, and whether a thread went
without its CPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule
from torch.utils._python_dispatch import TorchDispatchMode

import mnistlab
from mnistlab.models import layers
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
    parser.add_argument("--wall", action="store_true", help="wall-clock time per operator")
    parser.add_argument("--plain-layout", action="store_true",
                        help="convolutions on PyTorch's own tensors, not oneDNN's")
    parser.add_argument("--windows", type=int, metavar="W",
                        help="median step time of each W steps, and each thread's CPU time")
    parser.add_argument("--batch", type=int, help="images a step (default: the recipe's)")
    args = parser.parse_args()
    if args.plain_layout:
        layers._onednn_layout_works = lambda: False
    if args.windows:
        step_windows(args)
    else:
        (wall_clock if args.wall else with_profiler)(args)


def train(args, on_step) -> tuple[float, float]:
    """Train the recipe for --steps steps on the CPU; its training and total seconds."""
    recipe = load_recipe(args.recipe).with_length(steps=args.steps)
    if args.batch is not None:
        recipe = recipe.updated(train={"batch_size": args.batch, "steps": args.steps})
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        trainer = Trainer(recipe, f"{folder}/run", device="cpu", progress=Progress(1, quiet=True),
                          on_step=on_step)
        result = trainer.run()
        return result.train_seconds, time.perf_counter() - start


def header(args, train_seconds: float, wall: float) -> str:
    return (f"{args.recipe}: {args.steps} steps, {train_seconds:.2f} s training, {wall:.2f} s in "
            f"all (mnistlab {mnistlab.__version__}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
            f"{', PyTorch layout' if args.plain_layout else ''}"
            f"{f', batches of {args.batch}' if args.batch is not None else ''})")


def with_profiler(args) -> None:
    prof = profile(activities=[ProfilerActivity.CPU],
                   schedule=schedule(wait=SKIP, warmup=WARMUP, active=ACTIVE, repeat=1))
    with prof:
        seconds = train(args, lambda trainer, done: prof.step())
    events = prof.key_averages()
    print(header(args, *seconds))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    for what, names in (("layout conversions and copies", LAYOUT_OPS), ("host syncs", SYNC_OPS)):
        own = sum(e.self_cpu_time_total for e in events if e.key in names)
        calls = sum(e.count for e in events if e.key in names)
        print(f"{what}: {own / 1e3 / ACTIVE:.3f} ms a step ({100 * own / total:.1f}%), "
              f"{calls / ACTIVE:.1f} calls a step")
    print(f"profiled: {total / 1e3 / ACTIVE:.2f} ms a step of operator time")


class _OperatorClock(TorchDispatchMode):
    """Wall seconds per (operator, shapes of its first two tensor arguments)."""

    def __init__(self):
        super().__init__()
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        key = (str(func), tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))[:2])
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return out


def wall_clock(args) -> None:
    clock, timed = _OperatorClock(), contextlib.ExitStack()

    def on_step(trainer, done: int) -> None:  # steps SKIP + 1 to SKIP + ACTIVE
        if done == SKIP:
            timed.enter_context(clock)
        elif done == SKIP + ACTIVE:
            timed.close()

    seconds = train(args, on_step)
    print(header(args, *seconds))
    total = sum(clock.seconds.values())
    print(f"operators: {total / ACTIVE * 1e3:.2f} ms a step (steps {SKIP + 1} to {SKIP + ACTIVE})")
    for (name, shapes), spent in sorted(clock.seconds.items(), key=lambda kv: -kv[1])[:args.rows]:
        calls = clock.calls[(name, shapes)] // ACTIVE
        print(f"{spent / ACTIVE * 1e3:8.3f} ms  x{calls}  {name}  {shapes}")


def step_windows(args) -> None:
    ends: list[float] = []  # when each step ended
    windows = []  # (median seconds a step, the window's seconds, CPU seconds of each thread)
    threads: dict[str, float] = {}  # CPU seconds by thread when the window began

    def on_step(trainer, done: int) -> None:  # the first window starts after the first step
        nonlocal threads
        ends.append(time.perf_counter())
        if len(ends) > 1 and (len(ends) - 1) % args.windows == 0:
            window = ends[-args.windows - 1 :]
            now = _thread_cpu_seconds()
            used = sorted((now[t] - threads.get(t, 0.0) for t in now), reverse=True)
            steps = [b - a for a, b in zip(window, window[1:])]
            windows.append((statistics.median(steps), window[-1] - window[0], used))
        if len(ends) % args.windows == 1:
            threads = _thread_cpu_seconds()

    seconds = train(args, on_step)
    print(header(args, *seconds))
    print(f"each {args.windows} steps: the median step, the window's wall seconds and the CPU "
          f"seconds of its {torch.get_num_threads()} busiest threads")
    for step, wall, used in windows:
        busiest = ", ".join(f"{seconds:.2f}" for seconds in used[: torch.get_num_threads()])
        print(f"{step * 1e3:7.3f} ms  {wall:6.2f} s  threads {busiest}")


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user and system) each thread of this process has used, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        used[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


if __name__ == "__main__":
    main()

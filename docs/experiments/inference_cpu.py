"""How long the shipped models take to measure and to predict the 10,000 test images on the CPU.

    python docs/experiments/inference_cpu.py [--models default keras-cnn softmax-regression]
                                             [--repeats 5] [--baseline TREE [--rounds 2]]

Times, each the median of --repeats: `evaluate_checkpoint` (what `mnistlab evaluate NAME`
runs, less the start of Python), then the PyTorch Predictor's `probabilities` (what `mnistlab
predict`, `mnistlab.load` and `serve --backend torch` call) on the test images in one call.
With --baseline, the same in a process that imports mnistlab from TREE/src (a worktree of
another commit), the two taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(models: list[str], repeats: int) -> dict:
    import torch

    from mnistlab.data.registry import load_arrays
    from mnistlab.evaluate import evaluate_checkpoint
    from mnistlab.inference.predictor import Predictor

    images = load_arrays("mnist").test_images
    results = {name: {"threads": torch.get_num_threads()} for name in models}
    # every evaluation first, as `mnistlab evaluate` runs in a process of its own: loading a
    # Predictor changes how the process keeps freed memory (cpu_memory.py)
    for name in models:
        evaluate = []
        for _ in range(repeats):
            start = time.perf_counter()
            metrics = evaluate_checkpoint(name, device="cpu")
            evaluate.append(time.perf_counter() - start)
        results[name].update(evaluate_s=statistics.median(evaluate), accuracy=metrics.accuracy)
    for name in models:
        predict = []
        predictor = Predictor.load(name, backend="torch")
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.probabilities(images)
            predict.append(time.perf_counter() - start)
        results[name]["predict_s"] = statistics.median(predict)
    return results


def run_side(tree: Path | None, models: list[str], repeats: int) -> dict:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve() / "src")
    command = [sys.executable, __file__, "--side", "--repeats", str(repeats), "--models", *models]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "keras-cnn", "softmax-regression"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each side with --baseline")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure(args.models, args.repeats)))
        return
    sides = {"this tree": None} if args.baseline is None else {str(args.baseline): args.baseline,
                                                               "this tree": None}
    rounds = 1 if args.baseline is None else args.rounds
    print("| tree | model | evaluate (s) | predict (s) | test accuracy |")
    print("|---|---|---|---|---|")
    for _ in range(rounds):
        for label, tree in sides.items():
            for name, r in run_side(tree, args.models, args.repeats).items():
                print(f"| {label} | {name} | {r['evaluate_s']:.3f} | {r['predict_s']:.3f} | "
                      f"{100 * r['accuracy']:.2f}% |", flush=True)


if __name__ == "__main__":
    main()

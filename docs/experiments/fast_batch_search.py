"""Could `fast` take fewer, larger steps? One epoch of fast-cnn 32/64/64 at batch 128 (the shipped
`fast`) and at batch 256 with a few peak learning rates, on the 55,000-image train split, judged
by validation accuracy only (mean over seeds) and training time (median).

    python docs/experiments/fast_batch_search.py --seeds 0 1 2 3

Fewer steps matter most on a GPU, where a step of this network costs about the same at batch
128 and 256 (docs/BENCHMARKS.md); on the CPU batch 256 runs about 12% more images a second.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mnistlab.recipes import load_recipe, recipe_from_dict
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

CONFIGS = [  # (batch size, peak learning rate)
    (128, 3e-2),  # the shipped `fast`
    (256, 3e-2),
    (256, 4e-2),
    (256, 5e-2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| batch | lr | validation (mean) | per seed | time (median) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for batch, lr in CONFIGS:
            table = load_recipe("fast").to_dict()
            table["train"]["batch_size"], table["optimizer"]["lr"] = batch, lr
            recipe = recipe_from_dict(table, f"fast at batch {batch}, lr {lr}")
            accuracies, seconds = [], []
            for seed in args.seeds:
                run = Path(tmp) / f"{batch}-{lr}-{seed}"
                result = Trainer(recipe, run, seed=seed, device=args.device,
                                 progress=Progress(1, quiet=True)).run()
                accuracies.append(result.validation.accuracy)
                seconds.append(result.train_seconds)
            print(f"| {batch} | {lr:g} | {100 * statistics.fmean(accuracies):.2f}% | "
                  f"{' '.join(f'{100 * a:.2f}' for a in accuracies)} | "
                  f"{statistics.median(seconds):.2f} s |", flush=True)


if __name__ == "__main__":
    main()

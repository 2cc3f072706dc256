"""`fast` in bigger batches on a GPU, chosen on validation, then benched on test.

On an H100 a `fast` step replayed from a CUDA graph costs about the same at batch 256 as at
128: the step is bound by its kernels' launches, not by arithmetic. So fewer, bigger steps
should train faster. The candidates are fixed in advance (docs/experiments/fast-gpu/*.toml:
batches of 512 to 1,024, 1.1 to 1.6 epochs, peak rates 4e-2 to 8e-2). Each trains with
SEEDS seeds on the 55,000 training images and is scored on the 5,000 validation images;
`fast` itself runs beside them with the same seeds. The rule, fixed before any run: of the
candidates whose validation mean is at most 0.05 points below `fast`'s, the one with the
least median training time. Only that one then meets the test split: `mnistlab bench` with
10 seeds, with and without `--compile`, and `fast` the same way, in this one process.

    PYTHONPATH=src python3 docs/experiments/fast_gpu.py --json /tmp/fast-gpu.json

`--device cpu --steps 3 --seeds 1 --bench-seeds 1` checks the script on a CPU, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from mnistlab.bench import bench, format_bench
from mnistlab.recipebook import load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

CANDIDATES = sorted((Path(__file__).parent / "fast-gpu").glob("*.toml"))
MARGIN = 0.0005  # validation accuracy a candidate may lose against fast


def validate(recipe_path: str, seeds: int, device: str, steps: int | None) -> dict:
    recipe = load_recipe(recipe_path).with_length(steps=steps)
    runs = []
    with tempfile.TemporaryDirectory(prefix="fast-gpu-") as tmp:
        for seed in range(seeds):
            runs.append(Trainer(recipe, Path(tmp) / f"seed-{seed}", seed=seed, device=device,
                                progress=Progress(1, quiet=True)).run())
    accuracies = [r.validation.accuracy for r in runs]
    row = {"recipe": recipe.name, "path": recipe_path, "batch_size": recipe.train.batch_size,
           "steps": runs[0].total_steps, "lr": recipe.optimizer.lr,
           "validation": accuracies, "validation_mean": statistics.fmean(accuracies),
           "train_seconds": [r.train_seconds for r in runs],
           "train_seconds_median": statistics.median(r.train_seconds for r in runs),
           "cuda_graph": all(r.cuda_graph for r in runs)}
    print(f"{recipe.name:22} validation {100 * row['validation_mean']:.2f}%  "
          f"train {row['train_seconds_median']:.3f} s (median of {seeds})", flush=True)
    return row


def choose(baseline: dict, rows: list[dict]) -> dict | None:
    """The fastest candidate within MARGIN of `fast` on validation (the rule in the docstring)."""
    eligible = [r for r in rows if r["validation_mean"] >= baseline["validation_mean"] - MARGIN]
    return min(eligible, key=lambda r: r["train_seconds_median"], default=None)


def parse_arguments(doc: str, tried: str) -> argparse.Namespace:
    """The command line of this script and of fast_gpu_kernels.py: `tried` names what each
    validation run tries (a candidate, a way)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=4, help=f"seeds per {tried} on validation")
    parser.add_argument("--bench-seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, help="cut every run to this many steps (a smoke test)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments(__doc__, "candidate")
    report: dict = {"device": args.device, "margin": MARGIN}

    def save() -> None:
        args.json.write_text(json.dumps(report, indent=1))

    report["fast"] = validate("fast", args.seeds, args.device, args.steps)
    report["candidates"] = []
    for path in CANDIDATES:
        report["candidates"].append(validate(str(path), args.seeds, args.device, args.steps))
        save()
    chosen = choose(report["fast"], report["candidates"])
    report["chosen"] = chosen and chosen["recipe"]
    print(f"chosen on validation: {report['chosen']}", flush=True)
    save()
    report["test"] = {}
    for name in (["fast"] + ([chosen["path"]] if chosen else [])):
        for compiled in (False, True):
            result = bench(name, seeds=args.bench_seeds, device=args.device, compile=compiled)
            print(format_bench(result), flush=True)
            report["test"][f"{result.recipe}{' compiled' if compiled else ''}"] = result.to_dict()
            report["device"] = result.hardware
            save()


if __name__ == "__main__":
    main()

"""Choose the `best` recipe's successor on the validation split, then measure it on test.

Meant for a GPU, where one run of these recipes takes seconds. The rule is fixed before any
run: each candidate trains once (seed 0) on the 55,000-image training split; the candidate
with the highest validation accuracy wins (ties: the cheaper one, listed first); its seeds
0..N-1 then train with the same recipe, and only then is the test split used: each seed's
test accuracy, the single-model mean over seeds 0, 1 and 2, and the ensemble of all N.

    python docs/experiments/best_search_gpu.py --out /tmp/search --members 10

On an H200 (docs/experiments/gpu_check.sh, 2026-11-26) its search chose best-wide-ema-30 and its
first member ran; the call's time limit stopped it there. docs/experiments/best_seeds_gpu.py
trained seeds 0-2 of the chosen recipe (saved as docs/experiments/best-chosen-gpu.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from mnistlab.committee import evaluate_ensemble
from mnistlab.recipebook import load_recipe, recipe_from_dict
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress


def candidates() -> list[tuple[str, dict]]:
    """(name, recipe table) from `compact` (which was called `best` when this ran), cheapest
    first. The winner, best-wide-ema-30, is now the shipped `best`."""
    base = load_recipe("compact").to_dict()

    def variant(name: str, *, epochs: int, ema: float = 0.0, widths=None) -> tuple[str, dict]:
        table = copy.deepcopy(base)
        table["name"] = name
        table["train"]["epochs"] = epochs
        if ema:
            table["train"]["ema"] = ema
        if widths:
            table["model"]["args"]["widths"] = widths
        return name, table

    return [
        variant("best", epochs=15),
        variant("best-ema", epochs=15, ema=0.999),
        variant("best-ema-30", epochs=30, ema=0.999),
        variant("best-wide-ema-30", epochs=30, ema=0.999, widths=[64, 128, 256]),
    ]


def train(table: dict, out: Path, seed: int, device: str, cuda_graphs: bool) -> dict:
    recipe = recipe_from_dict(table, table["name"])
    result = Trainer(recipe, out, seed=seed, device=device, progress=Progress(1, quiet=True),
                     cuda_graphs=cuda_graphs).run()
    return {"recipe": table["name"], "seed": seed, "run": str(out),
            "validation": result.validation.accuracy if result.validation else None,
            "test": result.test.accuracy, "train_seconds": result.train_seconds,
            "cuda_graph": result.cuda_graph}


def train_members(table: dict, out: Path, count: int, device: str, cuda_graphs: bool,
                  budget: float, rows: list, save) -> None:
    """Seeds 0..count-1 of `table` into out/seed-K, each result appended to `rows`, then
    `save()`; after three members, none starts once `budget` seconds of the script have passed."""
    for seed in range(count):
        if seed >= 3 and time.perf_counter() - STARTED > budget:
            print(f"budget spent: {seed} members", flush=True)
            break
        row = train(table, out / f"seed-{seed}", seed, device, cuda_graphs)
        rows.append(row)
        print(f"member seed {seed}: test {100 * row['test']:.2f}%  {row['train_seconds']:.1f} s",
              flush=True)
        save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--budget", type=float, default=1e9,
                        help="seconds after which no further ensemble member is started")
    parser.add_argument("--smoke-steps", type=int, help="train every run this many steps only "
                        "(to check the script, not to choose)")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report: dict = {"device": device_name, "search": [], "final": []}
    log = args.out / "search.json"
    args.out.mkdir(parents=True, exist_ok=True)

    tables = dict(candidates())
    if args.smoke_steps:
        for table in tables.values():
            table["train"].pop("epochs")
            table["train"]["steps"] = args.smoke_steps
    for name, table in tables.items():
        row = train(table, args.out / "search" / name, 0, args.device, not args.eager)
        row.pop("test")  # the search looks at validation only
        report["search"].append(row)
        print(f"search {name:18} val {100 * row['validation']:.2f}%  {row['train_seconds']:.1f} s",
              flush=True)
        log.write_text(json.dumps(report, indent=1))
    # max keeps the first of equals: the cheaper candidate
    chosen = max(report["search"], key=lambda r: r["validation"])["recipe"]
    report["chosen"] = tables[chosen]
    print(f"chosen on validation: {chosen}", flush=True)

    train_members(tables[chosen], args.out / "members", args.members, args.device, not args.eager,
                  args.budget, report["final"], lambda: log.write_text(json.dumps(report, indent=1)))
    singles = [r["test"] for r in report["final"][:3]]
    runs = [r["run"] for r in report["final"]]
    report["single_mean_3"] = statistics.fmean(singles)
    report["single_sd_3"] = statistics.stdev(singles) if len(singles) > 1 else 0.0
    for size in sorted({3, 5, len(runs)}):
        if size <= len(runs):
            result = evaluate_ensemble(runs[:size], device=args.device)
            report[f"ensemble_{size}"] = result.metrics.accuracy
            print(f"ensemble of seeds 0..{size - 1}: test {100 * result.metrics.accuracy:.2f}%",
                  flush=True)
    report["train_seconds_median"] = statistics.median(r["train_seconds"] for r in report["final"])
    log.write_text(json.dumps(report, indent=1))
    print(f"{chosen}: single model mean {100 * report['single_mean_3']:.2f}% "
          f"(sd {100 * report['single_sd_3']:.2f}) over seeds 0-2; "
          f"training time median {report['train_seconds_median']:.1f} s on {device_name}")


STARTED = time.perf_counter()

if __name__ == "__main__":
    main()
    print(f"whole search {time.perf_counter() - STARTED:.0f} s")

"""Members for a 99.85% ensemble: choose on the validation split, then train and test ten.

Meant for a GPU, where a `best` run takes about 15 s (H200, CUDA graph). Three `best` members
gained only 0.01 points over their mean (docs/RESULTS.md): they make the same mistakes. This
search tries what the accuracy issue and the literature name for stronger, more varied members:
elastic distortions (Simard et al. 2003; Ciresan et al. 2012) and longer training (An et al.
2020 trained for 150 epochs).

The rule, fixed before any run: each candidate trains seeds 0 and 1 on the 55,000-image train
split; the highest mean validation accuracy wins (ties: the cheaper, listed first). Its seeds
0..N-1 then train with the same recipe on all 60,000 training images (the validation split has
done its job; An et al. trained on all 60,000 too), and only then is the test split read: each
member's test accuracy, and the ensembles (averaged probabilities) of the first 3, 5 and all N
members. The ensemble of all N (at most 10) is the figure the issue asks about. One more figure
is reported beside it, not chosen between: the ensemble of the eight search runs (four recipes,
two seeds each), whose members differ more than one recipe's seeds do.

    PYTHONPATH=src python3 docs/experiments/ensemble_search_gpu.py --out /tmp/ensemble

`--smoke-steps 20 --device cpu` checks the script in a minute, choosing nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

# this folder is on the path when a script in it runs
from best_search_gpu import train, train_members

from mnistlab.ensemble import evaluate_ensemble
from mnistlab.recipes import load_recipe

# Half of Simard et al.'s strength for MNIST (alpha 34, sigma 4: displacements of about 1.4
# pixels, std), chosen on validation on the CPU before this search: added to `compact`'s affine
# distortions (seed 0, 15 epochs), alpha 34 scored 99.48% and alpha 17 99.76%, against 99.70%
# without (docs/RESULTS.md).
ELASTIC = {"elastic_alpha": 17.0, "elastic_sigma": 4.0}


def candidates() -> list[tuple[str, dict]]:
    """(name, recipe table), cheapest first: the shipped `best` and three variants of it."""
    base = load_recipe("best").to_dict()

    def variant(name: str, *, epochs: int, elastic: bool) -> tuple[str, dict]:
        table = copy.deepcopy(base)
        table["name"] = name
        table["train"]["epochs"] = epochs
        if elastic:
            table["augment"].update(ELASTIC)
        return name, table

    return [
        variant("best", epochs=30, elastic=False),
        variant("best-elastic", epochs=30, elastic=True),
        variant("best-60", epochs=60, elastic=False),
        variant("best-elastic-60", epochs=60, elastic=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=1e9,
                        help="seconds after which no further member is started (at least 3 are)")
    parser.add_argument("--smoke-steps", type=int, help="train every run this many steps only "
                        "(to check the script, not to choose)")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report: dict = {"device": device_name, "search": [], "members": []}
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "ensemble-search.json"

    def save() -> None:
        log.write_text(json.dumps(report, indent=1))

    tables = dict(candidates())
    if args.smoke_steps:
        for table in tables.values():
            table["train"].pop("epochs")
            table["train"]["steps"] = args.smoke_steps
            table["train"]["ema"] = 0.0  # a few steps cannot forget the initial weights
    search_runs = []
    for name, table in tables.items():
        rows = [train(table, args.out / "search" / name / f"seed-{seed}", seed, args.device, True)
                for seed in (0, 1)]
        search_runs += [r["run"] for r in rows]
        row = {"recipe": name, "validation": [r["validation"] for r in rows],
               "validation_mean": statistics.fmean(r["validation"] for r in rows),
               "train_seconds": [r["train_seconds"] for r in rows]}
        report["search"].append(row)  # the search looks at validation only: no test figure
        print(f"search {name:16} validation {100 * row['validation_mean']:.2f}% "
              f"({', '.join(f'{100 * v:.2f}' for v in row['validation'])})  "
              f"{statistics.fmean(row['train_seconds']):.1f} s a run", flush=True)
        save()
    # max keeps the first of equals: the cheaper candidate
    chosen = max(report["search"], key=lambda r: r["validation_mean"])["recipe"]
    report["chosen"] = tables[chosen]
    print(f"chosen on validation: {chosen}", flush=True)

    members = copy.deepcopy(tables[chosen])
    members["train"]["split"] = "train-full"
    train_members(members, args.out / "members", args.members, args.device, True,
                  args.budget, report["members"], save)
    tests = [r["test"] for r in report["members"]]
    runs = [r["run"] for r in report["members"]]
    report["single_mean"] = statistics.fmean(tests)
    report["single_sd"] = statistics.stdev(tests) if len(tests) > 1 else 0.0
    print(f"{chosen}: single model mean {100 * report['single_mean']:.2f}% (sd "
          f"{100 * report['single_sd']:.2f}) over {len(tests)} seeds; training time median "
          f"{statistics.median(r['train_seconds'] for r in report['members']):.1f} s on {device_name}")
    for size in sorted({3, 5, len(runs)}):
        if size <= len(runs):
            result = evaluate_ensemble(runs[:size], device=args.device)
            report[f"ensemble_{size}"] = result.metrics.accuracy
            errors = round((1 - result.metrics.accuracy) * result.metrics.count)
            print(f"ensemble of seeds 0..{size - 1}: test {100 * result.metrics.accuracy:.2f}% "
                  f"({errors} errors)", flush=True)
    result = evaluate_ensemble(search_runs, device=args.device)
    report["ensemble_search_runs"] = result.metrics.accuracy
    print(f"ensemble of the {len(search_runs)} search runs (reported, not chosen): test "
          f"{100 * result.metrics.accuracy:.2f}%", flush=True)
    save()


STARTED = time.perf_counter()

if __name__ == "__main__":
    main()
    print(f"whole search {time.perf_counter() - STARTED:.0f} s")

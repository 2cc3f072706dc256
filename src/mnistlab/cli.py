"""The `mnistlab` command. Nothing imports this module; it imports everything."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnistlab.errors import MnistlabError

DEFAULT_RECIPE = "quick"


def cmd_datasets(args: argparse.Namespace) -> int:
    from mnistlab.data import registry

    if args.action == "verify":
        names = [args.name] if args.name else list(registry.DATASETS)
        failures = 0
        for name in names:
            for check in registry.verify_dataset(name, args.data_dir if args.name else None):
                mark = "ok  " if check.ok else "FAIL"
                failures += not check.ok
                print(f"{mark} {name:<14} {check.file.filename:<28} {check.message}")
        return 1 if failures else 0
    for name, spec in registry.DATASETS.items():
        states = [s.state for s in registry.dataset_status(name)]
        overall = states[0] if len(set(states)) == 1 else "partial"
        print(f"{name:<14} {overall:<8} {spec.description}")
    print(f"\ncache folder: {registry.cache_dir()}  (set MNISTLAB_CACHE to move it)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from mnistlab.models import MODELS, build_model, count_parameters

    for name, entry in MODELS.items():
        with torch.device("meta"):
            params = count_parameters(build_model(name, init="pytorch"))
        seed = f"seed {entry.seed}" if entry.seed else "mnistlab"
        print(f"{name:<14} {params:>11,} params  {seed:<9} {entry.description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from mnistlab.models import build_model, format_summary

    print(format_summary(build_model(args.name, init="pytorch"), args.name))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from mnistlab.recipes import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        length = (f"{recipe.train.epochs} epochs" if recipe.train.epochs
                  else f"{recipe.train.steps:,} steps")
        claim = ""
        if recipe.claim and recipe.claim.accuracy:
            claim = f"claims {100 * recipe.claim.accuracy:g}%"
        default = " (default)" if name == DEFAULT_RECIPE else ""
        print(f"{name + default:<28} {recipe.model.name:<12} {length:<13} {claim:<15} {recipe.description}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mnistlab.recipes import load_recipe
    from mnistlab.train.engine import Trainer, new_run_dir, train_summary
    from mnistlab.train.progress import Progress

    progress = Progress(1, quiet=args.quiet)
    if args.resume:
        if args.recipe or args.epochs or args.steps or args.seed is not None or args.out:
            raise MnistlabError("--resume continues a run as it was recorded: give no "
                                "--recipe, --epochs, --steps, --seed or --out with it")
        trainer = Trainer.resuming(Path(args.resume), device=args.device, progress=progress)
    else:
        recipe = load_recipe(args.recipe or DEFAULT_RECIPE).with_length(epochs=args.epochs, steps=args.steps)
        out = Path(args.out) if args.out else new_run_dir(recipe.name)
        trainer = Trainer(recipe, out, seed=args.seed or 0, device=args.device,
                          data_dir=args.data_dir, progress=progress)
    result = trainer.run()
    if result.is_main:  # under torchrun, one process reports for all
        print(train_summary(result))
    return 130 if result.interrupted else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mnistlab.evaluate import evaluate_checkpoint, format_evaluation

    ev = evaluate_checkpoint(args.checkpoint, split=args.split, device=args.device,
                             data_dir=args.data_dir)
    print(json.dumps(ev.to_dict(), indent=2) if args.json else format_evaluation(ev))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mnistlab.reproduce import SEED_RECIPES, markdown_table, reproduce
    from mnistlab.train.engine import new_run_dir

    out = Path(args.out) if args.out else new_run_dir("reproduction", Path("."))
    outcomes = reproduce(args.recipes or list(SEED_RECIPES), seeds=args.seeds, out=out,
                         device=args.device, steps=args.steps, quiet=args.quiet)
    print(markdown_table(outcomes), end="")
    print(f"written: {out / 'reproduction.json'} and {out / 'reproduction.md'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mnistlab.bench import bench, format_bench
    from mnistlab.fileio import atomic_write_text

    result = bench(args.recipe, seeds=args.seeds, device=args.device, quiet=not args.verbose)
    print(format_bench(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"written: {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnistlab",
        description="Train, reproduce and evaluate convolutional networks for handwritten digits.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("datasets", help="list MNIST-format datasets, or verify their files")
    p.add_argument("action", nargs="?", choices=["list", "verify"], default="list")
    p.add_argument("name", nargs="?", help="only this dataset (verify)")
    p.add_argument("--data-dir", help="verify the IDX files in this folder instead (with a name)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("models", help="list the models with their parameter counts")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="a Keras-style table of a model's layers")
    p.add_argument("name")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("recipes", help="list the shipped training recipes")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("train", help="train a recipe; prints the test accuracy at the end")
    p.add_argument("--recipe", help=f"a shipped recipe name or a .toml file (default: {DEFAULT_RECIPE})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive, help="train for N epochs instead")
    length.add_argument("--steps", type=_positive, help="train for N steps instead")
    p.add_argument("--seed", type=_non_negative, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", help="run folder (default runs/RECIPE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--data-dir", help="a folder holding the four IDX files of an MNIST-format dataset")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="train the seed recipes in full and compare with their claims")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="default: every seed recipe")
    p.add_argument("--seeds", type=_positive, default=1, help="random seeds per recipe (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", help="output folder (default ./reproduction-TIME); "
                                 "an existing one is continued, finished runs are reused")
    p.add_argument("--steps", type=_positive,
                   help="shorten every recipe to N steps (a smoke test: claims are not judged)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("bench", help="time to accuracy and throughput, against a plain PyTorch loop")
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help=f"default: {DEFAULT_RECIPE}")
    p.add_argument("--seeds", type=_positive, default=3, help="training runs to time (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--verbose", action="store_true", help="show each run's progress")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("evaluate", help="accuracy, loss, per-class accuracy and confusion matrix")
    p.add_argument("checkpoint", help="a run folder or a model .safetensors file")
    p.add_argument("--split", default="test", choices=["test", "validation", "train", "train-full"])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)
    return parser


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MnistlabError as e:
        if args.debug:
            raise
        print(f"mnistlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("mnistlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0

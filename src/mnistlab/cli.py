"""The `mnistlab` command. Nothing imports this module; it imports everything."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

import mnistlab
from mnistlab.errors import MnistlabError, did_you_mean
from mnistlab.recipebook.recipe import (
    DEFAULT_RECIPE,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_SEED_COUNT,
    MAX_STEPS,
    count_rule,
)


def cmd_datasets(args: argparse.Namespace) -> int:
    from mnistlab.data import registry
    from mnistlab.data.imagefolder import is_image_folder

    if args.action == "verify" and args.name and is_image_folder(Path(args.name)):
        return _verify_image_folder(Path(args.name))
    if args.data_dir is not None and not (args.action == "verify" and args.name):
        raise MnistlabError("--data-dir checks a folder of IDX files against a dataset's "
                            "checksums: give the dataset's name (datasets verify NAME --data-dir DIR)")
    if args.action == "verify":
        names = [args.name] if args.name else list(registry.DATASETS)
        failures = 0
        for name in names:
            if not args.name and all(s.state == "missing" for s in registry.dataset_status(name)):
                # not downloaded is nothing wrong; `verify NAME` still fails on missing files
                print(f"-    {name:<14} not downloaded: nothing to verify")
                continue
            for check in registry.verify_dataset(name, args.data_dir if args.name else None):
                mark = "ok  " if check.ok else "FAIL"
                failures += not check.ok
                print(f"{mark} {name:<14} {check.file.filename:<28} {check.message}")
        return 1 if failures else 0
    for name in [args.name] if args.name else registry.DATASETS:
        spec = registry.get_spec(name)
        states = [s.state for s in registry.dataset_status(name)]
        overall = states[0] if len(set(states)) == 1 else "partial"
        print(f"{name:<14} {overall:<8} {spec.description}")
    print(f"\ncache folder: {registry.cache_dir()}  (set MNISTLAB_CACHE to move it)")
    return 0


def _verify_image_folder(root: Path) -> int:
    from mnistlab.data.imagefolder import verify_image_folder

    checks = verify_image_folder(root)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.what:<20} {check.message}")
    return 0 if all(check.ok for check in checks) else 1


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from mnistlab.models import MODELS, build_model, count_parameters

    for name, entry in MODELS.items():
        with torch.device("meta"):
            params = count_parameters(build_model(name, init="pytorch"))
        source = entry.tutorial or "mnistlab"
        print(f"{name:<14} {params:>11,} params  {source:<12} {entry.description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from mnistlab.checkpoint import SHIPPED_MODELS
    from mnistlab.models import MODELS, build_model, format_summary
    from mnistlab.recipebook import load_recipe, recipe_names

    name = args.name
    # a model's name first, then a recipe's: `summary keras-cnn` is the architecture (with its
    # default arguments), though a shipped model and a recipe are named so too
    if name in MODELS:  # the model with its default arguments
        model, title = build_model(name, init="pytorch"), name
    elif name in recipe_names() or _recipe_file(name):  # the model a recipe trains
        recipe = load_recipe(name)
        model = build_model(recipe.model.name, init="pytorch", **recipe.model.args)
        title = f"{recipe.model.name} (recipe {recipe.name})"
    elif name in SHIPPED_MODELS or Path(name).exists():  # the model a checkpoint holds
        mnistlab.load(name, device="cpu").summary()
        return 0
    else:
        hint = did_you_mean(name, [*MODELS, *recipe_names()])
        raise MnistlabError(f"{name!r} is not a model, a recipe or a checkpoint{hint}: the models are "
                            f"{', '.join(MODELS)} (see also mnistlab recipes)")
    print(format_summary(model, title))
    return 0


def _recipe_file(name: str) -> bool:
    """A recipe's file, as `train --recipe` reads one: a .toml name, or a file of text by any
    other name (a model file's header holds NUL bytes; a run is a folder)."""
    if name.lower().endswith(".toml"):
        return True
    if name.lower().endswith((".safetensors", ".onnx")) or not Path(name).is_file():
        return False
    try:
        with open(name, "rb") as f:
            return b"\0" not in f.read(64)
    except OSError:
        return False  # the checkpoint reader says why


def cmd_recipes(args: argparse.Namespace) -> int:
    from mnistlab.recipebook import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name, check_model=False)  # the tests check the shipped ones
        epochs, steps = recipe.train.epochs, recipe.train.steps
        length = (f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs
                  else f"{steps:,} step{'s' if steps != 1 else ''}")
        claim = ""
        if recipe.claim and recipe.claim.accuracy:
            claim = f"claims {100 * recipe.claim.accuracy:g}%"
        default = " (default)" if name == DEFAULT_RECIPE else ""
        print(f"{name + default:<28} {recipe.model.name:<12} {length:<13} {claim:<15} {recipe.description}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mnistlab.training.engine import new_run_dir

    options = dict(device=args.device, quiet=args.quiet, report=not args.no_report,
                   tensorboard=args.tensorboard, compile=args.compile)
    if args.resume:
        if (args.recipe or args.epochs or args.steps or args.seed is not None or args.out
                or args.seeds or args.init or args.data_dir is not None):
            raise MnistlabError("--resume continues a run as it was recorded: give no "
                                "--recipe, --epochs, --steps, --seed, --seeds, --out, --init or "
                                "--data-dir with it")
        return _finished([mnistlab.resume(args.resume, **options)], args.quiet)
    recipe = mnistlab.recipe(args.recipe or DEFAULT_RECIPE, epochs=args.epochs, steps=args.steps)
    out = Path(args.out) if args.out else None
    if not args.seeds:
        return _finished([mnistlab.train(recipe, seed=args.seed or 0, out=out, init=args.init,
                                         data_dir=args.data_dir, **options)], args.quiet)
    # --seeds N: N runs (an ensemble's members), one folder each inside the output folder
    first = args.seed or 0
    if first + args.seeds - 1 > MAX_SEED:
        raise MnistlabError(f"--seed {first} --seeds {args.seeds} goes past the largest seed, "
                            f"{MAX_SEED:,}")
    out = out or new_run_dir(recipe.name)
    _check_not_a_run(out)
    runs = []
    for seed in range(first, first + args.seeds):
        runs.append(_seed_run(recipe, seed, out / f"seed-{seed}", args, options))
        if _finished(runs[-1:], args.quiet):
            if runs[-1].result.is_main:
                again = ["mnistlab", *args.argv] + ([] if args.out else ["--out", str(out)])
                print(f"or all {args.seeds} seeds with the same command again: {shlex.join(again)}")
            return 130
    if runs[0].result.is_main:
        print(_seeds_summary(runs))
        if not args.no_report:  # into OUT, the folder that holds the seed-K runs
            _compare(runs, out)
    return 0


def _check_not_a_run(out: Path) -> None:
    """`--seeds` puts its runs in OUT/seed-K: never inside another run's own folder."""
    from mnistlab.training.rundir import holds_a_run

    if holds_a_run(out):
        raise MnistlabError(f"{out} is a run's own folder; --seeds puts its runs in "
                            "OUT/seed-K: choose another --out")


def _seed_run(recipe, seed: int, run_dir: Path, args: argparse.Namespace, options: dict) -> mnistlab.Run:
    """One seed of `train --seeds`: trained, or, where the same command ran before and was
    stopped, its run continued (a finished one is tested again)."""
    from mnistlab.checkpoint import resolve_checkpoint
    from mnistlab.training.rundir import differences_text, recorded_differences
    from mnistlab.training.state import STATE_FILE

    if not (run_dir / STATE_FILE).exists():
        return mnistlab.train(recipe, seed=seed, out=run_dir, init=args.init,
                              data_dir=args.data_dir, **options)
    start = (os.path.abspath(args.data_dir) if args.data_dir is not None else None,
             str(resolve_checkpoint(args.init)) if args.init is not None else None)  # as recorded
    # fine-tuning records the model it started from in [model]
    differ = recorded_differences(run_dir, recipe, seed, ignore=("model",) if args.init else (),
                                  start=start)
    if differ:
        raise MnistlabError(f"{run_dir} holds another run ({differences_text(differ)}): "
                            "choose another --out")
    return mnistlab.resume(run_dir, **options)


def _finished(runs: list[mnistlab.Run], quiet: bool) -> int:
    """The exit status after a run: 130 if it was stopped. Under --quiet, the API printed
    nothing: the command still prints each run's result."""
    run = runs[-1]
    if quiet and run.result.is_main:
        print(run)
    return 130 if run.interrupted else 0


def _compare(runs: list, out: Path, what: str = "the seeds") -> None:
    try:
        comparison = mnistlab.compare(runs, out)
    except MnistlabError as e:
        print(f"mnistlab: warning: no comparison of {what}: {e}", file=sys.stderr)
        return
    print(f"{what} compared: {comparison.page}")


def _seeds_summary(runs: list[mnistlab.Run]) -> str:
    import statistics

    accuracies = [100 * r.test_accuracy for r in runs]
    seconds = [r.train_seconds for r in runs]
    if len(runs) == 1:
        return f"1 seed: test accuracy {accuracies[0]:.2f}%; training time {seconds[0]:.1f} s"
    folders = " ".join(str(r.run_dir) for r in runs)
    return (f"{len(runs)} seeds: test accuracy mean {statistics.fmean(accuracies):.2f}% "
            f"(sd {statistics.stdev(accuracies):.2f}, min {min(accuracies):.2f}, "
            f"max {max(accuracies):.2f}); training time median {statistics.median(seconds):.1f} s\n"
            f"their ensemble: mnistlab ensemble {folders}")


def cmd_ensemble(args: argparse.Namespace) -> int:
    result = mnistlab.ensemble(args.checkpoints, split=args.split, device=args.device,
                               data_dir=args.data_dir)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = mnistlab.load(args.checkpoint, device=args.device)
    evaluation = model.evaluate(args.split, data_dir=args.data_dir)
    print(json.dumps(evaluation.to_dict(), indent=2) if args.json else evaluation)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mnistlab.report.build import FIGURES, write_report

    report = write_report(args.run, out=args.out, device=args.device, data_dir=args.data_dir,
                          tensorboard=args.tensorboard)
    print(f"written: {report.page} and {len(report.figures)} PNG figures in "
          f"{report.page.parent / FIGURES} ({report.seconds:.1f} s)")
    if args.tensorboard:
        print(f"TensorBoard event files: {report.tensorboard}" if report.tensorboard else
              "no TensorBoard event files: the run has no training log")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mnistlab.report.compare import format_comparison

    comparison = mnistlab.compare(args.runs, args.out, x=args.x)
    print(format_comparison(comparison))
    print(f"written: {comparison.page} and {comparison.figure}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    reproduction = mnistlab.reproduce(args.recipes, seeds=args.seeds, out=args.out,
                                      device=args.device, steps=args.steps, quiet=args.quiet,
                                      report=not args.no_report)
    print(reproduction, end="")
    print(f"written: {reproduction.out / 'reproduction.json'} and "
          f"{reproduction.out / 'reproduction.md'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mnistlab.bench import bench, format_bench
    from mnistlab.fileio import atomic_write_text, check_writable

    if _json_file(args):
        check_writable(args.json)
    # --verbose's progress goes to stderr where stdout holds the JSON
    with contextlib.redirect_stdout(sys.stderr) if _json_printed(args) else contextlib.nullcontext():
        result = bench(args.recipe, seeds=args.seeds, device=args.device, quiet=not args.verbose,
                       cuda_graphs=not args.eager, compile=args.compile)
    figures = json.dumps(result.to_dict(), indent=2) + "\n"
    if _json_printed(args):
        print(figures, end="")
    else:
        print(format_bench(result))
    if _json_file(args):
        atomic_write_text(args.json, figures)
        print(f"written: {args.json}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mnistlab.inference.reading import format_reading

    model = mnistlab.load(args.model, backend=args.backend, device="cpu")
    classes = len(model.class_names)
    if args.top_k is not None and args.top_k > classes:  # said once, not for each image
        raise MnistlabError(f"--top-k must be from 1 to {classes}, the classes the model reads, "
                            f"got {args.top_k}")
    results, failed = [], 0
    for name in args.images:
        # one bad file is reported and skipped: the others are still read
        try:
            [reading] = model.predict(name, top_k=args.top_k, number=args.number)
        except MnistlabError as e:
            failed += 1
            message = str(e) if str(e).startswith(f"{name}:") else f"{name}: {e}"
            results.append({"image": name, "error": message})
            if not args.json:
                print(f"mnistlab: error: {message}", file=sys.stderr)
            continue
        results.append({"image": name, **reading.to_dict()})
        if not args.json:
            print(format_reading(name, reading))
    if args.json:
        print(json.dumps({"model": model.info, "images": results}, indent=2))
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from mnistlab.inference.export import format_report

    report = mnistlab.load(args.checkpoint, device="cpu").export(args.out)
    print(format_report(report))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mnistlab.serve.server import serve

    # ONNX Runtime unless told otherwise: twice PyTorch's throughput here (docs/SERVING.md)
    serve(args.model or ["default"], host=args.host, port=args.port,
          backend=args.backend or "onnx", workers=args.workers, threads=args.threads,
          top_k=args.top_k, collect=args.collect)
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from mnistlab.fileio import atomic_write_text, check_writable
    from mnistlab.serve.loadtest import (
        format_result,
        load_image_file,
        loadtest,
        payload,
        result_json,
    )

    if _json_file(args):
        check_writable(args.json)
    if args.image and args.payload:
        raise MnistlabError("--payload says how the MNIST digit is sent; --image sends its file "
                            "as it is: give one of them")
    if args.image:
        body, kind, name = load_image_file(args.image), None, args.image
    else:
        body, kind, name = payload(args.payload or "png", args.digit)
    result = loadtest(args.url, seconds=args.seconds, concurrency=args.concurrency,
                      warmup=args.warmup, body=body, content_type=kind, payload_name=name)
    if _json_printed(args):
        print(result_json(result), end="")
    else:
        print(format_result(result))
    if _json_file(args):
        atomic_write_text(args.json, result_json(result))
        print(f"written: {args.json}")
    return 1 if result.errors else 0


# The parser: each command's options, then the options that several commands take (each worded
# once), then the list of commands.

def _datasets_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "verify"], default="list")
    p.add_argument("name", nargs="?", help="only this dataset, or a folder of images in "
                                           "DIR/train/<class>/ (verify)")
    p.add_argument("--data-dir", help="verify the IDX files in this folder instead (with a name)")


def _summary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a model (its default arguments), a recipe (the model it trains) "
                                f"or a checkpoint: {CHECKPOINT}")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help=f"a shipped recipe name or a .toml file (default: {DEFAULT_RECIPE})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_at_most(MAX_EPOCHS), metavar="N",
                        help="train for N epochs instead")
    length.add_argument("--steps", type=_at_most(MAX_STEPS), metavar="N",
                        help="train for N steps instead")
    p.add_argument("--seed", type=_seed, help=f"random seed, 0 to {MAX_SEED:,} (default 0)")
    p.add_argument("--seeds", type=_seed_count, metavar="N",
                   help="train N models, seeds SEED to SEED+N-1, into OUT/seed-K (ensemble members)")
    _device_option(p)
    p.add_argument("--out", help="run folder (default runs/RECIPE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this model's weights (fine-tuning): a run folder, a model "
                        ".safetensors file or 'default'; its architecture is trained, with a "
                        "new classifier where its classes differ from the data's")
    _data_dir_option(p)
    _quiet_option(p)
    _no_report_option(p)
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files, live, into RUN/tensorboard")
    _compile_option(p)


def _reproduce_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="default: every tutorial recipe")
    p.add_argument("--seeds", type=_seed_count, default=1, metavar="N",
                   help="random seeds per recipe (default 1)")
    _device_option(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default ./reproduction-TIME); "
                                                "an existing one is continued, finished runs are reused")
    p.add_argument("--steps", type=_at_most(MAX_STEPS), metavar="N",
                   help="shorten every recipe to N steps (a smoke test: claims are not judged)")
    _quiet_option(p)
    _no_report_option(p)


def _bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help=f"default: {DEFAULT_RECIPE}")
    p.add_argument("--seeds", type=_seed_count, default=3, metavar="N",
                   help="training runs to time (default 3)")
    _device_option(p)
    _json_file_option(p)
    p.add_argument("--verbose", action="store_true", help="show each run's progress")
    p.add_argument("--eager", action="store_true",
                   help="on a GPU, launch each step's kernels from Python instead of replaying a "
                        "CUDA graph (to compare)")
    _compile_option(p)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    _checkpoint_argument(p)
    _evaluation_options(p)


def _ensemble_options(p: argparse.ArgumentParser) -> None:
    _checkpoint_argument(p, many=True)
    _evaluation_options(p)


def _evaluation_options(p: argparse.ArgumentParser) -> None:
    """What `evaluate` and `ensemble` share: which split, where, and how to print."""
    p.add_argument("--split", default="test", choices=["test", "validation", "train", "train-full"],
                   help="the images to evaluate on (default test)")
    _device_option(p)
    _data_dir_option(p)
    _json_print_option(p)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help=RUN_DIR)
    p.add_argument("--out", metavar="DIR", help="write the report here instead of into the run "
                                                "folder (needed for 'default' and read-only runs)")
    _device_option(p)
    _data_dir_option(p)
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files from the run's metrics.jsonl")


def _compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help=f"each {RUN_DIR}")
    p.add_argument("--out", metavar="DIR", help="output folder (default ./comparison-TIME)")
    p.add_argument("--x", choices=["step", "epoch"], default="step",
                   help="the curves' horizontal axis (default step)")


def _predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, BMP, GIF or WebP files")
    _model_options(p)
    p.add_argument("--number", action="store_true",
                   help="read every image as a number written left to right (by default, only "
                        "images holding several separate digits are)")
    _json_print_option(p)


def _export_options(p: argparse.ArgumentParser) -> None:
    _checkpoint_argument(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the only format: onnx")
    p.add_argument("--out", metavar="FILE",
                   help="the .onnx file to write (default: beside the checkpoint; "
                        "mnistlab-default.onnx here for the shipped model)")


def _serve_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, many=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=_positive, default=1,
                   help="server processes, each with its own copy of the model (default 1)")
    p.add_argument("--threads", type=_positive, default=1,
                   help="the model's threads per worker, PyTorch or ONNX Runtime (default 1)")
    p.add_argument("--collect", metavar="DIR",
                   help="let the page's users correct a reading: each correction is stored, as "
                        "drawn, in DIR/train/<class>/, which `mnistlab train --data-dir DIR` "
                        "reads (default: off)")


def _loadtest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", nargs="?", default="http://127.0.0.1:8000",
                   help="the server (this machine only; default http://127.0.0.1:8000)")
    p.add_argument("--seconds", type=float, default=30, help="time measured (default 30, at most 600)")
    p.add_argument("--warmup", type=float, default=2, help="seconds sent first, not measured (default 2)")
    p.add_argument("--concurrency", type=_positive, default=32, help="connections (default 32)")
    payload = p.add_mutually_exclusive_group()
    payload.add_argument("--image", metavar="FILE", help="send this image file")
    payload.add_argument("--digit", type=_non_negative, default=0, metavar="N",
                         help="send MNIST test image N (default 0)")
    p.add_argument("--payload", choices=["png", "json"],
                   help="the MNIST digit as a PNG file (default) or as JSON pixels")
    _json_file_option(p)


# What several commands take, each worded once.

SHIPPED = "'default', 'keras-cnn' or 'softmax-regression' (the shipped models)"
CHECKPOINT = f"a run folder, a model .safetensors file or {SHIPPED}"
RUN_DIR = f"a run folder or {SHIPPED}"


def _checkpoint_argument(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=f"each {CHECKPOINT}")
    else:
        p.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT)


def _model_options(p: argparse.ArgumentParser, many: bool = False) -> None:
    """What `predict` and `serve` share: the model (`serve`: several, the first the default),
    what runs it, and how many guesses it lists."""
    what = f"a run folder, a model .safetensors file, an .onnx file or {SHIPPED}"
    if many:
        p.add_argument("--model", action="append", metavar="CHECKPOINT",
                       help=f"{what}; given several times, each is served and the first is the "
                            "default (default: default)")
        p.add_argument("--backend", choices=["torch", "onnx"],
                       help="compute predictions with PyTorch or ONNX Runtime (default onnx; "
                            "explanations always use PyTorch)")
    else:
        p.add_argument("--model", default="default", metavar="CHECKPOINT", help=what)
        p.add_argument("--backend", choices=["torch", "onnx"],
                       help="run the model with PyTorch or ONNX Runtime (default: onnx for an "
                            ".onnx file, torch otherwise)")
    # by default 3 candidates, or the model's classes where it reads fewer
    if many:  # a request may ask for up to its model's classes (`?top_k=`)
        p.add_argument("--top-k", type=_positive, metavar="K",
                       help="candidates listed per digit, at most the model's classes (default 3)")
    else:
        p.add_argument("--top-k", type=_positive, choices=range(1, 11), metavar="K",
                       help="candidates listed per digit, 1-10 (default 3); a number's "
                            "digits list theirs in --json")


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one, else the accelerator PyTorch reports, "
                        "such as mps or xpu, else the CPU), cpu, or an accelerator by name: "
                        "cuda, mps, xpu, hpu or mtia, with :N for the N-th device (cuda:1) "
                        "(default auto)")


def _data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="a folder holding the four IDX files of an MNIST-format "
                                      "dataset, or images in DIR/train/<class>/ (and optionally "
                                      "DIR/test/<class>/), to use in place of the recipe's "
                                      "dataset or the folder a run was trained on")


def _json_print_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


# --json without a file: the figures printed as JSON (not a string, which argparse would
# check as a file name)
JSON_PRINTED = True


def _json_file_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE.json", type=_json_name, nargs="?", const=JSON_PRINTED,
                   help="print the figures as JSON instead; with FILE.json, print the table "
                        "and write the JSON there")


def _json_printed(args: argparse.Namespace) -> bool:
    return args.json is JSON_PRINTED


def _json_file(args: argparse.Namespace) -> bool:
    return args.json not in (None, JSON_PRINTED)


def _json_name(text: str) -> str:
    # a .json name, so that a slip cannot write JSON over a model or other file one needs
    if not text.lower().endswith(".json"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .json, got {text}")
    return text


def _quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print only the results, not the progress")


def _no_report_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-report", action="store_true",
                   help="write no report (report.html and figures) per run, and no page "
                        "comparing the runs")


def _compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="run the forward pass and loss through torch.compile (fewer, fused "
                        "kernels; pays on a GPU, not on a CPU); its time is reported apart")


def _no_options(p: argparse.ArgumentParser) -> None:
    pass


COMMANDS = [  # name, the function that does it, its options, and what it does (its help)
    ("datasets", cmd_datasets, _datasets_options, "list MNIST-format datasets, or verify their files"),
    ("models", cmd_models, _no_options, "list the models with their parameter counts"),
    ("summary", cmd_summary, _summary_options, "a Keras-style table of a model's layers"),
    ("recipes", cmd_recipes, _no_options, "list the shipped training recipes"),
    ("train", cmd_train, _train_options, "train a recipe; prints the test accuracy at the end"),
    ("reproduce", cmd_reproduce, _reproduce_options,
     "train the tutorial recipes in full and compare with their claims"),
    ("bench", cmd_bench, _bench_options,
     "time to accuracy and throughput, against a plain PyTorch loop"),
    ("evaluate", cmd_evaluate, _evaluate_options,
     "accuracy, loss, per-class accuracy and confusion matrix"),
    ("report", cmd_report, _report_options,
     "a run's report: curves, confusion matrix, mistakes, filters (report.html and PNG files)"),
    ("compare", cmd_compare, _compare_options,
     "several runs' curves on one chart and their results in one table (compare.html)"),
    ("ensemble", cmd_ensemble, _ensemble_options,
     "evaluate several checkpoints as one (averaged probabilities)"),
    ("predict", cmd_predict, _predict_options, "read the digit, or the number, in image files"),
    ("export", cmd_export, _export_options, "export a checkpoint to ONNX and verify it against PyTorch"),
    ("serve", cmd_serve, _serve_options, "the drawing page and the HTTP API (POST /api/predict)"),
    ("loadtest", cmd_loadtest, _loadtest_options,
     "a bounded load test of a running server's /api/predict"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnistlab",
        description="Train, reproduce and evaluate convolutional networks for handwritten digits.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, func, add_options, what in COMMANDS:
        p = sub.add_parser(name, help=what, description=what)
        add_options(p)
        p.set_defaults(func=func)
    return parser


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _port(text: str) -> int:
    value = _whole_number(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text}")
    return value


def _seed(text: str) -> int:
    """A random seed: what torch.manual_seed and the batch plan take (recipes/recipe.py)."""
    value = _whole_number(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED:,}, got {text}")
    return value


def _at_most(most: int):
    """An argument type: a whole number from 1 to `most`."""
    def count(text: str) -> int:
        value = _whole_number(text)
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"{count_rule(most)}, got {text}")
        return value
    return count


def _seed_count(text: str) -> int:
    value = _positive(text)
    if value > MAX_SEED_COUNT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_SEED_COUNT:,} seeds, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # to say how to run it again
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
    except OSError as e:  # what the system refused (a name too long, a folder unreadable)
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"mnistlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1

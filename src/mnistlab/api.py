"""mnistlab from Python: the verbs the `mnistlab` command is built on.

`recipes`, `recipe`, `train`, `resume`, `compare`, `ensemble` and `reproduce` are here; `load`
and `Model` in `mnistlab.model`; `datasets.load` in `mnistlab.datasets`. All are importable
from `mnistlab` itself. A run started here writes the same run folder, metrics and report as
`mnistlab train`, and every mistake raises a `MnistlabError` with the line the command prints.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mnistlab.committee import EnsembleResult, evaluate_ensemble
from mnistlab.errors import MnistlabError, brief, check_flag
from mnistlab.fileio import optional_path_argument, path_argument
from mnistlab.model import Model, load
from mnistlab.recipebook import Recipe, load_recipe, recipe_names
from mnistlab.recipebook.recipe import DEFAULT_RECIPE, MAX_SEED, MAX_SEED_COUNT
from mnistlab.reproduction import TUTORIAL_RECIPES, Outcome, markdown_table
from mnistlab.reproduction import reproduce as reproduce_recipes
from mnistlab.training.engine import RunResult, Trainer, new_run_dir, train_summary
from mnistlab.training.progress import Progress

if TYPE_CHECKING:
    from mnistlab.report.compare import Comparison

__all__ = ["Reproduction", "Run", "compare", "ensemble", "recipe", "recipes", "reproduce", "resume", "train"]


def recipes() -> list[str]:
    """The names of the shipped recipes, as `mnistlab recipes` lists them.

    >>> mnistlab.recipes()[:4]
    ['best', 'compact', 'deep-mnist', 'deep-mnist-as-printed']
    """
    return recipe_names()


def recipe(source: str | os.PathLike | Recipe = DEFAULT_RECIPE, /, *, epochs: int | None = None,
           steps: int | None = None, **sections: object) -> Recipe:
    """A shipped recipe by name, or a TOML file by path, checked; `epochs` or `steps` set its
    length, and a section given as a dict replaces those keys of that section (`name` and
    `description`, the top-level keys, as values). The recipe
    itself never changes: `Recipe.updated(...)` and `Recipe.with_length(...)` return new ones.

    >>> r = mnistlab.recipe("fast", epochs=1, optimizer={"lr": 0.005})
    >>> r.name, r.model.name, r.train.epochs, r.optimizer.lr
    ('fast', 'fast-cnn', 1, 0.005)
    """
    loaded = source if isinstance(source, Recipe) else load_recipe(_recipe_path(source))
    if sections:
        loaded = loaded.updated(**sections)
    return loaded.with_length(epochs=epochs, steps=steps)  # which checks them


@dataclass
class Run:
    """A finished (or stopped) training run: `model`, `run_dir`, `test_accuracy`,
    `validation_accuracy`, `train_seconds`, `interrupted`, `report` (the report.html written,
    or None) and `result`, everything the engine measured."""

    result: RunResult
    report: Path | None = None

    def __post_init__(self) -> None:
        # where `model` loads from, found from any working folder later (a notebook's %cd)
        self._folder = Path(os.path.abspath(self.result.run_dir))

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir

    @property
    def test_accuracy(self) -> float | None:
        """On the 10,000 test images, once, at the end; None for a run stopped early."""
        return self.result.test.accuracy if self.result.test is not None else None

    @property
    def validation_accuracy(self) -> float | None:
        validation = self.result.validation
        return validation.accuracy if validation is not None else None

    @property
    def train_seconds(self) -> float:
        return self.result.train_seconds

    @property
    def interrupted(self) -> bool:
        """Stopped before its last step (Ctrl-C, or a notebook's interrupt): continue it with
        `mnistlab.resume(run.run_dir)`."""
        return self.result.interrupted

    @functools.cached_property
    def model(self) -> Model:
        """The model the run saved (its weight average where the recipe keeps one)."""
        return load(self._folder, device=self.result.device)

    def __repr__(self) -> str:
        done = ("stopped at step " f"{self.result.steps_done:,}" if self.interrupted
                else f"test accuracy {100 * self.test_accuracy:.2f}%")
        return f"Run({str(self.run_dir)!r}: {self.result.recipe.name}, {done})"

    def __str__(self) -> str:
        """What `mnistlab train` prints at the end of a run."""
        lines = [train_summary(self.result)]
        if self.report is not None:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def train(recipe: str | os.PathLike | Recipe = DEFAULT_RECIPE, *, epochs: int | None = None,
          steps: int | None = None, seed: int = 0, device: str = "auto",
          out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
          init: str | os.PathLike | None = None, quiet: bool = False, report: bool = True,
          tensorboard: bool = False, compile: bool = False) -> Run:
    """Train a recipe (a shipped name, a TOML file or a `Recipe`) into a run folder and test
    it once at the end: `mnistlab train` from Python.

    `out` is the run folder (default runs/RECIPE-TIME); `data_dir` a folder to train on
    instead of the recipe's dataset: MNIST's four IDX files, or images in
    `data_dir/train/<class>/` (and optionally `data_dir/test/<class>/`); `init` a checkpoint
    to start from (a run folder, a model file or "default"): its model is trained, with a new
    classifier where its classes differ from the data's; `quiet` prints nothing (else the
    progress and the result); `report` writes report.html and its figures; `tensorboard` writes event
    files live. Ctrl-C (or a notebook's interrupt) stops at the next step and saves.

    >>> run = mnistlab.train("softmax-regression", steps=200, seed=0, device="cpu", quiet=True)
    >>> run
    Run('runs/softmax-regression-...': softmax-regression, test accuracy ...%)
    >>> 0.85 < run.test_accuracy < 0.95, run.report.name
    (True, 'report.html')
    >>> run.model.evaluate(split="validation")
    Evaluation(validation: accuracy ...%, loss ..., 5,000 images)
    """
    chosen = recipe if isinstance(recipe, Recipe) else load_recipe(_recipe_path(recipe))
    chosen = chosen.with_length(epochs=epochs, steps=steps)  # which checks them
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise MnistlabError(f"seed: expected a whole number from 0 to {MAX_SEED:,}, "
                            f"got {brief(seed)}")
    _flags(quiet=quiet, report=report, tensorboard=tensorboard, compile=compile)
    out = optional_path_argument("out", out, "a folder")
    data_dir = optional_path_argument("data_dir", data_dir, "a folder")
    init = optional_path_argument("init", init, "a run folder, a model file or 'default'")
    run_dir = Path(out) if out is not None else new_run_dir(chosen.name)
    folder = os.path.abspath(data_dir) if data_dir is not None else None  # recorded: found from anywhere
    trainer = Trainer(chosen, run_dir, seed=seed, device=device, data_dir=folder,
                      progress=Progress(1, quiet=quiet), compile=compile, init=init)
    return _run(trainer, device=device, quiet=quiet, report=report, tensorboard=tensorboard)


def resume(run_dir: str | os.PathLike, *, device: str = "auto", quiet: bool = False,
           report: bool = True, tensorboard: bool = False, compile: bool = False) -> Run:
    """Continue a run that was stopped, from its saved training state, to the same weights
    an uninterrupted run ends with: `mnistlab train --resume` from Python. A finished run
    has nothing left to train: it is tested again.

    >>> run = mnistlab.train("softmax-regression", steps=100, device="cpu", quiet=True)
    >>> again = mnistlab.resume(run.run_dir, device="cpu", quiet=True)
    >>> again.result.steps_done, again.test_accuracy == run.test_accuracy
    (100, True)
    """
    _flags(quiet=quiet, report=report, tensorboard=tensorboard, compile=compile)
    folder = Path(path_argument("run_dir", run_dir, "a run folder"))
    trainer = Trainer.resuming(folder, device=device, progress=Progress(1, quiet=quiet),
                               compile=compile)
    return _run(trainer, device=device, quiet=quiet, report=report, tensorboard=tensorboard)


def _run(trainer: Trainer, *, device: str, quiet: bool, report: bool, tensorboard: bool) -> Run:
    if tensorboard:  # live event files, from each record as it is logged
        from mnistlab.report.tensorboard import TensorBoardLogger

        trainer.on_log = TensorBoardLogger(trainer.run_dir)
    result = trainer.run()
    run = Run(result)
    if not result.is_main:  # under torchrun, one process reports for all
        return run
    if not quiet:
        print(train_summary(result))
    if report:  # a stopped run too: its report shows what it has
        run.report = _report(result.run_dir, device, quiet)
    return run


def _report(run_dir: Path, device: str, quiet: bool) -> Path | None:
    """Write a trained run's report; one that cannot be written is a warning, not a failed run."""
    from mnistlab.report.build import write_report  # matplotlib: only when a report is drawn

    try:
        written = write_report(run_dir, device=device)
    except MnistlabError as e:
        print(f"mnistlab: warning: no report for {run_dir}: {e}", file=sys.stderr)
        return None
    if not quiet:
        print(f"report: {written.page} ({written.seconds:.1f} s)")
    return written.page


def compare(runs: list[str | os.PathLike | Run], out: str | os.PathLike | None = None, *,
            x: str = "step") -> Comparison:
    """Several runs' curves on one chart and their results in one table: compare.html and
    its figure in `out` (default ./comparison-TIME), as `mnistlab compare` writes them. `runs`
    is a list of run folders and `Run`s; one alone is taken as a list of one.

    >>> runs = [mnistlab.train("softmax-regression", steps=50, seed=seed, device="cpu",
    ...                        quiet=True, report=False) for seed in (0, 1)]
    >>> comparison = mnistlab.compare(runs, "both-seeds")
    >>> comparison
    Comparison(2 runs: ..., ...; page 'both-seeds/compare.html')
    """
    from mnistlab.report.compare import compare_runs

    folders = _paths("runs", runs, "a run folder")
    if x not in ("step", "epoch"):
        raise MnistlabError(f"x: expected 'step' or 'epoch', got {brief(x)}")
    out = optional_path_argument("out", out, "a folder")
    dest = Path(out) if out is not None else new_run_dir("comparison", Path("."))
    return compare_runs(folders, dest, x=x)


def ensemble(models: list[str | os.PathLike | Run], *, split: str = "test", device: str = "auto",
             data_dir: str | os.PathLike | None = None) -> EnsembleResult:
    """Several checkpoints as one, their probabilities averaged, measured on a split:
    `mnistlab ensemble` from Python. Each member's accuracy is measured too. `models` is a
    list of run folders, checkpoints and `Run`s; one alone is taken as a list of one.

    >>> result = mnistlab.ensemble(["default", "keras-cnn"])
    >>> result
    Ensemble(2 models on test: accuracy 99.52%, members' mean 99.44%)
    """
    targets = _paths("models", models, "a run folder or a checkpoint")
    return evaluate_ensemble(targets, split=split, device=device,
                             data_dir=optional_path_argument("data_dir", data_dir, "a folder"))


@dataclass
class Reproduction:
    """The outcome per recipe (`outcomes`), and the folder (`out`) holding the runs,
    reproduction.json and reproduction.md; printed, the table of claims against measurements."""

    outcomes: list[Outcome]
    out: Path

    def __str__(self) -> str:
        return markdown_table(self.outcomes)


def reproduce(recipes: list[str] | str | None = None, *, seeds: int = 1,
              out: str | os.PathLike | None = None, device: str = "auto",
              steps: int | None = None, quiet: bool = False, report: bool = True) -> Reproduction:
    """Train tutorial recipes (a list of names, or one; default: all of them) at their
    published schedules with `seeds` random seeds each, and judge each tutorial's claim
    against the mean: `mnistlab reproduce` from Python. An existing `out` is continued:
    finished runs are read back. `steps` shortens every recipe (a smoke test: claims are then
    not judged).

    >>> result = mnistlab.reproduce(["softmax-regression"], steps=100, out="repro",
    ...                             device="cpu", quiet=True, report=False)
    >>> print(result)  # doctest: +ELLIPSIS
    | recipe | tutorial | claimed | measured (mean ± sd) | seeds | training time (mean) | ...
    |---|---|---|---|---|---|---|---|
    | `softmax-regression` | TensorFlow: Deep MNIST for Experts | 91.00% | ...% ± 0.00 | 1 | ... s | cpu | n/a (shortened schedule) |
    """
    chosen = [] if recipes is None else _paths("recipes", recipes, "a recipe's name or a TOML file")
    names = chosen or list(TUTORIAL_RECIPES)  # an empty list too
    repeated = sorted({str(name) for name in names if names.count(name) > 1})
    if repeated:
        raise MnistlabError(f"recipes: {', '.join(repeated)} named twice: give each recipe once")
    seeds, steps = _count("seeds", seeds, optional=False), _count("steps", steps)
    if seeds > MAX_SEED_COUNT:
        raise MnistlabError(f"seeds: expected at most {MAX_SEED_COUNT:,}, got {brief(seeds)}")
    _flags(quiet=quiet, report=report)
    out = optional_path_argument("out", out, "a folder")
    dest = Path(out) if out is not None else new_run_dir("reproduction", Path("."))
    outcomes = reproduce_recipes(names, seeds=seeds, out=dest, device=device, steps=steps,
                                 quiet=quiet)
    if report:  # each run's report (once), and every run's curves on one page
        runs = sorted(dest.glob("runs/*/seed-*"))
        for run_dir in runs:
            if not (run_dir / "report.html").exists():
                _report(run_dir, device, quiet)
        try:
            comparison = compare(runs, dest)
        except MnistlabError as e:
            print(f"mnistlab: warning: no comparison of the runs: {e}", file=sys.stderr)
        else:
            if not quiet:
                print(f"the runs compared: {comparison.page}")
    return Reproduction(outcomes, dest)


def _flags(**flags: object) -> None:
    for name, value in flags.items():
        check_flag(name, value)


def _count(name: str, value: int | None, *, optional: bool = True) -> int | None:
    """A whole number of at least 1, or None where `optional`; anything else is refused with
    its name."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MnistlabError(f"{name}: expected a whole number of at least 1, got {brief(value)}")
    return value


def _recipe_path(source: str | os.PathLike) -> str:
    return path_argument("recipe", source, "a recipe's name or a TOML file")


def _paths(name: str, values: Iterable[str | os.PathLike | Run] | str | os.PathLike | Run,
           what: str) -> list[str | Path]:
    """The paths a list argument holds (a Run's folder for a Run), each `what`. One path or
    Run alone is a list of one, as `serve` takes one model: a str would otherwise be read
    letter by letter."""
    if isinstance(values, (str, os.PathLike, Run)):
        values = [values]
    elif isinstance(values, (bytes, bytearray)) or not isinstance(values, Iterable):
        raise MnistlabError(f"{name}: expected a list, each {what}, got {brief(values)}")
    return [v.run_dir if isinstance(v, Run) else path_argument(f"{name}[{i}]", v, what)
            for i, v in enumerate(values)]

"""Reproduce the tutorials: train each tutorial recipe at its published schedule, measure,
compare with what the tutorial claims.

Every (recipe, random seed) run goes into its own run folder under the output folder, and the tables
are rewritten after each run, so a long reproduction can be interrupted and continued: a run
that already finished is read back instead of trained again. A shortened schedule (--steps) has
folders of its own, and a folder whose run was trained by another recipe is refused, so a run
is never judged as another one.
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mnistlab.checkpoint import MODEL_META_FILE
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import evaluate_checkpoint
from mnistlab.fileio import atomic_write_text
from mnistlab.recipebook import Recipe, load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.estimate import estimate
from mnistlab.training.progress import Progress, format_duration
from mnistlab.training.rundir import differences_text, recorded_differences
from mnistlab.training.state import STATE_FILE

TUTORIAL_RECIPES = (
    "softmax-regression",
    "deep-mnist",
    "deep-mnist-as-printed",
    "opengenus-cnn",
    "strided-cnn",
    "keras-cnn",
)
# A claim holds when the mean measured accuracy reaches it, or falls short by at most this much
# (the tutorials say "about 99.2%"; one run of theirs is no more precise than that).
TOLERANCE = 0.001


@dataclass
class Outcome:
    recipe: str
    tutorial: str
    claim: float | None
    device: str
    accuracies: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    # OpenGenus' CNN as printed tests with dropout on; this is the same model tested with it off
    accuracies_dropout_off: list[float] = field(default_factory=list)
    shortened: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def verdict(self) -> str:
        if self.shortened:
            return "n/a (shortened schedule)"
        if self.claim is None:
            return "no claim"
        return "yes" if self.mean >= self.claim - TOLERANCE else "no"

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "spread": self.spread, "verdict": self.verdict}


def reproduce(names: list[str], *, seeds: int, out: Path, device: str = "auto",
              steps: int | None = None, quiet: bool = False) -> list[Outcome]:
    printer = Progress(1, quiet=quiet)
    recipes = [load_recipe(name).with_length(steps=steps) for name in names]
    for recipe in recipes:  # before any training: each folder holds this recipe's run or none
        for seed in range(seeds):
            _check_same_recipe(_run_dir(out, recipe, seed, steps), recipe)
    if not quiet:
        printer.line(_expected_time(recipes, seeds, out, device, steps))
    started = time.perf_counter()
    continue_with = _continue_with(names, seeds, out, steps)
    outcomes = []
    for recipe in recipes:
        outcome = None
        for seed in range(seeds):
            run_dir = _run_dir(out, recipe, seed, steps)
            accuracy, seconds, run_device = (_finished(run_dir) or _train(
                recipe, run_dir, seed, device, quiet, continue_with))
            if outcome is None:
                outcome = Outcome(recipe.name, recipe.claim.tutorial if recipe.claim else "",
                                  recipe.claim.accuracy if recipe.claim else None, run_device,
                                  shortened=steps is not None)
            outcome.accuracies.append(accuracy)
            outcome.train_seconds.append(seconds)
            if recipe.quirks.dropout_at_test:
                off = evaluate_checkpoint(run_dir, device=device, dropout_at_test=False)
                outcome.accuracies_dropout_off.append(off.metrics.accuracy)
            printer.line(f"{recipe.name} seed {seed}: test accuracy {100 * accuracy:.2f}% "
                         f"in {seconds:.1f} s of training")
            _write(out, outcomes + [outcome], seeds)
        outcomes.append(outcome)
    _write(out, outcomes, seeds)
    printer.line(f"reproduced in {format_duration(time.perf_counter() - started)}")
    return outcomes


def _expected_time(recipes: list[Recipe], seeds: int, out: Path, device: str, steps: int | None) -> str:
    """How long the runs left to train should take, from a few steps of each timed here."""
    parts, total = [], 0.0
    for recipe in recipes:
        left = sum(_finished(_run_dir(out, recipe, seed, steps)) is None for seed in range(seeds))
        if left:
            seconds = left * estimate(recipe, device).seconds
            total += seconds
            parts.append(f"{recipe.name} {_roughly(seconds)}")
    if not parts:
        return f"every run in {out} has finished: reading them back"
    runs = f"{len(recipes)} recipe{'s' * (len(recipes) > 1)}, {seeds} seed{'s' * (seeds > 1)} each"
    return (f"reproducing {runs}: expect about {_roughly(total)} of training and testing "
            f"({', '.join(parts)}; timed from a few steps of each here)")


def _roughly(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def _run_dir(out: Path, recipe: Recipe, seed: int, steps: int | None) -> Path:
    """OUT/runs/RECIPE/seed-N at the recipe's schedule; OUT/runs/RECIPE-N-steps/seed-N for a
    shortened one."""
    name = recipe.name if steps is None else f"{recipe.name}-{steps}-steps"
    return out / "runs" / name / f"seed-{seed}"


def _check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse a run folder whose run (finished or not) another recipe trained: an older
    mnistlab's version of this recipe, say. Reading it back would judge that run as this
    one, and continuing it would train the other recipe."""
    differ = recorded_differences(run_dir, recipe)
    if differ:
        raise MnistlabError(f"{run_dir} holds a run of another {recipe.name} recipe "
                            f"({differences_text(differ)} from today's): reproduce into another --out")


def _finished(run_dir: Path) -> tuple[float, float, str] | None:
    """A run that already finished: its test accuracy, training time and device; None for
    one that did not, or whose record cannot be read as one (it is trained again)."""
    try:
        meta = json.loads((run_dir / MODEL_META_FILE).read_text())
        if not meta.get("complete"):
            return None
        m = meta["metrics"]
        accuracy, seconds, device = m["test"]["accuracy"], m["train_seconds"], meta["device"]
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (accuracy, seconds))
    return (accuracy, seconds, device) if numbers and isinstance(device, str) else None


def _continue_with(names: list[str], seeds: int, out: Path, steps: int | None) -> str:
    """The command that continues this reproduction where it stops (the same one, run again)."""
    words = ["mnistlab", "reproduce", *names, "--seeds", str(seeds), "--out", str(out)]
    return shlex.join(words + (["--steps", str(steps)] if steps is not None else []))


def _train(recipe: Recipe, run_dir: Path, seed: int, device: str, quiet: bool,
           continue_with: str) -> tuple[float, float, str]:
    progress = Progress(1, quiet=quiet)
    if (run_dir / STATE_FILE).exists():  # an earlier reproduction stopped inside this run
        trainer = Trainer.resuming(run_dir, device=device, progress=progress, continue_with=continue_with)
    else:
        trainer = Trainer(recipe, run_dir, seed=seed, device=device, progress=progress,
                          continue_with=continue_with)
    result = trainer.run()
    if result.interrupted:
        raise KeyboardInterrupt
    return result.test.accuracy, result.train_seconds, result.device


def _write(out: Path, outcomes: list[Outcome], seeds: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "reproduction.json", json.dumps(
        {"seeds": seeds, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
         "outcomes": [o.to_dict() for o in outcomes]}, indent=2) + "\n")
    atomic_write_text(out / "reproduction.md", markdown_table(outcomes))


def markdown_table(outcomes: list[Outcome]) -> str:
    lines = [
        "| recipe | tutorial | claimed | measured (mean ± sd) | seeds | training time (mean) | device | claim holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        claim = f"{100 * o.claim:.2f}%" if o.claim is not None else "none"
        measured = f"{100 * o.mean:.2f}% ± {100 * o.spread:.2f}"
        if o.accuracies_dropout_off:
            off = statistics.fmean(o.accuracies_dropout_off)
            measured += f" (dropout off at test: {100 * off:.2f}%)"
        lines.append(f"| `{o.recipe}` | {o.tutorial} | {claim} | {measured} | {len(o.accuracies)} | "
                     f"{statistics.fmean(o.train_seconds):.1f} s | {o.device} | {o.verdict} |")
    return "\n".join(lines) + "\n"

"""A run folder as the reports read it: the model and its metadata, and metrics.jsonl.

Reading is strict where a wrong answer would otherwise follow: a folder that is not a run, a
missing or corrupt checkpoint, or a metrics line that is not a metrics record (not UTF-8, not a
JSON object, a field of the wrong kind or out of its range) is one clear error. The one
exception is a last line cut short (no newline) by a crash while it was written, which is
skipped and noted. metrics.jsonl is read only if it is a regular file, and no more than
MAX_METRICS_BYTES of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

import mnistlab
from mnistlab.checkpoint import MODEL_FILE, load_model, shipped_dir
from mnistlab.errors import MnistlabError
from mnistlab.fileio import read_limited
from mnistlab.training.engine import METRICS_FILE
from mnistlab.training.rundir import holds_a_run

PACKAGE_DIR = Path(mnistlab.__file__).resolve().parent
# every numeric field a record of each event must hold
REQUIRED = {
    "train": ("step", "loss", "accuracy"),
    "validation": ("step", "loss", "accuracy"),
    "test": ("loss", "accuracy"),
}
# the range of each numeric field the reports read, in a record of any event that holds it;
# None: any number (a run that diverged logs a loss of inf or nan)
RANGES: dict[str, tuple[int, int] | None] = {
    "step": (0, 2**53),  # whole steps, exact as a float (a recipe takes at most 10 million)
    "epoch": (0, 2**53),
    "time": (0, 253_402_300_799),  # seconds since 1970, before the year 10000 (localtime's end)
    "accuracy": (0, 1),
    "loss": None,
    "lr": None,
}
# The most of metrics.jsonl a report reads: a record is at most about 180 bytes, so 64 MiB hold
# some 370,000 of them, where the longest shipped recipe logs 200 (20,000 steps, one record
# every 100): room for a run logging every step for a long time, and a parse that stays within
# a few hundred MB of memory.
MAX_METRICS_BYTES = 64 * 1024**2


class ReportError(MnistlabError):
    pass


@dataclass
class Curves:
    """What metrics.jsonl holds, by event, in the order it was logged."""

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> Curves:
        curves = cls()
        for record in records:
            event = record.get("event")
            if event in ("train", "validation"):
                getattr(curves, event).append(record)
            elif event == "test":
                curves.test = record
        return curves

    @property
    def last_step(self) -> int:
        steps = [r["step"] for r in self.train + self.validation]
        if self.test and isinstance(self.test.get("step"), (int, float)):
            steps.append(self.test["step"])
        return int(max(steps, default=0))


@dataclass
class Run:
    folder: Path
    name: str  # what to call it on a page
    model: nn.Module
    meta: dict[str, Any]
    records: list[dict[str, Any]] | None  # None: the folder has no metrics.jsonl
    notes: list[str] = field(default_factory=list)

    @property
    def curves(self) -> Curves:
        return Curves.from_records(self.records or [])

    @property
    def recipe(self) -> dict[str, Any]:
        recipe = self.meta.get("recipe")
        return recipe if isinstance(recipe, dict) else {}

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics the checkpoint recorded, each kept only in the form the engine writes
        it (a split's accuracy and loss as numbers; the training seconds a number), for
        a checkpoint's metadata holds whatever its writer put there."""
        recorded = self.meta.get("metrics")
        recorded = recorded if isinstance(recorded, dict) else {}
        kept = {split: recorded[split] for split in ("test", "validation")
                if isinstance(recorded.get(split), dict)
                and all(_number(recorded[split].get(key)) for key in ("accuracy", "loss"))}
        seconds = recorded.get("train_seconds", self.meta.get("train_seconds"))
        return kept | ({"train_seconds": seconds} if _number(seconds) else {})

    @property
    def is_shipped(self) -> bool:
        """Inside the installed package (the shipped model): never written into."""
        return self.folder.resolve().is_relative_to(PACKAGE_DIR)

    def section(self, name: str) -> dict[str, Any]:
        value = self.recipe.get(name)
        return value if isinstance(value, dict) else {}


def resolve_run_dir(target: str | os.PathLike) -> Path:
    """A run folder, or a shipped model's name (`default`, ...) for its folder."""
    shipped = shipped_dir(target)
    if shipped is not None:
        return shipped
    folder = Path(target)
    if not folder.exists():
        raise ReportError(f"{target}: no such run folder")
    if not folder.is_dir():
        raise ReportError(f"{target}: not a run folder (give the folder that holds {MODEL_FILE})")
    if not (folder / MODEL_FILE).is_file():
        if (folder / METRICS_FILE).is_file():
            raise ReportError(f"{target}: the run has no checkpoint ({MODEL_FILE} is missing)")
        raise ReportError(f"{target}: not a run folder (no {MODEL_FILE} and no {METRICS_FILE})")
    return folder


def open_run(target: str | os.PathLike, device: str = "cpu") -> Run:
    folder = resolve_run_dir(target)
    model, meta = load_model(folder, device)
    name = str(target) if shipped_dir(target) == folder else folder.resolve().name
    run = Run(folder, name, model, meta, None)
    path = folder / METRICS_FILE
    if path.exists():  # a folder or a FIFO in its place is refused by read_metrics
        run.records, cut = read_metrics(path)
        if cut:
            run.notes.append(f"The last line of {METRICS_FILE} was cut short (the run was "
                             "stopped while writing it) and is left out.")
        if not run.records:
            run.notes.append(f"{METRICS_FILE} holds no record yet: the run stopped before its "
                             "first log point, so there are no training curves.")
    else:
        run.notes.append(f"This folder has no {METRICS_FILE}, so there are no training curves: "
                         "the figures below come from the model itself.")
    if not meta.get("complete", True):
        run.notes.append(f"The run is unfinished: it stopped at step {meta.get('step')} of "
                         f"{meta.get('total_steps')} (continue it with "
                         f"mnistlab train --resume {folder}).")
    return run


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of a metrics.jsonl, and whether a last line cut short was skipped."""
    try:
        data = read_limited(path, MAX_METRICS_BYTES, "metrics log")
    except MnistlabError as e:  # not a regular file, unreadable, or too long
        raise ReportError(f"{e} (move it aside to report the run without its training "
                          "curves)") from None
    lines = data.split(b"\n")
    records, cut = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            # UTF-8 whatever the bytes look like: json.loads would guess UTF-16 or UTF-32
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # a UnicodeDecodeError is a ValueError
            if number == len(lines):  # no newline after it: written when the process died
                cut = True
                continue
            raise ReportError(f"{path} line {number}: {_not_json(e)}") from None
        records.append(_checked(record, f"{path} line {number}"))
    return records, cut


def _not_json(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at column {e.start + 1})"
    if isinstance(e, RecursionError):
        return "not valid JSON (nested too deeply)"
    return "not valid JSON"


def _checked(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        raise ReportError(f"{where}: not a metrics record (an object with an 'event')")
    event = record["event"]
    for key in REQUIRED.get(event, ()):
        if key not in record:
            raise ReportError(f"{where}: the {event} record has no number '{key}'")
    for key, bounds in RANGES.items():
        if key not in record:
            continue
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{where}: the {event} record has no number '{key}'")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:  # nan is in no range
            raise ReportError(f"{where}: {key} {value!r:.40} is not between {bounds[0]} and "
                              f"{bounds[1]:,}")
        if key == "step":
            if not float(value).is_integer():
                raise ReportError(f"{where}: step {value!r} is not a whole number of at least 0")
            record[key] = int(value)
    return record


def output_dir(run: Run, out: str | os.PathLike | None) -> Path:
    """Where a run's report goes: --out, else the run folder if it may be written into."""
    if out is not None:
        if _another_run(Path(out), run.folder):
            raise ReportError(f"{out} is another run's folder, whose own report would be "
                              "replaced: write this one elsewhere with --out DIR")
        return Path(out)
    if run.is_shipped:
        raise ReportError(f"{run.name}: the shipped model lives inside the installed package, "
                          "which a report never writes into: choose a folder with --out DIR")
    if not os.access(run.folder, os.W_OK):
        raise ReportError(f"{run.folder} is read-only: write the report elsewhere with --out DIR")
    return run.folder


def _another_run(folder: Path, run_folder: Path) -> bool:
    """Whether `folder` holds a run of its own, other than the one at `run_folder`."""
    if not holds_a_run(folder):
        return False
    try:
        return not folder.samefile(run_folder)
    except OSError:
        return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

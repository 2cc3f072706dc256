"""Several runs side by side: their curves on one chart, their results in one table, and, for a
recipe run with several seeds, the mean and spread of its test accuracy.

Nothing is measured again: a comparison reads what each run recorded (metrics.jsonl and its
checkpoint's metadata), so it takes a moment for any number of runs.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import mnistlab
from mnistlab.fileio import atomic_write_bytes, atomic_write_text
from mnistlab.report import figures as draw
from mnistlab.report.html import Page, Section, figure, num, paragraph, table
from mnistlab.report.run import ReportError, Run, open_run

PAGE = "compare.html"
FIGURE = "compare-curves.png"


@dataclass
class Row:
    label: str
    run: Run

    @property
    def recipe(self) -> str:
        return str(self.run.recipe.get("name", "?"))

    def recorded(self, split: str) -> dict | None:
        """The final metrics of a split as the run recorded them."""
        curves = self.run.curves
        if split == "test" and curves.test is not None:
            return curves.test
        if split == "validation" and curves.validation:
            return curves.validation[-1]
        return self.run.metrics.get(split)

    @property
    def train_seconds(self) -> float | None:
        value = self.run.metrics.get("train_seconds")
        return None if value is None else float(value)


@dataclass
class Comparison:
    rows: list[Row]
    page: Path
    figure: Path
    seconds: float

    def __repr__(self) -> str:
        # the runs by their labels, not every run's records (kilobytes of them in a notebook)
        shown = ", ".join(row.label for row in self.rows[:4]) + ", ..." * (len(self.rows) > 4)
        count = len(self.rows)
        return f"Comparison({count} run{'s' * (count != 1)}: {shown}; page {str(self.page)!r})"


def labels_for(folders: list[Path]) -> list[str]:
    """The shortest path endings that tell the runs apart: seed-0 and seed-1, or
    quick/seed-0 and fast/seed-0."""
    parts = [f.resolve().parts for f in folders]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(p) for p in parts):
            return labels
        depth += 1


def compare_runs(targets: list[str | os.PathLike], out: str | os.PathLike, *,
                 x: str = "step") -> Comparison:
    started = time.perf_counter()
    if not targets:
        raise ReportError("compare: name at least one run folder")
    runs = [open_run(t) for t in targets]
    folders = [r.folder for r in runs]
    if len({f.resolve() for f in folders}) < len(folders):
        raise ReportError("compare: a run folder is named twice")
    rows = [Row(label, run) for label, run in zip(labels_for(folders), runs)]
    png = draw.curves_png([(r.label, r.run.curves) for r in rows], x=x)
    dest = Path(out)
    page = _page(rows, png, x)
    atomic_write_bytes(dest / FIGURE, png)
    atomic_write_text(dest / PAGE, page)
    return Comparison(rows, dest / PAGE, dest / FIGURE, time.perf_counter() - started)


def _percent(metrics: dict | None) -> str:
    return f"{100 * metrics['accuracy']:.2f}%" if metrics else "—"


def run_table(rows: list[Row]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The table of runs, as plain text cells (the page and the terminal print it)."""
    headers = ["run", "recipe", "model", "seed", "steps", "training", "validation", "test",
               "test loss"]
    body = []
    for row in rows:
        meta = row.run.meta
        test = row.recorded("test")
        seconds = row.train_seconds
        step, total = meta.get("step"), meta.get("total_steps")
        steps = f"{step:,}" if isinstance(step, int) else "?"
        if isinstance(total, int) and total != step:
            steps += f" of {total:,}"
        body.append((row.label, row.recipe, str((meta.get("model") or {}).get("name", "?")),
                     str(meta.get("seed", "?")), steps,
                     f"{seconds:.1f} s" if seconds is not None else "—",
                     _percent(row.recorded("validation")), _percent(test),
                     f"{test['loss']:.4f}" if test else "—"))
    return headers, body


def recipe_table(rows: list[Row]) -> tuple[list[str], list[tuple[str, ...]]] | None:
    """Mean and spread of the test accuracy for each recipe run more than once; None if none is."""
    by_recipe: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_recipe[row.recipe].append(row)
    if all(len(group) < 2 for group in by_recipe.values()):
        return None
    headers = ["recipe", "runs", "test mean", "sd", "min", "max", "training (median)"]
    body = []
    for recipe, group in by_recipe.items():
        accuracies = [100 * t["accuracy"] for t in (r.recorded("test") for r in group) if t]
        seconds = [s for s in (r.train_seconds for r in group) if s is not None]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        body.append((recipe, str(len(group)),
                     f"{statistics.fmean(accuracies):.2f}%" if accuracies else "—",
                     f"{spread:.2f}" if spread is not None else "—",
                     f"{min(accuracies):.2f}%" if accuracies else "—",
                     f"{max(accuracies):.2f}%" if accuracies else "—",
                     f"{statistics.median(seconds):.1f} s" if seconds else "—"))
    return headers, body


def format_comparison(comparison: Comparison) -> str:
    """The tables for a terminal."""
    parts = [_text_table(*run_table(comparison.rows))]
    recipes = recipe_table(comparison.rows)
    if recipes:
        parts.append(_text_table(*recipes))
    return "\n\n".join(parts)


def _text_table(headers: list[str], body: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *body)]
    lines = []
    for cells in [headers, *body]:
        lines.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return "\n".join(lines)


def _numeric(headers: list[str], body: list[tuple[str, ...]], first: int):
    return ([h if i < first else num(h) for i, h in enumerate(headers)],
            [[c if i < first else num(c) for i, c in enumerate(row)] for row in body])


def _page(rows: list[Row], png: bytes, x: str) -> str:
    page = Page(title=f"{len(rows)} runs compared: mnistlab",
                heading=f"{len(rows)} runs compared",
                subtitle=", ".join(dict.fromkeys(r.recipe for r in rows)),
                footer=f"Written by mnistlab {mnistlab.__version__} on "
                       f"{time.strftime('%Y-%m-%d %H:%M')}.")
    for row in rows:
        if row.run.records is None:
            page.notes.append(f"{row.label} has no metrics.jsonl: it has no curves, only its "
                              "recorded results.")
    caption = (f"Each run in its own colour against {x}s: training dashed, validation solid, "
               "the final test a star. Training losses include any label smoothing.")
    page.sections.append(Section("curves", "Curves", figure(png, "the runs' loss and accuracy "
                                                            "curves overlaid", caption, FIGURE)))
    recipes = recipe_table(rows)
    if recipes:
        page.sections.append(Section("recipes", "By recipe", table(*_numeric(*recipes, first=1))))
    body = table(*_numeric(*run_table(rows), first=4))
    body += paragraph("Validation: each run's last validation record; test: its test accuracy, "
                      "measured once, at its end; training: first step to last, without data "
                      "loading, validation or checkpoints.")
    body += table(["run", "folder"], [(r.label, str(r.run.folder)) for r in rows])
    page.sections.append(Section("runs", "Runs", body))
    return page.render()

"""A run's report: read the run, measure the model once, draw the figures, write the page.

`write_report(RUN_DIR)` writes `report.html` (figures embedded) and the same figures as PNG
files in `figures/`, into the run folder or, with `out`, into another folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mnistlab
from mnistlab.checkpoint import class_names, shipped_dir
from mnistlab.device import resolve_device
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import data_folder, data_line
from mnistlab.fileio import atomic_write_bytes, atomic_write_text
from mnistlab.models import format_summary
from mnistlab.report import figures as draw
from mnistlab.report.analysis import Analysis, Filters, analyse, first_layer
from mnistlab.report.html import Page, Section, Tile, figure, num, paragraph, pre, table
from mnistlab.report.run import Run, open_run, output_dir
from mnistlab.report.tensorboard import TensorBoardLogger
from mnistlab.training.progress import format_duration

PAGE = "report.html"
FIGURES = "figures"


@dataclass
class ReportResult:
    run: Run
    page: Path
    figures: list[Path]
    analysis: Analysis | None
    tensorboard: Path | None
    seconds: float


def write_report(target: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 device: str = "auto", data_dir: str | None = None,
                 tensorboard: bool = False) -> ReportResult:
    started = time.perf_counter()
    run = open_run(target, resolve_device(device))
    dest = output_dir(run, out)
    # without the tensorboard package, the error comes now, before the figures are drawn
    logger = TensorBoardLogger(dest) if tensorboard else None
    analysis = _analyse(run, data_dir)
    filters = first_layer(run.model)
    figures_started = time.perf_counter()
    pngs = _figures(run, analysis, filters)
    figures_seconds = time.perf_counter() - figures_started
    page = _page(run, analysis, filters, pngs, figures_seconds, dest, out)
    written = []
    for name, png in pngs.items():
        atomic_write_bytes(dest / FIGURES / name, png)
        written.append(dest / FIGURES / name)
    for name in set(FIGURE_NAMES) - pngs.keys():  # an earlier report's, not this one's
        with contextlib.suppress(FileNotFoundError):
            (dest / FIGURES / name).unlink()
    atomic_write_text(dest / PAGE, page)
    events = None
    if logger is not None and run.records:
        with logger:
            logger.write(run.records)
        events = logger.folder
    return ReportResult(run, dest / PAGE, written, analysis, events, time.perf_counter() - started)


def _class_names(run: Run, classes: int) -> list[str]:
    names = run.meta.get("class_names")
    if isinstance(names, list) and len(names) == classes:
        return [str(n) for n in names]
    return [str(i) for i in range(classes)]


def _analyse(run: Run, data_dir: str | None) -> Analysis | None:
    """The model on the test split, or, for an unfinished run, on the validation split where
    its recipe has one: a test accuracy is measured once, at the end of the schedule."""
    complete = run.meta.get("complete", True)
    split = "test"
    if not complete:
        if run.section("train").get("split") == "train":
            split = "validation"
            run.notes.append("The figures of the model below are on the validation split: the "
                             "test split is kept for the end of the run.")
        else:
            run.notes.append("The figures of the model below are on the test split, for the "
                             "weights of an unfinished run.")
    dataset = run.section("data").get("dataset") or "mnist"
    folder, origin = data_folder(data_dir, run.meta)
    try:
        analysis = analyse(run.model, split=split, dataset=dataset, data_dir=folder,
                           device=next(run.model.parameters()).device,
                           dropout_at_test=bool(run.meta.get("dropout_at_test", False)),
                           classes=class_names(run.meta))
    except MnistlabError as e:
        if data_dir:  # the user named the data: that it cannot be read is the error
            raise
        run.notes.append(f"The {split} split could not be loaded ({e}), so the model was not "
                         "evaluated; give the dataset's folder with --data-dir.")
        return None
    if folder:  # not the dataset the recipe names: say which files the figures come from
        run.notes.append(f"The model is measured {data_line(folder, origin)}.")
    return analysis


# every figure a report may draw: one it does not draw this time is removed from figures/, so
# that the folder holds what the page shows (a run's log deleted since, say)
FIGURE_NAMES = ("curves.png", "confusion.png", "per-class-accuracy.png", "mistakes.png",
                "first-layer.png")


def _figures(run: Run, analysis: Analysis | None, filters: Filters | None) -> dict[str, bytes]:
    pngs = {}
    if run.records:
        pngs["curves.png"] = draw.curves_png([(run.name, run.curves)])
    if analysis is not None:
        names = _class_names(run, len(analysis.metrics.confusion))
        pngs["confusion.png"] = draw.confusion_png(analysis.metrics.confusion, names)
        pngs["per-class-accuracy.png"] = draw.per_class_png(analysis.metrics.confusion, names)
        pngs["mistakes.png"] = draw.mistakes_png(analysis.mistakes, names)
    if filters is not None:
        pngs["first-layer.png"] = draw.filters_png(filters)
    return pngs


# ---- the page -----------------------------------------------------------------------------


def _page(run: Run, analysis: Analysis | None, filters: Filters | None, pngs: dict[str, bytes],
          figures_seconds: float, dest: Path, out: str | os.PathLike | None) -> str:
    meta, recipe = run.meta, run.recipe
    model = meta.get("model") or {}
    model_text = str(model.get("name", "?"))
    if model.get("args"):
        model_text += " " + ", ".join(f"{k}={json.dumps(v)}" for k, v in model["args"].items())
    complete = meta.get("complete", True)
    page = Page(
        title=f"{run.name}: mnistlab report",
        heading=run.name,
        subtitle=" — ".join(filter(None, [str(recipe.get("name", "")),
                                          str(recipe.get("description", ""))])),
        chips=[f"model {model_text}", f"seed {meta.get('seed', '?')}",
               f"dataset {run.section('data').get('dataset', 'mnist')}",
               f"trained on {meta.get('device', '?')}"
               + (f" x {meta['processes']} processes" if (meta.get("processes") or 1) > 1 else ""),
               "complete" if complete else f"unfinished: step {meta.get('step')} of {meta.get('total_steps')}"],
        notes=_measure_notes(run, analysis) + run.notes,
        footer=f"Written by mnistlab {mnistlab.__version__} on {time.strftime('%Y-%m-%d %H:%M')}. "
               f"Write it again with: mnistlab report {run.name if shipped_dir(run.name) == run.folder else run.folder}"
               + (f" --out {dest}" if out is not None else ""),
    )
    page.tiles = _tiles(run, analysis)
    curves = run.curves
    if "curves.png" in pngs:
        text = ("Training loss and accuracy are averaged over the steps since the previous point "
                f"(every {run.section('train').get('log_every', '?')} steps and at each epoch's end)")
        if curves.validation:
            text += "; validation is measured at the end of each epoch"
        if curves.test:
            text += "; the test once, at the end"
        smoothing = run.section("train").get("label_smoothing") or 0
        if smoothing:
            text += (f". The training loss includes the label-smoothing term ({smoothing:g}); "
                     "the validation and test losses are the plain cross-entropy")
        page.sections.append(Section("curves", "Training curves",
                                     _figure(pngs, "curves.png", "training and validation loss and "
                                             "accuracy against steps", text + ".")))
    if analysis is not None:
        page.sections += _class_sections(run, analysis, pngs)
    if filters is not None:
        page.sections.append(Section("first-layer", "First layer", _figure(
            pngs, "first-layer.png", f"the weights of {filters.layer}",
            "Each tile is one filter, scaled to its largest weight: red positive, blue negative.")))
    page.sections.append(Section("model", "Model", pre(format_summary(run.model, str(model.get("name", ""))))))
    if recipe:
        page.sections.append(Section("recipe", "Recipe", paragraph(
            "As TOML: saved to a file, it trains the same run again with "
            f"mnistlab train --recipe FILE.toml --seed {meta.get('seed', 0)}.")
            + pre(recipe_toml(recipe))))
    page.sections.append(Section("timings", "Timings and versions",
                                 table(None, _timings(run, analysis, figures_seconds))))
    return page.render()


def _measure_notes(run: Run, analysis: Analysis | None) -> list[str]:
    notes = []
    if analysis is not None and analysis.dropout_at_test:
        notes.append("Dropout is left on at test time, as this tutorial's printed code does "
                     "(measured here with a fixed random seed).")
    recorded = run.metrics.get("test", {}).get("accuracy")
    if (analysis is not None and analysis.split == "test" and isinstance(recorded, (int, float))
            and abs(recorded - analysis.metrics.accuracy) > 1e-9 and not analysis.dropout_at_test):
        notes.append(f"The test accuracy measured now, {100 * analysis.metrics.accuracy:.2f}%, "
                     f"differs from the {100 * recorded:.2f}% recorded when the run ended.")
    return notes


def _tiles(run: Run, analysis: Analysis | None) -> list[Tile]:
    tiles = []
    metrics = run.metrics
    if analysis is not None:
        m = analysis.metrics
        tiles.append(Tile(f"{analysis.split.capitalize()} accuracy", f"{100 * m.accuracy:.2f}%",
                          f"loss {m.loss:.4f} on {m.count:,} images"))
        tiles.append(Tile("Mistakes", f"{analysis.errors:,}", f"of {m.count:,} {analysis.split} images"))
    elif isinstance(metrics.get("test"), dict):
        tiles.append(Tile("Test accuracy (recorded)", f"{100 * metrics['test']['accuracy']:.2f}%",
                          f"loss {metrics['test']['loss']:.4f}"))
    validation = run.curves.validation
    if validation:
        tiles.append(Tile("Validation accuracy", f"{100 * validation[-1]['accuracy']:.2f}%",
                          f"at step {validation[-1]['step']:,}"))
    elif isinstance(metrics.get("validation"), dict) and (analysis is None or analysis.split != "validation"):
        tiles.append(Tile("Validation accuracy", f"{100 * metrics['validation']['accuracy']:.2f}%",
                          "recorded"))
    seconds = metrics.get("train_seconds")
    if seconds is not None:
        steps = run.meta.get("step")
        detail = f"{steps:,} steps" if isinstance(steps, int) else ""
        rate = _images_per_second(run)
        if rate:
            detail += f", {rate:,.0f} images/s"
        tiles.append(Tile("Training time", format_duration(seconds), detail))
    claim = run.recipe.get("claim")
    if isinstance(claim, dict) and isinstance(claim.get("accuracy"), (int, float)):
        detail = ""
        if analysis is not None and analysis.split == "test":
            detail = f"this run: {100 * (analysis.metrics.accuracy - claim['accuracy']):+.2f} points"
        tiles.append(Tile("The tutorial claims", f"{100 * claim['accuracy']:.2f}%",
                          detail))
    return tiles


def _class_sections(run: Run, analysis: Analysis, pngs: dict[str, bytes]) -> list[Section]:
    m = analysis.metrics
    names = _class_names(run, len(m.confusion))
    rows = []
    for i, row in enumerate(m.confusion):
        total = sum(row)
        others = sorted(((count, j) for j, count in enumerate(row) if j != i and count), reverse=True)
        confused = ", ".join(f"{names[j]} ({count})" for count, j in others[:3]) or "—"
        rows.append((names[i], num(f"{total:,}"), num(f"{row[i]:,}"),
                     num(f"{100 * row[i] / max(1, total):.2f}%"), confused))
    on = f"on the {m.count:,} {analysis.split} images"
    classes = Section("classes", "Confusion matrix and accuracy per class", (
        '<div class="columns">'
        + _figure(pngs, "confusion.png", "confusion matrix heat map",
                  f"Rows: the true class; columns: the predicted one; {on}.")
        + _figure(pngs, "per-class-accuracy.png", "accuracy per class bar chart",
                  "The worst class in red.")
        + "</div>"
        + table(["class", num("images"), num("correct"), num("accuracy"), "most often read as"], rows)))
    listed = len(analysis.mistakes)
    text = (f"The {listed} most confident of the model's {analysis.errors:,} mistakes {on}, "
            "each with its true class, the class predicted and the model's confidence in it"
            if analysis.errors else f"The model makes no mistake {on}")
    index_rows = [(num(str(k + 1)), num(str(x.index)), names[x.label], names[x.predicted],
                   num(f"{100 * x.confidence:.1f}%")) for k, x in enumerate(analysis.mistakes)]
    details = ("<details><summary>their indices in the split</summary>"
               + table([num("#"), num("index"), "true", "predicted", num("confidence")], index_rows)
               + "</details>") if index_rows else ""
    mistakes = Section("mistakes", "Mistakes", _figure(
        pngs, "mistakes.png", "a grid of misclassified images", text + ".") + details)
    return [classes, mistakes]


def _figure(pngs: dict[str, bytes], name: str, alt: str, caption: str) -> str:
    """The figure drawn as `name` (the file written beside the page), embedded in the page."""
    return figure(pngs[name], alt, caption, name)


def _images_per_second(run: Run) -> float | None:
    train = run.section("train")
    seconds = run.meta.get("train_seconds")
    steps, batch = run.meta.get("step"), train.get("batch_size")
    every = run.section("quirks").get("update_every") or 1
    if not all(isinstance(v, (int, float)) and v > 0 for v in (seconds, steps, batch)):
        return None
    return (steps // every) * batch / seconds


def _timings(run: Run, analysis: Analysis | None, figures_seconds: float) -> list[tuple]:
    meta = run.meta
    rows: list[tuple] = []
    seconds = meta.get("train_seconds")
    if isinstance(seconds, (int, float)):
        rows.append(("training", f"{format_duration(seconds)} ({seconds:.1f} s)",
                     "first step to last, without data loading, validation or checkpoints"))
    if isinstance(meta.get("step"), int):
        rows.append(("steps", f"{meta['step']:,} of {meta.get('total_steps', meta['step']):,}",
                     f"batch size {run.section('train').get('batch_size', '?')}"))
    rate = _images_per_second(run)
    if rate:
        rows.append(("throughput", f"{rate:,.0f} images/s", "training images per second of training"))
    times = [r["time"] for r in run.records or [] if isinstance(r.get("time"), (int, float))]
    if len(times) > 1:
        rows.append(("logged", f"{_when(times[0])} to {_when(times[-1])}",
                     f"{format_duration(times[-1] - times[0])} from the first log record to the last"))
    processes = meta.get("processes") or 1
    rows.append(("device", str(meta.get("device", "?")) + (f" x {processes}" if processes > 1 else ""),
                 "where it was trained"))
    if analysis is not None:
        rows.append(("this report: evaluation", f"{analysis.seconds:.2f} s",
                     f"{analysis.metrics.count:,} {analysis.split} images, loading included"))
    rows.append(("this report: figures", f"{figures_seconds:.2f} s", "drawing the PNG files"))
    versions = meta.get("versions") or {}
    if isinstance(versions, dict) and versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items()),
                     "when it was trained"))
    return rows


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def recipe_toml(recipe: dict[str, Any]) -> str:
    """A recorded recipe (Recipe.to_dict) as the TOML file it could have come from: the top
    level's strings, then one table a section, the model's arguments among its keys."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return repr(v)

    def keys(table: dict[str, Any]) -> list[str]:
        return [f"{_toml_key(k)} = {value(v)}" for k, v in table.items()
                if v is not None and not isinstance(v, dict)]

    lines = keys(recipe)
    for name, section in recipe.items():
        if isinstance(section, dict):
            items = dict(section)
            if name == "model":  # [model] holds the model's arguments beside its name
                items.update(items.pop("args", None) or {})
            lines += ["", f"[{_toml_key(name)}]", *keys(items)]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key, ensure_ascii=False)

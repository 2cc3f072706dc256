"""The report's figures, each drawn to PNG bytes with matplotlib's Agg renderer.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no global state, no
window, no GUI backend to choose, and safe beside a server's threads.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnistlab.report.analysis import Filters, Mistake
from mnistlab.report.run import Curves

DPI = 100
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.labelsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.color": "#e3e3e3", "grid.linewidth": 0.8, "legend.frameon": False,
    "legend.fontsize": 9,
}
TRAIN, VALIDATION, TEST = "#1f77b4", "#ff7f0e", "#2ca02c"


def _plain(text: str) -> str:
    """Text shown as written: a `$` in a folder or class name would start matplotlib's maths."""
    return str(text).replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # no "Software" entry: the same figure gives the same bytes whatever matplotlib drew it
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    return Figure(figsize=(width, height), layout=layout)


def _styled(draw):
    """Run a drawing function under the report's style (rcParams are read as artists are made)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


# ---- training curves ----------------------------------------------------------------------


def _x(records: list[dict], x: str) -> list[float]:
    return [r.get(x, r["step"]) if x == "epoch" else r["step"] for r in records]


def _accuracy_floor(values: list[float]) -> float:
    """A lower limit that shows where the accuracy ends up, not where it started."""
    late = sorted(values)[len(values) // 5:] or values
    low = 100 * min(late)
    step = 1 if 100 - low <= 10 else 5 if 100 - low <= 40 else 10
    return max(0.0, math.floor((low - 0.5 * step) / step) * step)


PALETTE = [f"C{i}" for i in range(10)]  # several runs: a colour for each


@_styled
def curves_png(runs: Sequence[tuple[str, Curves]], *, x: str = "step",
               learning_rate: bool = True) -> bytes:
    """Loss and accuracy against steps (or epochs): training, validation and the final test.

    One run: a colour for each of train, validation and test. Several: a colour for each run,
    training dashed and thin, validation solid, the test a star at the end."""
    single = len(runs) == 1
    show_lr = learning_rate and single and any("lr" in r for r in runs[0][1].train)
    fig = _figure(11 if show_lr else 10, 4.2 if single else 5.2)
    axes = fig.subplots(1, 3 if show_lr else 2)
    loss_ax, acc_ax = axes[0], axes[1]
    accuracies: list[float] = []
    for n, (_label, curves) in enumerate(runs):
        colour = PALETTE[n % len(PALETTE)]
        accuracies += _plot_run(loss_ax, acc_ax, curves, x, None if single else colour)
    xlabel = "epoch" if x == "epoch" else "step"
    _loss_axis(loss_ax, xlabel)
    acc_ax.set(title="Accuracy", xlabel=xlabel, ylabel="accuracy (%)")
    if accuracies:
        acc_ax.set_ylim(_accuracy_floor(accuracies), 100.4)
    if show_lr:
        _plot_learning_rate(axes[2], runs[0][1].train, x, xlabel)
    if single:
        for ax in (loss_ax, acc_ax):
            if ax.get_lines():
                ax.legend(loc="best")
    else:
        _runs_legend(fig, [label for label, _ in runs])
    if not any(ax.get_lines() for ax in axes):
        for ax in axes:
            ax.text(0.5, 0.5, "no training log", ha="center", va="center",
                    transform=ax.transAxes, color="#888888")
    return _png(fig)


def _plot_run(loss_ax, acc_ax, curves: Curves, x: str, colour: str | None) -> list[float]:
    """One run's training and validation lines and its test star on the loss and accuracy
    axes; `colour` None for the only run (a colour for each kind, each in the legend), else
    the run's colour. Returns the accuracies drawn."""
    single = colour is None
    styles = {
        "train": dict(color=TRAIN if single else colour, lw=1.2 if single else 0.9,
                      ls="-" if single else "--", alpha=0.9 if single else 0.55),
        "validation": dict(color=VALIDATION if single else colour, lw=1.8, marker="o", ms=3.5),
    }
    accuracies: list[float] = []
    for kind in ("train", "validation"):
        records = getattr(curves, kind)
        if not records:
            continue
        name = kind if single else None  # several runs: one legend entry a run, below
        xs = _x(records, x)
        loss_ax.plot(xs, [r["loss"] for r in records], label=name, **styles[kind])
        acc_ax.plot(xs, [100 * r["accuracy"] for r in records], label=name, **styles[kind])
        accuracies += [r["accuracy"] for r in records]
    if curves.test is not None:
        at = curves.test.get("step", curves.last_step) if x == "step" else max(
            _x(curves.train + curves.validation, x), default=0)
        star = dict(color=TEST if single else colour, marker="*", ms=12, ls="none", zorder=5)
        name = f"test {100 * curves.test['accuracy']:.2f}%" if single else None
        loss_ax.plot([at], [curves.test["loss"]], **star, label="test" if single else None)
        acc_ax.plot([at], [100 * curves.test["accuracy"]], **star, label=name)
        accuracies.append(curves.test["accuracy"])
    return accuracies


def _loss_axis(ax, xlabel: str) -> None:
    """Titles, and a log scale with plain numbers where every loss drawn is above zero."""
    ax.set(title="Loss", xlabel=xlabel, ylabel="cross-entropy")
    losses = [y for line in ax.get_lines() for y in line.get_ydata()]
    if losses and min(losses) > 0:
        ax.set(yscale="log", ylabel="cross-entropy (log scale)")
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if max(losses) / min(losses) < 20 else
                                     ticker.NullFormatter())


def _plot_learning_rate(ax, records: list[dict], x: str, xlabel: str) -> None:
    ax.plot(_x(records, x), [r.get("lr", float("nan")) for r in records], color="#7f7f7f")
    ax.set(title="Learning rate", xlabel=xlabel, ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _runs_legend(fig: Figure, labels: list[str]) -> None:
    """Several runs: a colour for each run, then what each line style means."""
    handles = [Line2D([], [], color=PALETTE[n % len(PALETTE)], lw=2, label=_plain(label))
               for n, label in enumerate(labels)]
    handles += [Line2D([], [], color="#555555", ls="--", lw=0.9, label="training"),
                Line2D([], [], color="#555555", lw=1.8, marker="o", ms=3.5, label="validation"),
                Line2D([], [], color="#555555", marker="*", ms=10, ls="none", label="test")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)))


# ---- the model on a split -----------------------------------------------------------------


@_styled
def confusion_png(confusion: list[list[int]], class_names: Sequence[str]) -> bytes:
    """The confusion matrix as a heat map on a log colour scale, every count written in."""
    class_names = [_plain(name) for name in class_names]
    matrix = np.asarray(confusion)
    n = len(matrix)
    fig = _figure(6.4, 5.6)
    ax = fig.subplots()
    ax.grid(False)
    shown = np.ma.masked_where(matrix == 0, matrix)
    cmap = colors.LinearSegmentedColormap.from_list(
        "report", ["#eef4fb", "#6baed6", "#08306b"]).with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, norm=colors.LogNorm(vmin=1, vmax=max(2, matrix.max())))
    threshold = math.sqrt(max(2, matrix.max()))
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, f"{value:,}" if value < 10_000 else f"{value / 1000:.0f}k",
                    ha="center", va="center", fontsize=8 if n <= 10 else 6,
                    color="white" if value >= threshold else "#08306b")
    ax.set_xticks(range(n), class_names)
    ax.set_yticks(range(n), class_names)
    ax.tick_params(length=0)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set(title="Confusion matrix", xlabel="predicted class", ylabel="true class")
    fig.colorbar(image, ax=ax, shrink=0.85, label="images (log scale)")
    return _png(fig)


@_styled
def per_class_png(confusion: list[list[int]], class_names: Sequence[str]) -> bytes:
    """Each class's accuracy as a bar, with its value and the class's image count."""
    class_names = [_plain(name) for name in class_names]
    matrix = np.asarray(confusion)
    counts = matrix.sum(1)
    accuracy = 100 * np.diag(matrix) / np.maximum(1, counts)
    fig = _figure(7.5, 3.8)
    ax = fig.subplots()
    ax.grid(axis="x", visible=False)
    bars = ax.bar(range(len(matrix)), accuracy, color="#4c8dc9", width=0.7)
    worst = int(np.argmin(accuracy))
    bars[worst].set_color("#d9534f")
    low = float(accuracy.min())
    bottom = max(0.0, math.floor(low - max(0.5, (100 - low) * 0.4)))
    ax.set_ylim(bottom, 100 + (100 - bottom) * 0.12)
    for i, value in enumerate(accuracy):
        ax.text(i, value, f"{value:.1f}" if value < 99.95 else "100", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(matrix)), [f"{name}\n({count:,})" for name, count in
                                       zip(class_names, counts)])
    ax.set(title="Accuracy per class", xlabel="true class (images)", ylabel="accuracy (%)")
    return _png(fig)


@_styled
def mistakes_png(mistakes: Sequence[Mistake], class_names: Sequence[str], *,
                 columns: int = 10) -> bytes:
    """The mistakes as a grid of images, each captioned with its true and predicted class and
    the model's confidence, the most confident first (reading order)."""
    class_names = [_plain(name) for name in class_names]
    rows = max(1, math.ceil(len(mistakes) / columns))
    tile, band = 28, 14  # pixels of image, and of caption under it
    canvas = np.full((rows * (tile + band), columns * (tile + 4)), np.nan)
    fig = _figure(columns * 0.95, rows * 1.25 + 0.4, layout=None)
    ax = fig.add_axes((0, 0, 1, 1 - 0.4 / (rows * 1.25 + 0.4)))
    ax.axis("off")
    for k, m in enumerate(mistakes):
        r, c = divmod(k, columns)
        top, left = r * (tile + band), c * (tile + 4) + 2
        canvas[top : top + tile, left : left + tile] = m.image
    # dark ink on white paper, the tiles on a grey table
    cmap = colors.ListedColormap(np.linspace(1, 0, 256)[:, None].repeat(3, 1)).with_extremes(
        bad="#e9e9e9")
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    for k, m in enumerate(mistakes):
        r, c = divmod(k, columns)
        ax.text(c * (tile + 4) + 2 + tile / 2, r * (tile + band) + tile + 1,
                f"{class_names[m.label]}→{class_names[m.predicted]}  {100 * m.confidence:.0f}%",
                ha="center", va="top", fontsize=7.5, color="#b02a2a")
    if not mistakes:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Mistakes, most confident first (true → predicted, confidence)",
                 fontsize=11, fontweight="bold")
    return _png(fig)


@_styled
def filters_png(filters: Filters, *, columns: int | None = None) -> bytes:
    """One tile per filter, each scaled to its own largest absolute weight: red positive,
    blue negative, white zero."""
    weights = filters.weights
    count, h, w = weights.shape
    columns = columns or min(count, 16 if h <= 8 else 5)
    rows = math.ceil(count / columns)
    gap = 1
    canvas = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for k in range(count):
        r, c = divmod(k, columns)
        scale = np.abs(weights[k]).max() or 1.0
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = weights[k] / scale
    size = 0.5 if h <= 8 else 1.6
    fig = _figure(max(4.0, columns * size), rows * size + 0.6)
    ax = fig.subplots()
    ax.axis("off")
    cmap = colors.LinearSegmentedColormap.from_list(
        "signed", ["#2166ac", "#f7f7f7", "#b2182b"]).with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    what = (f"{count} kernels of {h}x{w}" if filters.kind == "Conv2d"
            else f"{count} units' weights over the {h}x{w} pixels")
    ax.set_title(f"First layer: {filters.layer} ({filters.kind}), {what}")
    return _png(fig)

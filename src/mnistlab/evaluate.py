"""Evaluate a checkpoint on a split: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistlab.checkpoint import load_model, resolve_checkpoint
from mnistlab.data.splits import load_split
from mnistlab.device import resolve_device
from mnistlab.metrics import Metrics, compute_metrics


@dataclass
class Evaluation:
    checkpoint: Path
    split: str
    dataset: str
    metrics: Metrics
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "split": self.split, "dataset": self.dataset,
                "model": self.meta.get("model"), **self.metrics.to_dict()}


def evaluate_checkpoint(target: str | Path, *, split: str = "test", device: str = "auto",
                        data_dir: str | None = None, dropout_at_test: bool | None = None) -> Evaluation:
    """Evaluate a checkpoint; dropout stays on at test time where its recipe said so, unless
    `dropout_at_test` says otherwise."""
    dev = resolve_device(device)
    model, meta = load_model(target, dev)
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    dataset = (recipe.get("data") or {}).get("dataset", "mnist")
    data = load_split(split, dataset, data_dir or meta.get("data_dir"), dev)
    if dropout_at_test is None:
        dropout_at_test = bool(meta.get("dropout_at_test", False))
    metrics = compute_metrics(model, data.images, data.labels, dropout_at_test=dropout_at_test)
    meta = {**meta, "dropout_at_test": dropout_at_test}
    return Evaluation(resolve_checkpoint(target), split, dataset, metrics, meta)


def format_evaluation(ev: Evaluation) -> str:
    m = ev.metrics
    names = ev.meta.get("class_names") or [str(i) for i in range(len(m.confusion))]
    lines = [
        f"{ev.checkpoint}: {ev.meta.get('model', {}).get('name', '?')} on {ev.dataset} {ev.split} "
        f"({m.count:,} images)",
        f"accuracy {100 * m.accuracy:.2f}%  ({m.count - round(m.accuracy * m.count):,} errors)  "
        f"loss {m.loss:.4f}",
    ]
    if ev.meta.get("dropout_at_test"):
        lines.append("dropout left on at test time, as the tutorial's printed code does")
    lines += ["", "per-class accuracy:"]
    width = max(len(str(n)) for n in names)
    for name, acc, row in zip(names, m.per_class_accuracy, m.confusion):
        lines.append(f"  {str(name):>{width}}  {100 * acc:6.2f}%  of {sum(row):,}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    cell = max(4, max(len(str(v)) for row in m.confusion for v in row) + 1)
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(m.confusion))))
    for i, row in enumerate(m.confusion):
        lines.append(f"  {i:>{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)

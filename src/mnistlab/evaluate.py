"""Evaluate a checkpoint on a split: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.checkpoint import class_names, load_model, resolve_checkpoint
from mnistlab.data.imagefolder import is_image_folder
from mnistlab.data.splits import Split, load_split
from mnistlab.device import resolve_device
from mnistlab.errors import MnistlabError
from mnistlab.metrics import Measured, Metrics, compute_metrics


@dataclass
class Evaluation(Measured):
    checkpoint: Path
    split: str
    dataset: str
    metrics: Metrics
    meta: dict[str, Any]
    data_dir: str | None = None  # the folder of IDX files measured on; None: the dataset's own
    data_origin: str = ""  # why that folder: "--data-dir", or the checkpoint's record of it

    def __repr__(self) -> str:
        return (f"Evaluation({self.split}: accuracy {100 * self.accuracy:.2f}%, "
                f"loss {self.loss:.4f}, {self.metrics.count:,} images)")

    def __str__(self) -> str:
        return format_evaluation(self)

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "split": self.split, "dataset": self.dataset,
                "data_dir": self.data_dir, "model": self.meta.get("model"),
                **self.metrics.to_dict()}


TRAINED_ON = "the folder this model was trained on"


def data_folder(data_dir: str | None, meta: dict[str, Any]) -> tuple[str | None, str]:
    """The folder of IDX files to measure a model on, and why: `--data-dir` when given, else
    the folder its checkpoint says it was trained on, else none (the recipe's dataset)."""
    if data_dir is not None:  # "" too: the current folder, as everywhere else
        return data_dir, "--data-dir"
    recorded = meta.get("data_dir")
    return (recorded, TRAINED_ON) if recorded else (None, "")


def data_line(folder: str, origin: str) -> str:
    """`on the IDX files in DIR (why)`: said wherever a model is measured on such a folder."""
    kind = "images" if is_image_folder(Path(folder)) else "IDX files"
    return f"on the {kind} in {folder} ({origin})"


def evaluate_checkpoint(target: str | Path, *, split: str = "test", device: str = "auto",
                        data_dir: str | None = None, dropout_at_test: bool | None = None) -> Evaluation:
    """Evaluate a checkpoint; dropout stays on at test time where its recipe said so, unless
    `dropout_at_test` says otherwise."""
    model, meta = load_model(target, resolve_device(device))
    return evaluate_model(model, meta, resolve_checkpoint(target), split=split,
                          data_dir=data_dir, dropout_at_test=dropout_at_test, named=str(target))


def evaluate_model(model: nn.Module, meta: dict[str, Any], path: Path, *, split: str = "test",
                   data_dir: str | None = None, dropout_at_test: bool | None = None,
                   named: str | None = None) -> Evaluation:
    """Evaluate a model loaded from the checkpoint at `path` (which the user `named`, as a run
    folder, say), on the device its weights are on. Any module that maps MNIST's float input
    to log-probabilities or logits will do."""
    dev = next(model.parameters(), torch.empty(0)).device
    data, dataset, folder, origin = own_split(meta, split, data_dir, dev, named or str(path))
    if dropout_at_test is None:
        dropout_at_test = bool(meta.get("dropout_at_test", False))
    metrics = compute_metrics(model, data.images, data.labels,
                              num_classes=len(class_names(meta)),
                              dropout_at_test=dropout_at_test)
    meta = {**meta, "dropout_at_test": dropout_at_test}
    return Evaluation(path, split, dataset, metrics, meta, folder, origin)


def own_split(meta: dict[str, Any], split: str, data_dir: str | None, device: torch.device,
              named: str) -> tuple[Split, str, str | None, str]:
    """A split of the data the checkpoint `named` (with metadata `meta`) was trained on, or of
    `data_dir`: the split, its dataset's name, its folder and why that folder (data_folder)."""
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    dataset = (recipe.get("data") or {}).get("dataset", "mnist")
    folder, origin = data_folder(data_dir, meta)
    if folder is not None and is_image_folder(Path(folder)):
        dataset = Path(folder).name  # its classes are the folder's, not the recipe dataset's
    try:
        return load_split(split, dataset, folder, device, classes=class_names(meta)), dataset, folder, origin
    except MnistlabError as e:
        if origin != TRAINED_ON:
            raise
        # the user never named this folder: say where it came from, and how to name another
        raise MnistlabError(f"{e} (the data folder {named} was trained on, as its checkpoint "
                            "records: give another with --data-dir)") from None


def trained_on_note(meta: dict[str, Any], split: str, who: str = "this model") -> list[str]:
    """A line saying that `split` holds images the model trained on, where its recipe trained
    on the whole training set: its validation images are then no held-out measure."""
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    train = recipe.get("train")
    trained = train.get("split") if isinstance(train, dict) else None
    if trained == "train-full" and split in ("validation", "train"):
        return [f"note: {who} trained on these images (its recipe's [train] split is "
                f"train-full, which holds the {split} split): not a measure of unseen digits"]
    return []


def format_evaluation(ev: Evaluation) -> str:
    m = ev.metrics
    names = ev.meta.get("class_names") or [str(i) for i in range(len(m.confusion))]
    lines = [
        f"{ev.checkpoint}: {ev.meta.get('model', {}).get('name', '?')} on {ev.dataset} {ev.split} "
        f"({m.count:,} images)",
        *([data_line(ev.data_dir, ev.data_origin)] if ev.data_dir else []),
        f"accuracy {100 * m.accuracy:.2f}%  ({m.errors_text()})  "
        f"loss {m.loss:.4f}",
    ]
    if ev.meta.get("dropout_at_test"):
        lines.append("dropout left on at test time, as the tutorial's printed code does")
    lines += trained_on_note(ev.meta, ev.split)
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

"""Evaluate several trained models as one: the average of their predicted probabilities.

The committee is itself a module whose output is the log of the averaged probabilities, so the
same metrics code measures it as any single model: cross-entropy of those log-probabilities is
exactly the committee's loss, and their argmax its vote.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.checkpoint import class_names, load_model, resolve_checkpoint
from mnistlab.device import resolve_device
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import data_folder, data_line, own_split, trained_on_note
from mnistlab.metrics import Measured, Metrics, compute_metrics


class Committee(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probabilities.clamp_min(1e-12).log()


@dataclass
class EnsembleResult(Measured):
    split: str
    dataset: str
    members: list[tuple[Path, Metrics]]
    metrics: Metrics
    data_dir: str | None = None  # the folder measured on: --data-dir, or the one trained on
    data_origin: str = "--data-dir"  # which of the two (evaluate.data_folder)
    metas: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the members' records

    def __repr__(self) -> str:
        mean = statistics.fmean(m.accuracy for _, m in self.members)
        count = len(self.members)
        return (f"Ensemble({count} model{'s' * (count != 1)} on {self.split}: accuracy "
                f"{100 * self.accuracy:.2f}%, members' mean {100 * mean:.2f}%)")

    def __str__(self) -> str:
        return format_ensemble(self)

    def to_dict(self) -> dict[str, Any]:
        accuracies = [m.accuracy for _, m in self.members]
        return {
            "split": self.split, "dataset": self.dataset, "data_dir": self.data_dir,
            "members": [{"checkpoint": str(p), "accuracy": m.accuracy, "loss": m.loss}
                        for p, m in self.members],
            "member_accuracy_mean": statistics.fmean(accuracies),
            "member_accuracy_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "ensemble": self.metrics.to_dict(),
        }


def evaluate_ensemble(targets: list[str | Path], *, split: str = "test", device: str = "auto",
                      data_dir: str | None = None) -> EnsembleResult:
    if not targets:
        raise MnistlabError("an ensemble needs at least one checkpoint")
    _refuse_repeats(targets)
    dev = resolve_device(device)
    models, metas, datasets, classes = [], [], set(), set()
    for target in targets:
        model, meta = load_model(target, dev)
        recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
        datasets.add((recipe.get("data") or {}).get("dataset", "mnist"))
        classes.add(tuple(class_names(meta)))
        models.append(model.eval())  # channels last, as load_model gives it
        metas.append(meta)
    if len(datasets) > 1:
        raise MnistlabError(f"these checkpoints were trained on different datasets "
                            f"({', '.join(sorted(datasets))}); an ensemble needs one")
    if len(classes) > 1:
        raise MnistlabError("these checkpoints tell different classes apart; an ensemble's "
                            "members share theirs")
    folders = {data_folder(data_dir, meta)[0] for meta in metas}
    if len(folders) > 1:  # none given, and the members were trained on different folders
        raise MnistlabError("these checkpoints were trained on different data folders "
                            f"({', '.join(sorted(str(f) for f in folders))}): give the one to "
                            "measure on with --data-dir")
    # the data the members were trained on (as evaluate measures one), or --data-dir
    data, dataset, folder, origin = own_split(metas[0], split, data_dir, dev, str(targets[0]))
    members = [(resolve_checkpoint(t), compute_metrics(m, data.images, data.labels))
               for t, m in zip(targets, models)]
    metrics = compute_metrics(Committee(models), data.images, data.labels)
    return EnsembleResult(split, dataset, members, metrics, folder, origin, metas)


def _refuse_repeats(targets: list[str | Path]) -> None:
    """One checkpoint named twice (a run folder and its model file, say) would weigh twice."""
    seen: dict[Path, str | Path] = {}
    for target in targets:
        path = resolve_checkpoint(target).resolve()
        if path in seen:
            raise MnistlabError(f"{seen[path]} and {target} are the same checkpoint, which would "
                                "count twice in the average: give each model once")
        seen[path] = target


def format_ensemble(result: EnsembleResult) -> str:
    count = len(result.members)
    lines = [f"{count} model{'s' if count != 1 else ''} on {result.dataset} {result.split} "
             f"({result.metrics.count:,} images)"]
    if result.data_dir:
        lines.append(data_line(result.data_dir, result.data_origin))
    for (path, _), meta in zip(result.members, result.metas):
        lines += trained_on_note(meta, result.split, str(path))
    for path, m in result.members:
        lines.append(f"  {100 * m.accuracy:6.2f}%  {path}")
    accuracies = [m.accuracy for _, m in result.members]
    if len(accuracies) > 1:
        lines.append(f"members: mean {100 * statistics.fmean(accuracies):.2f}% "
                     f"(sd {100 * statistics.stdev(accuracies):.2f})")
    m = result.metrics
    lines.append(f"ensemble (averaged probabilities): accuracy {100 * m.accuracy:.2f}%  "
                 f"({m.errors_text()})  loss {m.loss:.4f}")
    return "\n".join(lines)

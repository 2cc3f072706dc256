"""Accuracy, loss and the confusion matrix of a model over a whole split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.cpu_memory import keep_freed_memory
from mnistlab.data.splits import as_input
from mnistlab.device import sum_dtype


@dataclass
class Metrics:
    accuracy: float
    loss: float  # mean cross-entropy per image
    count: int
    confusion: list[list[int]]  # confusion[true][predicted]

    @property
    def errors(self) -> int:
        return self.count - round(self.accuracy * self.count)

    def errors_text(self) -> str:
        """"26 errors", "1 error": as the commands print it."""
        return f"{self.errors:,} error{'s' * (self.errors != 1)}"

    @property
    def per_class_accuracy(self) -> list[float]:
        return [row[i] / max(1, sum(row)) for i, row in enumerate(self.confusion)]

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "count": self.count,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": self.confusion,
        }


class Measured:
    """What holds the `metrics` of a model on a split: its accuracy and loss, by name."""

    metrics: Metrics

    @property
    def accuracy(self) -> float:
        return self.metrics.accuracy

    @property
    def loss(self) -> float:
        return self.metrics.loss


@torch.inference_mode()
def compute_metrics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                    num_classes: int | None = None, batch_size: int = 256,
                    dropout_at_test: bool = False) -> Metrics:
    """Evaluate `model` on every image, with one host sync at the end. The classes are the
    model's outputs unless `num_classes` says (for no image at all, MNIST's ten).

    Batches of 256 keep the activations in cache: on the 2-core CPU they run twice as many
    images a second as batches of 1024 (see docs/BENCHMARKS.md).
    """
    if labels.device.type == "cpu":
        keep_freed_memory()  # each batch reuses the last one's activations: no page faults
    was_training = model.training
    model.eval()
    if dropout_at_test:  # reproduce a tutorial that left dropout switched on for its test
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()
    device = labels.device
    confusion = None
    loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
    try:
        for start in range(0, len(labels), batch_size):
            x = as_input(images[start : start + batch_size], channels_last=True)
            y = labels[start : start + batch_size]
            logits = model(x).float()
            if confusion is None:
                num_classes = num_classes or logits.shape[1]
                confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").to(loss_sum.dtype)
            confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                        minlength=num_classes * num_classes)
    finally:
        model.train(was_training)
    if confusion is None:
        num_classes = num_classes or 10
        confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    matrix = confusion.view(num_classes, num_classes).cpu()
    count = int(matrix.sum())
    loss = float(loss_sum) / max(1, count)
    return Metrics(
        accuracy=float(matrix.diag().sum()) / max(1, count),
        loss=loss if math.isfinite(loss) else float("inf"),
        count=count,
        confusion=matrix.tolist(),
    )

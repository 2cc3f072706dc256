"""Knowledge distillation: a model learns an ensemble's softened probabilities as well as the
labels (Hinton, Vinyals and Dean 2015), so that one network of the shipped size carries what
several larger or more diverse ones know.

The teachers run on every training batch as the student sees it, distortions included, inside
the step (a CUDA graph captures them with it): their probabilities, each softened by the
temperature, are averaged, and the student's softened log-probabilities are pulled towards
them by the Kullback-Leibler divergence, times the temperature squared so that its gradients
keep their size as the temperature changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.checkpoint import class_names, load_model
from mnistlab.errors import MnistlabError
from mnistlab.recipebook.recipe import DistillSection


class Teachers(nn.Module):
    """The teachers' averaged probabilities at a temperature; they never train."""

    def __init__(self, members: list[nn.Module], temperature: float) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperature = temperature
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        softened = [(m(x).float() / self.temperature).softmax(1) for m in self.members]
        return torch.stack(softened).mean(0)


def load_teachers(spec: DistillSection, classes: list[str], device: torch.device) -> Teachers | None:
    """The recipe's teachers on `device`, in eval mode, checked to tell the run's classes apart;
    None where the recipe names none."""
    if not spec.teachers:
        return None
    members = []
    for path in spec.teachers:
        model, meta = load_model(path, device)  # checked as every load is
        if class_names(meta) != classes:
            raise MnistlabError(f"[distill] teacher {path}: its classes "
                                f"({', '.join(class_names(meta)[:12])}) are not the data's")
        members.append(model.eval())  # channels last, as load_model gives it
    return Teachers(members, spec.temperature)


def distilled_loss(loss: torch.Tensor, logits: torch.Tensor, taught: torch.Tensor,
                   spec: DistillSection, reduction: str) -> torch.Tensor:
    """The labels' loss mixed with the teachers': (1 - weight) * loss + weight * T^2 * KL."""
    t = spec.temperature
    log_student = F.log_softmax(logits.float() / t, dim=1)
    divergence = F.kl_div(log_student, taught, reduction="sum") * t * t
    if reduction == "mean":
        divergence = divergence / len(logits)
    return (1 - spec.weight) * loss + spec.weight * divergence

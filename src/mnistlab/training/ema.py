"""An exponential moving average of a model's weights: the model a run evaluates and saves.

Late in training the weights wander around a minimum with the noise of each batch; their
running average sits nearer its centre and usually generalises a little better. The average
covers the batch-norm statistics too, so that they match the averaged weights. It starts from
the initial weights, so a run must be long enough to forget them (`steps_to_forget`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from mnistlab.checkpoint import load_weights


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        live, average = model.state_dict(), self.model.state_dict()
        # state_dict's tensors share memory with the modules', so these lists stay current
        floats = [k for k, v in live.items() if v.is_floating_point()]
        self._live = [live[k] for k in floats]
        self._average = [average[k] for k in floats]
        self._counters = [(average[k], live[k]) for k, v in live.items() if not v.is_floating_point()]

    def steps_to_forget(self) -> int:
        """Steps after which the initial weights weigh under 1% in the average."""
        return math.ceil(math.log(0.01) / math.log(self.decay))

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average; a few multi-tensor kernels, which a CUDA graph can hold."""
        torch._foreach_lerp_(self._average, self._live, 1.0 - self.decay)

    @torch.no_grad()
    def current(self) -> nn.Module:
        """The averaged model, its integer buffers (batch counts) brought up to date."""
        for average, live in self._counters:
            average.copy_(live)
        return self.model

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{k}": v for k, v in self.model.state_dict().items()}

    def restore(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Load what `tensors()` saved, refusing a misfit (keys without "ema." are ignored)."""
        load_weights(self.model, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")},
                     f"{where} (weight average)")

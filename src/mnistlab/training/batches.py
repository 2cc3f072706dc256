"""Which training images make up each step's batch.

The order is a pure function of (seed, step): every epoch has its own permutation drawn from a
generator seeded by (seed, epoch). A resumed run therefore sees exactly the batches the
uninterrupted run would have seen, with nothing to save but the step.

Two ways of walking the data, as the tutorials do:
- by epochs (Keras' fit): each epoch is cut into batches; the last one may be smaller.
- by steps (TensorFlow's input_data.next_batch): one endless stream through successive
  shuffled epochs, every batch full, a batch at an epoch's end continuing into the next.
"""

from __future__ import annotations

import math

import torch


class BatchPlan:
    def __init__(self, num_examples: int, batch_size: int, *, seed: int,
                 epochs: int | None = None, steps: int | None = None, device: str | torch.device = "cpu"):
        if (epochs is None) == (steps is None):
            raise ValueError("give exactly one of epochs and steps")
        self.n = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.by_epochs = epochs is not None
        self.device = torch.device(device)
        if self.by_epochs:
            self.steps_per_epoch = math.ceil(num_examples / batch_size)
            self.total_steps = epochs * self.steps_per_epoch
        else:
            self.steps_per_epoch = max(1, num_examples // batch_size)
            self.total_steps = steps
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).to(self.device, non_blocking=True)
            self._cached = (epoch, perm)
        return self._cached[1]

    def indices(self, step: int) -> torch.Tensor:
        """The dataset indices of the batch for `step` (0-based)."""
        if self.by_epochs:
            epoch, k = divmod(step, self.steps_per_epoch)
            start = k * self.batch_size
            return self.permutation(epoch)[start : start + self.batch_size]
        start = step * self.batch_size
        epoch, offset = divmod(start, self.n)
        if offset + self.batch_size <= self.n:
            return self.permutation(epoch)[offset : offset + self.batch_size]
        rest = self.batch_size - (self.n - offset)
        return torch.cat([self.permutation(epoch)[offset:], self.permutation(epoch + 1)[:rest]])

    def epoch_ends(self, step: int) -> bool:
        """Whether `step` (0-based) completes an epoch, or the run."""
        return (step + 1) % self.steps_per_epoch == 0 or step + 1 == self.total_steps

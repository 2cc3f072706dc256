"""FreezeOut (Brock et al. 2017): parts of the model stop training partway through a run.

A part that no longer trains needs no gradient, so from then on the backward pass stops before
it. For `fast-cnn`'s stem that is the costliest part of a CPU step after the first block: the
max-pool's backward over the stem's 10x10 output, and the weight gradient of a one-channel
convolution, which oneDNN runs slowly. The recipe names the parts and when they stop
(`[train] freeze_after`, fractions of the run); a frozen part keeps its weights, and an
optimiser skips a weight that has no gradient.

A step replayed from a CUDA graph cannot drop part of its backward without being captured anew,
after eager warm-up steps that cost more than the backward they save. There the frozen weights'
learning rate goes to zero instead (training/step.py), which needs them in optimiser groups of
their own: `weight_groups` gives them.
"""

from __future__ import annotations

from torch import nn


class Freezer:
    """`freeze_due(step)` freezes the parts whose time has come by `step` (0-based, so that a
    resumed run freezes at once what the interrupted one had frozen) and returns them, each
    with the step it was due at."""

    def __init__(self, model: nn.Module, fractions: dict[str, float], total_steps: int):
        self.model = model
        self.pending = {name: int(fraction * total_steps) for name, fraction in fractions.items()}

    def weight_groups(self) -> list[list[nn.Parameter]]:
        """The model's trainable weights grouped by the step they freeze at (a weight in two
        named parts freezes with the earlier), the never-frozen ones first, each group in the
        model's order. One group when nothing freezes."""
        freezes_at: dict[nn.Parameter, int] = {}
        for name, at in self.pending.items():
            for p in self.model.get_submodule(name).parameters():
                freezes_at[p] = min(at, freezes_at.get(p, at))
        groups: dict[int | None, list[nn.Parameter]] = {None: []}
        for at in sorted(set(freezes_at.values())):
            groups[at] = []
        for p in self.model.parameters():
            if p.requires_grad:
                groups[freezes_at.get(p)].append(p)
        return [group for group in groups.values() if group]

    def freeze_due(self, step: int) -> list[tuple[str, int]]:
        due = [(name, at) for name, at in self.pending.items() if step >= at]
        for name, _ in due:
            del self.pending[name]
            for p in self.model.get_submodule(name).parameters():
                p.requires_grad_(False)
                p.grad = None
        return due

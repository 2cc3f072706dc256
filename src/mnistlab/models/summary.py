"""A Keras-style model summary: each layer, its output shape and its parameter count.

Shapes come from running the model once on zeros with forward hooks on its leaf modules, so they
are what the model really computes, in the order it computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerRow:
    name: str  # qualified module name, e.g. "conv1" or "block1.bn"
    kind: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int | None, ...]  # batch dimension as None, like Keras
    params: int


def summarize(model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28)) -> list[LayerRow]:
    """One row per leaf module, in call order, from a forward pass on one image of zeros."""
    rows: list[LayerRow] = []

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            shape = (None, *output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(name, type(module).__name__, shape, params))

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return rows


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"


def format_summary(
    model: nn.Module, title: str = "", input_shape: tuple[int, ...] = (1, 28, 28)
) -> str:
    """A table like Keras' model.summary(), with totals; title names the model."""
    rows = summarize(model, input_shape)
    cells = [(f"{r.name} ({r.kind})", _shape_text(r.output_shape), f"{r.params:,}") for r in rows]
    header = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(c[i]) for c in [header, *cells]) + 4 for i in range(3)]
    widths = [max(w, m) for w, m in zip(widths, (29, 26, 10))]
    rule = sum(widths) + 1

    def line(c: tuple[str, str, str]) -> str:
        return " " + "".join(text.ljust(w) for text, w in zip(c, widths)).rstrip()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = [f'Model: "{title}"'] if title else []
    out += ["_" * rule, line(header), "=" * rule, *(line(c) for c in cells), "=" * rule]
    out += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        "_" * rule,
        "Output shapes are PyTorch's (None, channels, height, width); Keras prints channels last.",
    ]
    return "\n".join(out)

"""What a network sees of one digit: each convolutional layer's feature maps, a saliency map over
the 28x28 input, and for a model with no convolution whose first layer maps the 784 pixels to
the classes (the softmax regression), that layer's weights: one template per class.

Always PyTorch, whatever computes the predictions: the saliency map is a gradient, and feature
maps are a layer's outputs, which an ONNX graph does not give. The forward hooks this sets are
on the module it is given, so that module must be the caller's own copy (`explainer_copy`): a
module that also serves predictions in another thread would run the hooks there too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

PIXELS = 28 * 28


@dataclass
class Explanation:
    digit: int  # the winning class
    probability: float
    saliency: np.ndarray  # (28, 28) float in [0, 1]: |d logit / d pixel|, the largest 1
    layers: list[tuple[str, np.ndarray]]  # each conv layer's name and its (C, H, W) outputs
    templates: np.ndarray | None  # (classes, 28, 28) weights of a one-layer model, else None


def explainer_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode, its own to hook, on the CPU."""
    return copy.deepcopy(model).to("cpu").eval()


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def templates(model: nn.Module, classes: int) -> np.ndarray | None:
    """A convolution-free model's first layer's weights as (classes, 28, 28), when that layer
    maps the 784 pixels straight to the classes (a softmax regression); else None."""
    if conv_layers(model):
        return None
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if first is None or first.in_features != PIXELS or first.out_features != classes:
        return None
    return first.weight.detach().float().cpu().numpy().reshape(classes, 28, 28)


def explain(model: nn.Module, image: np.ndarray, normalisation: tuple[float, float, float],
            classes: int) -> Explanation:
    """Explain the model's reading of one (28, 28) uint8 image (light ink on 0), fed as its
    metadata's `(scale, mean, std)` say, as predictions feed it."""
    scale, mean, std = normalisation
    x = torch.tensor(np.asarray(image, dtype=np.float32)[None, None])
    x = ((x * scale - mean) / std).requires_grad_(True)
    outputs: list[torch.Tensor] = []
    layers = conv_layers(model)
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
             for _, m in layers]
    try:
        with torch.enable_grad():
            logits = model(x).float()
            best = int(logits[0].argmax())
            # the gradient of the winning logit alone: the parameters' .grad are never touched
            (gradient,) = torch.autograd.grad(logits[0, best], x)
    finally:
        for hook in hooks:
            hook.remove()
    probability = float(torch.softmax(logits[0].detach(), dim=0)[best])
    saliency = gradient[0, 0].abs().numpy()
    top = float(saliency.max())
    return Explanation(
        digit=best, probability=probability,
        saliency=saliency / top if top > 0 else saliency,
        layers=[(name, out[0].float().numpy()) for (name, _), out in zip(layers, outputs)],
        templates=templates(model, classes),
    )

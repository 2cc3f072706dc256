"""What a report measures on the model itself: one pass over a split gives the accuracy, the
loss, the confusion matrix and the mistakes, most confident first; and the first layer's
weights, to be drawn as filters."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mnistlab.data.splits import load_split
from mnistlab.metrics import Metrics, compute_metrics


@dataclass
class Mistake:
    index: int  # in the split
    label: int
    predicted: int
    confidence: float  # the model's probability for `predicted`
    image: np.ndarray  # uint8 (28, 28)


@dataclass
class Analysis:
    split: str
    dataset: str
    metrics: Metrics
    mistakes: list[Mistake]  # the most confident first, at most `top` of them
    errors: int  # every mistake, listed or not
    seconds: float
    dropout_at_test: bool


@dataclass
class Filters:
    layer: str  # its name in the model, e.g. "conv1"
    kind: str  # "Conv2d" or "Linear"
    weights: np.ndarray  # (count, height, width): one image per output channel or unit


def analyse(model: nn.Module, *, split: str = "test", dataset: str = "mnist",
            data_dir: str | None = None, device: torch.device | str = "cpu",
            dropout_at_test: bool = False, top: int = 40,
            classes: list[str] | None = None) -> Analysis:
    """Run `model` once over `split`: compute_metrics measures it, and keeps its logits."""
    started = time.perf_counter()
    data = load_split(split, dataset, data_dir, device, classes=classes)
    # channels-last, as the model was trained: oneDNN's and cuDNN's fastest layout
    model.to(memory_format=torch.channels_last)
    kept = _KeepLogits(model)
    with torch.random.fork_rng(devices=[]):  # dropout left on at test: the same every time
        torch.manual_seed(0)
        metrics = compute_metrics(kept, data.images, data.labels, dropout_at_test=dropout_at_test)
    logits, labels = torch.cat(kept.logits), data.labels
    confidence, predicted = logits.softmax(1).max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:top]
    images = data.images[order].cpu().numpy()
    mistakes = [Mistake(int(i), int(labels[i]), int(predicted[i]), float(confidence[i]), image)
                for i, image in zip(order.tolist(), images)]
    return Analysis(split, dataset, metrics, mistakes, len(wrong), time.perf_counter() - started,
                    dropout_at_test)


class _KeepLogits(nn.Module):
    """`model`, keeping each batch's logits as compute_metrics runs it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)  # compute_metrics leaves it as it found it
        self.logits: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.logits.append(out.float())
        return out


def first_layer(model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28)) -> Filters | None:
    """The weights of the first convolution or linear layer the model runs, as images: a
    convolution on the one input channel gives its kernels, a linear layer on the 784 pixels
    one 28x28 template per unit. None for a first layer of another kind."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_param = next(model.parameters(), None)
    device = first_param.device if first_param is not None else "cpu"
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen:
        return None
    layer = seen[0]
    weight = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Conv2d) and weight.shape[1] == 1:
        images = weight[:, 0]
    elif isinstance(layer, nn.Linear) and weight.shape[1] == input_shape[1] * input_shape[2]:
        images = weight.view(-1, input_shape[1], input_shape[2])
    else:
        return None
    return Filters(names[layer], type(layer).__name__, images.numpy())

"""The tutorials' initialisation schemes.

A faithful reproduction starts from the tutorial framework's initial weights, not PyTorch's: a
zero-initialised softmax regression, TensorFlow's truncated normal with biases 0.1, Keras' Glorot
uniform, and so on. Every scheme draws from torch's global RNG, so `torch.manual_seed(s)` before
`init_weights` (or `build_model`) makes the weights reproducible.

Schemes touch convolution and linear layers only. Normalisation layers (BatchNorm) keep their
identity start (weight 1, bias 0): none of the tutorials has one, and drawing them at random would
only break them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mnistlab.errors import MnistlabError

INIT_SCHEMES: dict[str, str] = {
    "zeros": "every weight and bias 0 (Deep MNIST's softmax regression)",
    "truncated-normal": "weights TF truncated_normal(stddev=0.1), biases 0.1 (Deep MNIST's CNN)",
    "normal": "every weight and bias N(0, 1), TF random_normal (OpenGenus' CNN)",
    "glorot-uniform": "weights Glorot/Xavier uniform, biases 0 (Keras defaults, the Keras tutorial)",
    "truncated-normal-xavier": "conv filters truncated normal std 0.1; fully connected Xavier uniform, bias 0",
    "pytorch": "PyTorch's default initialisation, left as built",
}

# TF's truncated_normal re-draws values more than 2 standard deviations from the mean; torch's
# trunc_normal_ with bounds at +-2 std samples exactly that distribution.
_TF_STD = 0.1
_TF_BOUND = 2 * _TF_STD


def _layers(model: nn.Module) -> list[nn.Module]:
    """Convolution and linear layers, in registration order (so draws are reproducible)."""
    return [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def _truncated_normal_(t: torch.Tensor) -> None:
    nn.init.trunc_normal_(t, mean=0.0, std=_TF_STD, a=-_TF_BOUND, b=_TF_BOUND)


def _zero_(t: torch.Tensor | None) -> None:
    if t is not None:
        nn.init.zeros_(t)


def check_init(scheme: str) -> str:
    """`scheme` if it names one of INIT_SCHEMES, else a MnistlabError listing them."""
    if scheme not in INIT_SCHEMES:
        known = ", ".join(INIT_SCHEMES)
        raise MnistlabError(f"unknown init scheme {scheme!r}; known schemes: {known}")
    return scheme


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise `model`'s convolution and linear layers in place with a named scheme."""
    if check_init(scheme) == "pytorch":
        return
    with torch.no_grad():
        for layer in _layers(model):
            weight, bias = layer.weight, layer.bias
            if scheme == "zeros":
                _zero_(weight)
                _zero_(bias)
            elif scheme == "truncated-normal":
                _truncated_normal_(weight)
                if bias is not None:
                    nn.init.constant_(bias, 0.1)
            elif scheme == "normal":
                nn.init.normal_(weight, 0.0, 1.0)
                if bias is not None:
                    nn.init.normal_(bias, 0.0, 1.0)
            elif scheme == "glorot-uniform":
                # torch's fans for a conv kernel are kh*kw*in and kh*kw*out, the same as Keras'.
                nn.init.xavier_uniform_(weight)
                _zero_(bias)
            elif scheme == "truncated-normal-xavier":
                # The strided CNN tutorial draws its conv filters by hand (truncated normal) and builds its dense
                # layers with tf.contrib.layers.fully_connected, whose defaults are Xavier
                # uniform weights and zero biases.
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(weight)
                else:
                    _truncated_normal_(weight)
                _zero_(bias)
            else:  # pragma: no cover - INIT_SCHEMES and this chain must agree
                raise AssertionError(scheme)


def glorot_bound(weight: torch.Tensor) -> float:
    """The Glorot uniform limit sqrt(6 / (fan_in + fan_out)) for a linear or conv weight."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(6.0 / (fan_in + fan_out))

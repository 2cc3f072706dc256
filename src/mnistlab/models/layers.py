"""Layers PyTorch lacks: TensorFlow's SAME padding for strided convolutions.

TF's SAME makes the output ceil(size / stride) long and pads whatever that needs, splitting the
padding with the smaller half BEFORE and the larger half AFTER (the extra row goes at the bottom,
the extra column at the right). PyTorch's `padding=` is symmetric, and its `padding="same"`
refuses strides above 1, so a strided TF model needs the padding computed and applied by hand.
With stride 1 and an odd kernel the split is even and this equals `padding=k // 2`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding TF's SAME uses along one spatial axis of length `size`."""
    out = -(-size // stride)  # ceil(size / stride)
    effective_kernel = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective_kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dTFSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's SAME padding, computed from the input's size at each call.

    The padding depends only on shapes (known when torch.compile traces), never on values.
    """

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("padding", 0) != 0:
            raise ValueError("Conv2dTFSame computes its own padding; do not pass one")
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, bottom = tf_same_padding(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_padding(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", padding=SAME (TensorFlow)"

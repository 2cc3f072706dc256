"""Layers PyTorch lacks: TensorFlow's SAME padding for strided convolutions, a dense layer, a
dropout and a layout for convolutions that run at full speed on the CPU, and a one-channel
convolution that runs as one product on a GPU.

TF's SAME makes the output ceil(size / stride) long and pads whatever that needs, splitting the
padding with the smaller half BEFORE and the larger half AFTER (the extra row goes at the bottom,
the extra column at the right). PyTorch's `padding=` is symmetric, and its `padding="same"`
refuses strides above 1, so a strided TF model needs the padding computed and applied by hand.
With stride 1 and an odd kernel the split is even and this equals `padding=k // 2`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import platform
from collections.abc import Iterator

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
        if top == bottom and left == right:  # the convolution pads itself, without a copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation,
                            self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", padding=SAME (TensorFlow)"


class Linear(nn.Linear):
    """nn.Linear, computed by oneDNN on an x86 CPU in float32.

    PyTorch's CPU build multiplies float32 matrices with MKL, which on AMD processors runs its
    AVX2 code: on a Zen 5 core, Deep MNIST's 3136x1024 layer at batch 50 took 1.9 ms forward
    where oneDNN, which PyTorch also ships (its convolutions run on it), takes 0.9 ms, and the
    two products of the backward pass gain as much (docs/BENCHMARKS.md). The weights and their
    names are nn.Linear's, so checkpoints, ONNX export and every `isinstance` check see no
    difference. Elsewhere (a GPU, bfloat16 autocast, ONNX export, torch.compile, inputs that
    are not a batch of vectors) it is nn.Linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x, self.weight):
            return _OneDnnLinear.apply(x, self.weight, self.bias)
        return super().forward(x)


class PatchConv2d(nn.Conv2d):
    """nn.Conv2d, computed on a CUDA GPU as one matrix product over the input's patches where
    it reads one channel without padding (`fast-cnn`'s stem).

    cuDNN runs such a convolution on a small batch as several kernels: its weight gradient
    split into partial sums then reduced, and layout conversions around it. The same
    arithmetic as a product (patches x weights) is a copy of the patches and one product
    forward, and one product for the weight gradient (on an H100, `fast` compiled trained in 7%
    less time: docs/BENCHMARKS.md). The weights and their names are nn.Conv2d's, so
    checkpoints, ONNX export and `isinstance` checks see no difference; on the CPU, within
    stock_pytorch() and in export it is nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cuda and self.in_channels == 1 and self.groups == 1 and self.padding == (0, 0)
                and self.dilation == (1, 1) and not _stock_or_exporting()):
            return super().forward(x)
        return patch_product(x, self.weight, self.bias, self.stride)


def patch_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: tuple[int, int]) -> torch.Tensor:
    """A one-channel, unpadded convolution as patches x weights, its output channels-last."""
    (kh, kw), (sh, sw) = weight.shape[2:], stride
    patches = x[:, 0].unfold(1, kh, sh).unfold(2, kw, sw)  # (N, H', W', kh, kw)
    out = patches.flatten(3) @ weight.flatten(1).t()  # (N, H', W', out)
    if bias is not None:
        out = out + bias
    return out.permute(0, 3, 1, 2)  # the shape of a convolution's output


# Below this many multiply-adds (batch x inputs x outputs) oneDNN's per-call overhead (about 20
# microseconds) outweighs its faster arithmetic: 50x784->10 took 94 us forward and backward by
# oneDNN, 64 us by MKL; 64x576->64 took about the same by both; 128x1024->10 129 against 165 us.
MIN_ONEDNN_PRODUCT = 1 << 21


_STOCK = contextvars.ContextVar("mnistlab_stock_pytorch", default=False)


@contextlib.contextmanager
def stock_pytorch() -> Iterator[None]:
    """Within this block the layers below compute as PyTorch's own modules do: MKL's products,
    PyTorch's tensor layout, bernoulli dropout. PyTorch's MNIST example, which `mnistlab bench`
    takes as its baseline, trains so."""
    token = _STOCK.set(True)
    try:
        yield
    finally:
        _STOCK.reset(token)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_eager_cpu_float32(x) and x.dim() == 2 and weight.dtype == torch.float32
            and x.shape[0] * weight.numel() >= MIN_ONEDNN_PRODUCT and _onednn_linear_works())


def _own_cpu_kernels(x: torch.Tensor) -> bool:
    """Whether mnistlab's own CPU kernels may compute `x`: on the CPU, not traced
    (torch.compile, ONNX export), not within stock_pytorch(). torch.compile is asked first, so
    that it traces none of the rest."""
    return not torch.compiler.is_compiling() and x.device.type == "cpu" and not _stock_or_exporting()


def _stock_or_exporting() -> bool:
    """Whether PyTorch's own modules must compute: within stock_pytorch(), or in ONNX export."""
    return _STOCK.get() or torch.onnx.is_in_onnx_export()


def _eager_cpu_float32(x: torch.Tensor) -> bool:
    """Whether `x` is computed eagerly on the CPU in float32, not under autocast, by mnistlab's
    own kernels."""
    return _own_cpu_kernels(x) and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def _x86_with_onednn() -> bool:
    """oneDNN's kernels are chosen on x86 only, where MKL's products are the slow ones (other
    CPUs keep PyTorch's own choice)."""
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()


def _onednn_product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) by oneDNN's inner product; views (a transpose) are read as they are."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


@functools.cache
def _onednn_linear_works() -> bool:
    """Whether this PyTorch has oneDNN's inner product and it agrees with nn.Linear (x86 only)."""
    if not _x86_with_onednn():
        return False
    try:
        # its own generator: called first inside a seeded run's first step, the global one's
        # draws would make that run differ from every later run of the same seed
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(3, 5, generator=generator), torch.randn(4, 5, generator=generator)
        return bool(torch.allclose(_onednn_product(a, b), a @ b.T, atol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class _OneDnnLinear(torch.autograd.Function):
    """y = x @ W.T + b with all three products (forward, dx, dW) by oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_x = _onednn_product(grad, weight.T) if needs_x else None  # grad @ W
        grad_weight = _onednn_product(grad.T, x.T) if needs_weight else None  # grad.T @ x
        grad_bias = grad.sum(0) if ctx.has_bias and needs_bias else None
        return grad_x, grad_weight, grad_bias


class Dropout(nn.Dropout):
    """nn.Dropout, its mask drawn from random 16-bit integers on the CPU.

    PyTorch's CPU dropout draws a float per unit with bernoulli_: 0.48 ms for Deep MNIST's
    50x1024 activations on a Zen 5 core, 6% of the strided CNN's step; torch.rand is 0.13 ms.
    A unit needs 16 random bits, not a float: one 64-bit draw decides four units, and the whole
    dropout takes 0.07 ms. Each unit is kept when its integer falls below round((1 - p) * 65536),
    with probability 1 - p to within 1/131072 (exactly, for p = 0.5), and scaled by 1 / (1 - p).
    Elsewhere it is nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0 < self.p < 1 and not self.inplace and _own_cpu_kernels(x):
            # the scale applied as a float, as PyTorch's dropout does: a bfloat16 1 / 0.9 would
            # shrink every kept unit by 0.16%
            return x.mul(_keep_mask(x, self.p)).mul_(1 / (1 - self.p))
        return super().forward(x)


def _keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """True where a unit of `x` is kept, each with probability 1 - p (to 16 bits)."""
    limit = round((1 - p) * 65536)
    if limit == 65536:  # p below 1/131072: every unit kept (and 32768 does not fit an int16)
        return torch.ones(x.shape, dtype=torch.bool)
    n = x.numel()
    # random_ over the whole int64 range (its upper bound is exclusive: one value of 2^64 is
    # never drawn), seen as four uniform int16 each
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
    bits = draws.view(torch.int16)[:n].view(x.shape)
    return bits < limit - 32768


def to_onednn_layout(x: torch.Tensor, training: bool) -> torch.Tensor:
    """A training batch in oneDNN's own blocked layout on an x86 CPU in float32; `x` elsewhere.

    Convolutions, max-pools and ReLUs then run on oneDNN's tensors, from this call to
    `to_plain_layout`, with their gradients. PyTorch's own CPU max-pool writes a 64-bit index
    per output and reads it back in the backward pass, and its kernels for channels-last tensors
    are slow; oneDNN's pool keeps a one-byte workspace. On two Zen 5 cores a training step's
    operators took 25.8 ms where PyTorch's layout took 27.3 (the OpenGenus CNN, batch 128),
    12.3 against 13.0 (Deep MNIST, 50) and 4.6 against 5.0 (the Keras CNN, 64): medians of
    three runs of docs/experiments/profile_cpu.py RECIPE --wall [--plain-layout]. The
    arithmetic is the same float32: only the order of a convolution's sums may differ, as
    between any two kernels. Evaluation, a GPU, bfloat16 autocast, ONNX export and
    torch.compile keep PyTorch's own tensors.
    """
    if training and _eager_cpu_float32(x) and x.dim() == 4 and _onednn_layout_works():
        return x.to_mkldnn()
    return x


def weights_layout(model: nn.Module, device: torch.device, *, bf16: bool = False) -> torch.memory_format:
    """The memory layout a model's convolution weights train in on `device`: channels-last, the
    layout oneDNN's and cuDNN's fastest convolutions take, but contiguous for a model that trains
    its convolutions on oneDNN's own tensors (`trains_on_onednn_layout`, to_onednn_layout) on
    this CPU, in float32 (`bf16` is autocast's, which keeps PyTorch's tensors). oneDNN gives
    those convolutions' weight gradients contiguous, and autograd would copy each into a
    channels-last weight's layout at every step: 0.09 ms of the OpenGenus CNN's."""
    if (getattr(model, "trains_on_onednn_layout", False) and torch.device(device).type == "cpu"
            and not bf16 and _onednn_layout_works()):
        return torch.contiguous_format
    return torch.channels_last


def to_plain_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` as an ordinary (strided) tensor, whichever of the two layouts it is in."""
    return x.to_dense() if x.is_mkldnn else x


@functools.cache
def _onednn_layout_works() -> bool:
    """Whether this PyTorch trains a convolution, a max-pool and a ReLU on oneDNN's tensors
    with nn.Conv2d's results (x86 only, like Linear)."""
    if not _x86_with_onednn():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 6, 6, generator=generator)
        weight = torch.randn(4, 3, 3, 3, generator=generator, requires_grad=True)
        results = []
        for batch in (x, x.to_mkldnn()):
            y = to_plain_layout(F.relu(F.max_pool2d(F.conv2d(batch, weight, padding=1), 2, 2)))
            (grad,) = torch.autograd.grad(y.square().sum(), weight)
            results.append((y, grad))
        (y, grad), (y_onednn, grad_onednn) = results
        return bool(torch.allclose(y, y_onednn, atol=1e-5) and torch.allclose(grad, grad_onednn, atol=1e-4))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False

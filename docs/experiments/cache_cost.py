"""What the caches cost opengenus-cnn's training step: its kernels timed hot and cold.

A step of opengenus-cnn (batch 128) moves more memory than a 32 MB L3 cache holds: Adam alone
reads the dense layer's 3.2 million weights, their gradient and two moments (51 MB) and
writes three of them back. So each kernel of a step finds its inputs in main memory, not in
the cache, and `profile_cpu.py opengenus-cnn --wall` times them near their "cold" figure here.
This times each of the step's large kernels on its real shapes, 2 threads, medians of 30:

- hot: called again and again on the same tensors, which stay in the cache;
- cold: after writing 64 MB elsewhere, which evicts them, as a real step does;
- and the first block (first convolution, max-pool, ReLU) on the whole batch against the
  batch in 2, 4 and 8 chunks, cold, whose convolution outputs might stay in the cache between
  the convolution and the pool.

    python docs/experiments/cache_cost.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

REPEATS = 30
EVICT_FLOATS = 16 * 1024 * 1024  # 64 MB, twice the L3 cache


def product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T by oneDNN, as models/layers.Linear computes it."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def kernels() -> dict[str, Callable[[], object]]:
    """The step's large kernels on its shapes, the convolutions on oneDNN's tensors."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(128, 1, 28, 28, generator=g).to_mkldnn()
    w1, b1 = torch.randn(32, 1, 5, 5, generator=g), torch.randn(32, generator=g)
    w2, b2 = torch.randn(64, 32, 5, 5, generator=g), torch.randn(64, generator=g)
    conv1 = F.conv2d(images, w1, b1, padding=2)
    pooled = F.relu(F.max_pool2d(conv1, 2))
    grad_conv2 = torch.randn(128, 64, 14, 14, generator=g).to_mkldnn()
    x, grad = torch.randn(128, 3136, generator=g), torch.randn(128, 1024, generator=g)
    w, b = torch.randn(1024, 3136, generator=g), torch.randn(1024, generator=g)
    state = [[torch.randn(1024, 3136, generator=g)] for _ in range(2)] + [
        [torch.zeros(1024, 3136)] for _ in range(2)]
    step = [torch.tensor(5.0)]
    return {
        "conv1 forward": lambda: F.conv2d(images, w1, b1, padding=2),
        "pool1 forward": lambda: F.max_pool2d(conv1, 2),
        "conv2 forward": lambda: F.conv2d(pooled, w2, b2, padding=2),
        "conv2 backward": lambda: torch.ops.aten.convolution_backward(
            grad_conv2, pooled, w2, [64], [1, 1], [2, 2], [1, 1], False, [0, 0], 1,
            [True, True, True]),
        "dense forward": lambda: product(x, w, b),
        "dense input gradient": lambda: product(grad, w.T),
        "dense weight gradient": lambda: product(grad.T, x.T),
        "Adam, dense weights": lambda: torch._fused_adam_(
            *state, [], step, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
            amsgrad=False, maximize=False),
    }


def first_block(images: torch.Tensor, chunks: int) -> Callable[[], object]:
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(32, 1, 5, 5, generator=g), torch.randn(32, generator=g)

    def run() -> list[torch.Tensor]:
        return [F.relu(F.max_pool2d(F.conv2d(part.to_mkldnn(), weight, bias, padding=2), 2))
                for part in images.chunk(chunks)]
    return run


def median_ms(call: Callable[[], object], evict: torch.Tensor | None) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(REPEATS):
        if evict is not None:
            evict.fill_(1.0)
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.set_num_threads(2)
    evict = torch.empty(EVICT_FLOATS)
    print(f"{'kernel':24s} {'hot ms':>8s} {'cold ms':>8s}")
    hot_total = cold_total = 0.0
    for name, call in kernels().items():
        hot, cold = median_ms(call, None), median_ms(call, evict)
        hot_total, cold_total = hot_total + hot, cold_total + cold
        print(f"{name:24s} {hot:8.3f} {cold:8.3f}")
    print(f"{'sum':24s} {hot_total:8.3f} {cold_total:8.3f}")
    images = torch.rand(128, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for chunks in (1, 2, 4, 8):
        cold = median_ms(first_block(images, chunks), evict)
        print(f"first block in {chunks} chunk{'s' * (chunks > 1)}: {cold:.3f} ms cold")


if __name__ == "__main__":
    main()

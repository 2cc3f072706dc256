"""Three other ways to compute opengenus-cnn's training step on 2 cores, each timed against
the way mnistlab computes it (docs/BENCHMARKS.md, Known gaps). Each pair takes turns, rounds
of 20 calls each, and prints the medians:

- split: each core trains on half the batch in a thread of its own (one OpenMP thread each),
  then the halves' gradients are summed and Adam runs, against one step on both cores;
- channels-last: the second convolution's backward pass on channels-last tensors, where
  oneDNN runs its brgemm kernels, with the conversions from and to oneDNN's blocked tensors
  that the pooling around it needs, against the backward pass on the blocked tensors;
- chunks: the dense layer's weight gradient and Adam's update of those weights, in chunks of
  256 rows (each chunk's gradient still in the cache when Adam reads it), against whole.

    python docs/experiments/cpu_alternatives.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from mnistlab.cpu_memory import keep_freed_memory
from mnistlab.models.zoo import build_model

BATCH = 128
CHANNELS_LAST = torch.channels_last


def split_pair() -> tuple[Callable[[], None], Callable[[], None]]:
    torch.manual_seed(0)
    model = build_model("deep-cnn", init="normal", dropout=0.2).train()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    images, labels = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    side = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,))

    threads = torch.get_num_threads()

    def whole() -> None:
        torch.set_num_threads(threads)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def half(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(F.cross_entropy(model(x), y) / 2, params)

    def split() -> None:
        torch.set_num_threads(1)
        h = BATCH // 2
        other = side.submit(half, images[h:], labels[h:])
        mine = half(images[:h], labels[:h])
        for p, a, b in zip(params, mine, other.result()):
            p.grad = a.add_(b)
        optimizer.step()

    return whole, split


def channels_last_pair() -> tuple[Callable[[], object], Callable[[], object]]:
    torch.manual_seed(0)
    x, grad_y = torch.randn(BATCH, 32, 14, 14).to_mkldnn(), torch.randn(BATCH, 64, 14, 14).to_mkldnn()
    kernel = torch.randn(64, 32, 5, 5)

    def backward(grad: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor):
        return torch.ops.aten.convolution_backward(grad, inputs, weight, [64], [1, 1], [2, 2], [1, 1],
                                                   False, [0, 0], 1, [True, True, True])

    def routed() -> torch.Tensor:
        inputs = x.to_dense().contiguous(memory_format=CHANNELS_LAST)
        grad = grad_y.to_dense().contiguous(memory_format=CHANNELS_LAST)
        grad_x, _, _ = backward(grad, inputs, kernel.contiguous(memory_format=CHANNELS_LAST))
        return grad_x.to_mkldnn()

    return (lambda: backward(grad_y, x, kernel)), routed


def chunks_pair(rows: int = 256) -> tuple[Callable[[], None], Callable[[], None]]:
    torch.manual_seed(0)
    features, grad_out = torch.randn(BATCH, 3136), torch.randn(BATCH, 1024)
    weight, avg, avg_sq = torch.randn(1024, 3136), torch.randn(1024, 3136), torch.rand(1024, 3136)
    step = torch.tensor(10.0)

    def update(lo: int, hi: int) -> None:
        grad = torch.ops.mkldnn._linear_pointwise(grad_out[:, lo:hi].T, features.T, None, "none", [], "")
        torch._fused_adam_([weight[lo:hi]], [grad], [avg[lo:hi]], [avg_sq[lo:hi]], [], [step],
                           amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0,
                           eps=1e-8, maximize=False)

    def chunked() -> None:
        for lo in range(0, 1024, rows):
            update(lo, lo + rows)

    return (lambda: update(0, 1024)), chunked


def take_turns(first: Callable[[], object], second: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median milliseconds of each, over rounds of 20 calls each (after 3 untimed ones)."""
    eviction = torch.zeros(16 << 20)  # 64 MB: what the rest of a step leaves in the cache
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for call, got in zip((first, second), times):
            for i in range(23):
                eviction.add_(1)
                start = time.perf_counter()
                call()
                if i >= 3:
                    got.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    keep_freed_memory()  # as in training: no page faults
    threads = torch.get_num_threads()
    for name, (ours, other), labels in (
            ("a training step", split_pair(), ("both cores", "a half-batch a core")),
            ("the second convolution's backward pass", channels_last_pair(), ("blocked", "channels-last")),
            ("the dense layer's weight gradient and Adam", chunks_pair(), ("whole", "in chunks of 256 rows"))):
        a, b = take_turns(ours, other, args.rounds)
        torch.set_num_threads(threads)  # the split step leaves one
        print(f"{name}: {labels[0]} {a:.2f} ms, {labels[1]} {b:.2f} ms")


if __name__ == "__main__":
    main()

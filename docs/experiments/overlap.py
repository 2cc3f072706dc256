"""Can independent operators of opengenus-cnn's step run side by side on 2 cores?

TensorFlow runs independent operators at once (docs/BENCHMARKS.md, Known gaps). This times
three such pairs of opengenus-cnn's training step (batch 128, the convolutions on oneDNN's
tensors), each after a cache eviction as in a real step, medians of 30:

- the second convolution's two backward products (input and weights);
- the dense layer's two backward products (input and weights);
- the second convolution's backward pass and Adam's update of the dense layer's 3.2 million
  weights.

"in turn" runs the pair one after the other, on PyTorch's threads; "at once" runs the second
of the pair in a side thread with one OpenMP thread, and the first with one OpenMP thread for
the two pairs of products (Adam's pair keeps all of them for the convolution, the way the
update would hide under it). PyTorch's OpenMP threads spin after each parallel region before
they sleep: run it again with OMP_WAIT_POLICY=PASSIVE in the environment to see the pairs
without that spinning.

    python docs/experiments/overlap.py
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import torch

DENSE = (128, 3136, 1024)  # batch, inputs, outputs of opengenus-cnn's dense layer
REPEATS = 30


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T by oneDNN, as models/layers.Linear computes it."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


Pair = tuple[Callable[[], object], Callable[[], object], bool]  # first, second, first on one thread


def pairs() -> dict[str, Pair]:
    torch.manual_seed(0)
    x = torch.randn(128, 32, 14, 14).to_mkldnn()
    grad_y = torch.randn(128, 64, 14, 14).to_mkldnn()
    kernel = torch.randn(64, 32, 5, 5)
    batch, inputs, outputs = DENSE
    features, weight, grad_out = torch.randn(batch, inputs), torch.randn(outputs, inputs), torch.randn(batch, outputs)
    params, grads, avg, avg_sq = (torch.randn(outputs, inputs) for _ in range(4))
    avg_sq.abs_()
    step = torch.tensor(10.0)

    def conv_backward(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(
            grad_y, x, kernel, [64], [1, 1], [2, 2], [1, 1], False, [0, 0], 1, mask)

    def adam() -> None:
        torch._fused_adam_([params], [grads], [avg], [avg_sq], [], [step], amsgrad=False, lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False)

    return {
        "convolution: input and weight gradients": (conv_backward([True, False, False]),
                                                    conv_backward([False, True, True]), True),
        "dense layer: input and weight gradients": (lambda: product(grad_out, weight.T),
                                                    lambda: product(grad_out.T, features.T), True),
        "convolution backward and dense Adam": (conv_backward([True, True, True]), adam, False),
    }


def in_turn(first, second, _first_on_one_thread) -> None:
    first()
    second()


def at_once(first, second, first_on_one_thread: bool) -> None:
    threads = torch.get_num_threads()
    if first_on_one_thread:
        torch.set_num_threads(1)
    side = threading.Thread(target=lambda: (torch.set_num_threads(1), second()))
    side.start()
    first()
    side.join()
    torch.set_num_threads(threads)  # the side thread's setting is the process's


def median_ms(run, pair, junk: torch.Tensor) -> float:
    times = []
    for _ in range(REPEATS):
        junk.fill_(1.0)
        start = time.perf_counter()
        run(*pair)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    junk = torch.empty(16_000_000)  # 64 MB, twice the L3 cache
    for name, pair in pairs().items():
        for run in (in_turn, at_once):  # warm: oneDNN builds its kernels for each thread count
            run(*pair)
        figures = [median_ms(run, pair, junk) for run in (in_turn, at_once, in_turn, at_once)]
        print(f"{name}: in turn {figures[0]:.2f}, {figures[2]:.2f} ms; "
              f"at once {figures[1]:.2f}, {figures[3]:.2f} ms")


if __name__ == "__main__":
    main()

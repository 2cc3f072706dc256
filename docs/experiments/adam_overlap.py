"""Can the dense layer's Adam update hide under a convolution's backward pass on 2 cores?

TensorFlow runs independent operators side by side (docs/BENCHMARKS.md, Known gaps). This
times opengenus-cnn's second convolution's backward pass (batch 128, oneDNN's tensors) and
then Adam over its dense layer's 3.2 million weights, after a cache eviction as in a real step:
one after the other, and at once (Adam in a second thread with one OpenMP thread). Medians of
30.

    python docs/experiments/adam_overlap.py
"""

from __future__ import annotations

import statistics
import threading
import time

import torch

WEIGHTS = 3136 * 1024  # opengenus-cnn's dense layer


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 32, 14, 14).to_mkldnn()
    grad_y = torch.randn(128, 64, 14, 14).to_mkldnn()
    weight = torch.randn(64, 32, 5, 5)
    params, grads, avg, avg_sq = (torch.randn(WEIGHTS) for _ in range(4))
    avg_sq.abs_()
    step = torch.tensor(10.0)
    junk = torch.empty(16_000_000)  # 64 MB, twice the L3 cache

    def adam() -> None:
        torch._fused_adam_([params], [grads], [avg], [avg_sq], [], [step], amsgrad=False, lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False)

    def conv_backward() -> None:
        torch.ops.aten.convolution_backward(grad_y, x, weight, [64], [1, 1], [2, 2], [1, 1], False,
                                            [0, 0], 1, [True, True, True])

    def in_turn() -> None:
        conv_backward()
        adam()

    def at_once() -> None:
        side = threading.Thread(target=lambda: (torch.set_num_threads(1), adam()))
        side.start()
        conv_backward()
        side.join()

    threads = torch.get_num_threads()
    for run in (in_turn, at_once, in_turn, at_once):
        times = []
        for _ in range(30):
            junk.fill_(1.0)
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
            torch.set_num_threads(threads)  # the side thread's setting is the process's
        print(f"{run.__name__:8} {1e3 * statistics.median(times):.2f} ms")


if __name__ == "__main__":
    main()

"""How long `POST /api/explain` takes per model: the figures in docs/SERVING.md's section on it.

    python docs/experiments/explain_time.py [--requests 30]

Each shipped model served in-process (predictions on ONNX Runtime, as `mnistlab serve` runs
them; explanations on PyTorch, one thread), sent MNIST test digit 0 (a 7) as JSON pixels
`--requests` times after one warm-up request; prints the median and the slowest wall time.
"""

import argparse
import statistics
import time

import torch
from fastapi.testclient import TestClient

from mnistlab.data.registry import load_arrays
from mnistlab.inference.predictor import Predictor
from mnistlab.serve import create_app

MODELS = ("softmax-regression", "keras-cnn", "default")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `serve` sets it
    pixels = {"pixels": load_arrays("mnist").test_images[0].tolist()}
    app = create_app({name: Predictor.load(name, backend="onnx") for name in MODELS})
    with TestClient(app) as client:
        for name in MODELS:
            client.post(f"/api/explain?model={name}", json=pixels)  # the first call warms up
            times = []
            for _ in range(args.requests):
                began = time.perf_counter()
                r = client.post(f"/api/explain?model={name}", json=pixels)
                times.append(1000 * (time.perf_counter() - began))
                assert r.status_code == 200, r.text
            print(f"{name:<20} median {statistics.median(times):6.1f} ms  slowest "
                  f"{max(times):6.1f} ms  ({len(r.content):,} bytes)")


if __name__ == "__main__":
    main()

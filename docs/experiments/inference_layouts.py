"""Inference throughput by memory layout, batch size and precision (forward pass only).

    python docs/experiments/inference_layouts.py

Untrained weights: this measures speed, not accuracy.
"""

import time

import torch

from mnistlab.data.splits import as_input, load_split
from mnistlab.models import build_model

images = load_split("test").images
for name in ("keras-cnn", "mnistlab-cnn"):
    model = build_model(name).eval()
    for channels_last in (False, True):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        for batch in (256, 1024):
            x = as_input(images[:batch], channels_last=channels_last)
            for bf16 in (False, True):
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    model(x), model(x)  # warm-up
                    start = time.perf_counter()
                    for _ in range(5):
                        model(x).argmax(1)
                    rate = 5 * batch / (time.perf_counter() - start)
                print(name, "CL" if channels_last else "NCHW", batch, "bf16" if bf16 else "fp32",
                      f"{rate:,.0f} img/s", flush=True)

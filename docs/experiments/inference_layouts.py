"""Inference throughput by memory layout, batch size and precision (forward pass only).

    python docs/experiments/inference_layouts.py
"""

import time, torch
from mnistlab.models import build_model
from mnistlab.data.splits import load_split
from mnistlab.train.metrics import as_input
imgs = load_split("test").images
for name in ("keras-cnn", "mnistlab-cnn"):
    m = build_model(name).eval()
    for cl in (False, True):
        mm = m.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        for bs in (256, 1024):
            for bf in (False, True):
                x = as_input(imgs[:bs], channels_last=cl)
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                    for _ in range(2): mm(x)
                    t = time.perf_counter(); n = 5
                    for _ in range(n): mm(x).argmax(1)
                    dt = (time.perf_counter() - t) / n
                print(name, "CL" if cl else "NCHW", bs, "bf16" if bf else "fp32", f"{bs/dt:,.0f} img/s", flush=True)

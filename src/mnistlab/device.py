"""Device choice: where a model trains or answers, and waiting for it.

`auto` is a CUDA GPU when PyTorch sees one, else the CPU. Every command that runs a model takes
its `--device` through `resolve_device`, so a wrong name is the same clear error everywhere.
"""

from __future__ import annotations

import re

import torch

from mnistlab.errors import MnistlabError

# the names --device takes: auto, cpu, cuda, or cuda:N for the N-th GPU
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` names, checked here, where it comes in: PyTorch would take a name
    such as `cuda:7` on a machine with one GPU, and fail only when it is first used."""
    if not DEVICE_NAME.fullmatch(name):
        if name.startswith("cuda"):
            raise MnistlabError(f"--device {name[:40]}: a GPU is cuda, or cuda:N for the N-th "
                                "(cuda:0, cuda:1, ...)")
        raise MnistlabError(f"--device {name[:40]}: expected auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MnistlabError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise MnistlabError(f"--device {name}: this machine has {count} CUDA GPU"
                            f"{'s' * (count != 1)}, cuda:0 to cuda:{count - 1}")
    return device


def wait_for(device: torch.device) -> None:
    """Let a GPU finish its queued work, so that a clock read afterwards measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

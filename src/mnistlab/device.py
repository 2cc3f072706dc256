"""Device choice: where a model trains or answers, and waiting for it.

`auto` is a CUDA GPU when PyTorch sees one, else the CPU. Every command that runs a model takes
its `--device` through `resolve_device`, so a wrong name is the same clear error everywhere.
"""

from __future__ import annotations

import torch

from mnistlab.errors import MnistlabError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MnistlabError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise MnistlabError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def wait_for(device: torch.device) -> None:
    """Let a GPU finish its queued work, so that a clock read afterwards measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

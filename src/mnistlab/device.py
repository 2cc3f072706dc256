"""Device choice: where a model trains or answers, and waiting for it.

`auto` is a CUDA GPU when PyTorch sees one, else the accelerator PyTorch reports through
`torch.accelerator` (Apple's MPS, Intel's XPU, ...; PyTorch 2.6 and later), else the CPU. Every
command that runs a model takes its `--device` through `resolve_device`, so a wrong name is the
same clear error everywhere.
"""

from __future__ import annotations

import re

import torch

from mnistlab.errors import MnistlabError, brief

# the names --device takes: auto, cpu, or an accelerator's type with :N for the N-th device
DEVICE_NAME = re.compile(r"[a-z][a-z0-9]{1,15}(?::(?P<index>[0-9]{1,4}))?")
# PyTorch's accelerators besides CUDA (a build has one at most); a plug-in's own, such as
# Ascend's npu, is taken too when PyTorch reports it as the accelerator
ACCELERATORS = ("cuda", "mps", "xpu", "hpu", "mtia")


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` names, checked here, where it comes in: PyTorch would take a name
    such as `cuda:7` on a machine with one GPU, and fail only when it is first used."""
    check_device_spelling(name)
    if name in ("auto", "cpu"):
        return torch.device(_auto() if name == "auto" else "cpu")
    kind, match = name.partition(":")[0], DEVICE_NAME.fullmatch(name)
    count = device_count(kind)
    if count == 0:
        raise MnistlabError(f"--device {name}: no {_label(kind)} is available here "
                            "(use --device cpu or auto)")
    if match["index"] is not None and int(match["index"]) >= count:
        last = f"{kind}:0" + (f" to {kind}:{count - 1}" if count > 1 else "")
        raise MnistlabError(f"--device {name}: this machine has {count} {_label(kind)}"
                            f"{'s' * (count != 1)}, {last}")
    return torch.device(name)


def check_device_spelling(name: object) -> None:
    """Refuse what names no device at all (`gpu`, `cuda:x`), whether or not this machine has
    the one named."""
    check_device_name(name)
    if name in ("auto", "cpu"):
        return
    kind = name.partition(":")[0]
    if kind not in ACCELERATORS and kind != accelerator():
        raise MnistlabError(f"--device {name[:40]}: expected auto, cpu, "
                            f"{', '.join(ACCELERATORS[:-1])} or {ACCELERATORS[-1]}")
    if not DEVICE_NAME.fullmatch(name):
        raise MnistlabError(f"--device {name[:40]}: {_kind_rule(kind)}")


def check_device_name(name: object) -> None:
    """Refuse a device that is no name, such as None or 0 from Python (the command's --device
    is always text), before anything compares it with a name or looks into it."""
    if not isinstance(name, str):
        raise MnistlabError(f"device: expected a name such as 'auto', 'cpu' or 'cuda:0', "
                            f"got {brief(name)}")


def _auto() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return accelerator() or "cpu"


def accelerator() -> str | None:
    """The type of the accelerator PyTorch reports as present (cuda, mps, xpu, ...), else None.
    `current_accelerator` is the one the build was made for, present or not: 2.6's raises when
    there is none, hence `is_available` first."""
    if not hasattr(torch, "accelerator") or not torch.accelerator.is_available():
        return None
    return torch.accelerator.current_accelerator().type


def device_count(kind: str) -> int:
    """How many devices of type `kind` PyTorch can use here: 0 when the machine or the build
    has none."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator() == kind:
        return torch.accelerator.device_count()
    # PyTorch before 2.6 has no torch.accelerator; its device modules answer the same question
    module = getattr(torch, kind, None)
    if hasattr(torch, "accelerator") or not hasattr(module, "is_available"):
        return 0
    # torch.mps has no device_count before 2.5: an Apple GPU is the one
    return getattr(module, "device_count", lambda: 1)() if module.is_available() else 0


def _label(kind: str) -> str:
    return "CUDA GPU" if kind == "cuda" else f"{kind.upper()} device"


def _kind_rule(kind: str) -> str:
    first = "a GPU is cuda" if kind == "cuda" else f"expected {kind}"
    return f"{first}, or {kind}:N for the N-th ({kind}:0, {kind}:1, ...)"


def wait_for(device: torch.device) -> None:
    """Let an accelerator finish its queued work, so that a clock read afterwards measures it;
    on the CPU the work is done when the call returns."""
    if device.type == "cpu":
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)
    else:  # PyTorch before 2.6: the device's own module
        getattr(torch, device.type).synchronize()


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of sums kept on `device` (a loss over an epoch, counts): float64 on the CPU and
    CUDA GPUs. Apple's GPUs have no float64 at all, and Intel's consumer GPUs none in hardware:
    float32 on other accelerators, which keeps a mean loss to 6 or 7 digits."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32

"""A run folder's safety checks: writable and roomy enough before the first step, and a failed
checkpoint write explained (which checkpoint survived, how to continue) instead of lost work."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes, remove_stale_temporaries
from mnistlab.models import build_model
from mnistlab.recipes import Recipe

PROBE = ".mnistlab-write-test"
MARGIN_BYTES = 1 << 20


def checkpoint_bytes(recipe: Recipe) -> int:
    """A generous estimate of the disk a run folder's checkpoints take, temporaries included:
    the weights in the model file and the training state, up to two optimiser slots per weight,
    and a second copy of each while its replacement is written."""
    with torch.device("meta"):  # sizes only: nothing is allocated or initialised for real
        model = build_model(recipe.model.name, init="pytorch", **recipe.model.args)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 2 * 4 * weights + MARGIN_BYTES


def check_writable(run_dir: Path, recipe: Recipe) -> None:
    """Write and remove a small file, then compare the free space with what the checkpoints need;
    clear what a killed writer left behind. Raise MnistlabError before any training is done."""
    remove_stale_temporaries(run_dir)  # a killed run's half-written files; its checkpoints stay
    probe = run_dir / PROBE
    try:
        atomic_write_bytes(probe, b"mnistlab\n")
        probe.unlink()
    except (MnistlabError, OSError) as e:
        cause = e if isinstance(e, OSError) else e.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e)
        raise MnistlabError(f"the run folder {run_dir} is not writable ({reason}); "
                            "choose another --out") from None
    free = shutil.disk_usage(run_dir).free
    needed = checkpoint_bytes(recipe)
    if free < needed:
        raise MnistlabError(f"only {_mb(free)} free where the run folder {run_dir} is; its "
                            f"checkpoints need about {_mb(needed)}: free some space or choose "
                            "another --out")


def save_failed(error: MnistlabError, run_dir: Path, step: int, saved_step: int | None) -> MnistlabError:
    """The error of a checkpoint write that failed at `step`, naming the one that survived."""
    if saved_step is None:
        kept = "no checkpoint had been saved yet"
    else:
        kept = (f"the checkpoint of step {saved_step} in {run_dir} is intact: once that is fixed, "
                f"continue with: mnistlab train --resume {run_dir}")
    return MnistlabError(f"{error}; training stopped at step {step}, and {kept}")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"

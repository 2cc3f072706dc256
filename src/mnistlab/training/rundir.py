"""A run folder's safety checks: one run's alone (a lock, and no files of anyone else's),
writable and roomy enough before the first step, and a failed checkpoint write explained (which
checkpoint survived, how to continue) instead of lost work."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

import torch

from mnistlab.checkpoint import MODEL_FILE, MODEL_META_FILE
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes, remove_stale_temporaries
from mnistlab.models import build_model
from mnistlab.recipebook import Recipe, RecipeError, recipe_from_dict
from mnistlab.training.state import STATE_FILE

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range lock, which Windows also frees with the process
    fcntl = None
    import msvcrt

PROBE = ".mnistlab-write-test"
MARGIN_BYTES = 1 << 20
# Held, with an OS lock, by the process training into the folder. The kernel frees the lock when
# that process ends however it ends (SIGKILL included), so a lock file left by a crash is simply
# taken over. The file itself stays: it marks the folder as one that mnistlab made a run in.
LOCK_FILE = ".mnistlab-lock"
METRICS_FILE = "metrics.jsonl"
# What a run writes into its folder before its first checkpoint: its log, and TensorBoard's
# event files (report/tensorboard.py's FOLDER, which this layer cannot import), with --tensorboard
BEFORE_FIRST_CHECKPOINT = {METRICS_FILE, "tensorboard"}
# the files whose half-written temporaries a killed run may leave (fileio.atomic_writer)
OURS = {METRICS_FILE, STATE_FILE, MODEL_FILE, MODEL_META_FILE, PROBE}


class RunLock:
    """The lock on a run folder, taken at once or refused with the folder's name; `release`
    frees it (the process's end does too)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.existed = self.path.exists()  # made by an earlier run of mnistlab in this folder
        self._fd: int | None = None
        for _ in range(10):  # another process may replace the file between open and lock
            fd = _open_lock_file(self.path)
            if not _try_lock(fd):
                os.close(fd)
                raise MnistlabError(f"{run_dir} is in use: another mnistlab process is training "
                                    f"into it{_holder(self.path)}; wait for it to end or choose "
                                    "another --out")
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise MnistlabError(f"cannot lock {self.path}: it keeps being replaced")
        self._fd = fd
        with contextlib.suppress(OSError):  # whose it is, for the message of a process refused
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())

    def release(self, *, remove: bool = False) -> None:
        """Free the lock; `remove` deletes the lock file too, for a folder the run leaves as it
        found it (it is deleted while still locked, so no other process holds the old file)."""
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)  # closing frees the lock
        self._fd = None


def _open_lock_file(path: Path) -> int:
    # never through a link, which could point a truncation at any file the user may write
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise MnistlabError(f"the run folder {path.parent} is not writable "
                            f"({e.strerror or e}); choose another --out") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MnistlabError(f"{path} is not a regular file: remove it, or choose another --out")
    return fd


def _try_lock(fd: int) -> bool:
    """Lock `fd` for this process without waiting; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (not one deleted and made anew meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _holder(path: Path) -> str:
    try:  # a few bytes: the process id its holder wrote
        with open(path, "rb") as f:
            pid = f.read(20).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def check_belongs_to_run(run_dir: Path, lock: RunLock) -> None:
    """Refuse, for a new run, a folder holding what is not this run's. A folder that mnistlab
    never ran in (no lock file before this run's) must be empty. One that a run of mnistlab
    stopped in before its first checkpoint (killed, say) may hold what such a run writes: its
    log, TensorBoard's files, its write probe and half-written temporary files, which this run
    replaces. A training state is a run to continue with --resume."""
    names = set(os.listdir(run_dir)) - {LOCK_FILE}
    if STATE_FILE in names:
        raise MnistlabError(f"{run_dir} already holds a run: continue it with --resume or "
                            "choose another --out")
    if lock.existed:
        names = {n for n in names - BEFORE_FIRST_CHECKPOINT - {PROBE}
                 if not _is_temporary_of(n, OURS)}
    if names:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise MnistlabError(f"{run_dir} holds files that are not this run's ({shown}): choose "
                            "a new or empty folder for --out, or continue a run of mnistlab "
                            "in it with --resume")


def _is_temporary_of(name: str, targets: set[str]) -> bool:
    """Whether `name` is a temporary file of an atomic write of one of `targets`
    (`.TARGET.XXXXXXXX.tmp`, fileio.atomic_writer's names)."""
    return name.endswith(".tmp") and any(name.startswith(f".{t}.") for t in targets)


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


def holds_a_run(folder: Path) -> bool:
    """Whether `folder` is a run's own folder: it holds a model, a log or a training state."""
    return any((folder / name).is_file() for name in (MODEL_FILE, METRICS_FILE, STATE_FILE))


def recorded_differences(run_dir: Path, recipe: Recipe, seed: int | None = None,
                         ignore: tuple[str, ...] = (),
                         start: tuple[str | None, str | None] | None = None) -> list[str] | None:
    """How the run a folder records (finished or not) differs from `recipe` (and `seed`, and
    `start`: the data folder and the checkpoint it started from, absolute paths or None): the
    recipe's sections that differ ("[train]", ...), "seed", "data folder" and "starting
    checkpoint"; None where no record can be read (no run yet, or a damaged one: the engine
    then judges the folder)."""
    try:
        meta = json.loads((run_dir / MODEL_META_FILE).read_text())
        theirs = recipe_from_dict(meta["recipe"], str(run_dir / MODEL_META_FILE)).to_dict()
        init = meta.get("init") or {}
        recorded_start = (meta.get("data_dir"), init.get("checkpoint"))
    except (OSError, ValueError, LookupError, TypeError, AttributeError, RecipeError):
        return None
    ours = recipe.to_dict()
    differ = [f"[{key}]" if isinstance(ours[key], dict) else key
              for key in ours if key not in ignore and theirs.get(key) != ours[key]]
    if seed is not None and meta.get("seed") != seed:
        differ.append("seed")
    if start is not None:
        differ += [name for name, a, b in zip(("data folder", "starting checkpoint"), start,
                                                recorded_start) if a != b]
    return differ


def differences_text(differ: list[str]) -> str:
    """`its [train] differs`, `its [train], seed differ`: recorded_differences said in words."""
    return f"its {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'}"

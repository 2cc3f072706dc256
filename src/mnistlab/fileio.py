"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The bytes go to a temporary file in the same folder, are flushed to disk, and the temporary
file is renamed over the target; the folder is then synced so the rename itself survives a
power cut. A process killed mid-write leaves at most a hidden `.NAME.XXXXXXXX.tmp` beside the
target, which `remove_stale_temporaries` clears.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mnistlab.errors import MnistlabError


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file for writing that replaces `path` only if the block completes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        # mkstemp creates the file private (0600); give it the permissions open() would have
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _pause_for_crash_tests()
        os.replace(tmp_name, path)
    except BaseException as e:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_error(path: Path, e: OSError) -> MnistlabError:
    """`cannot write PATH: REASON`, saying what to do when the disk is full."""
    text = f"cannot write {path}: {e.strerror or e}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (free some space and try again"
        text += f"; the previous {path.name} is unchanged)" if path.exists() else ")"
    return MnistlabError(text)


_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what mkstemp above names its files


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in `folder` (which only
    the caller writes to); return them."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def _pause_for_crash_tests() -> None:
    """Inert unless MNISTLAB_TEST_PAUSE_BEFORE_RENAME is set (seconds): the crash tests stretch
    the moment between a complete temporary file and its rename, to kill a process there."""
    pause = os.environ.get("MNISTLAB_TEST_PAUSE_BEFORE_RENAME")
    if pause:
        time.sleep(float(pause))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename has still happened
    finally:
        os.close(fd)

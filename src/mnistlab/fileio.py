"""Reading what a user hands us, bounded; writing atomically.

`path_argument` takes a path given to the Python API, or says which argument is no path
(`optional_path_argument` where None is allowed).

`read_limited` reads a regular file of at most a given size, counting what it really reads:
`stat` says 0 for /dev/zero and for files in /proc, and a FIFO or a device never ends, so
special files are refused by their type and no read goes past the limit.

Atomic writes: a reader sees the old file or the new one, never half of either. The bytes go to
a temporary file in the same folder, are flushed to disk, and the temporary file is renamed
over the target (or, for a file that must be new, linked to its name, which never replaces
one); the folder is then synced so the rename itself survives a power cut. A process killed
mid-write leaves at most a hidden `.NAME.XXXXXXXX.tmp` beside the target, which
`remove_stale_temporaries` clears.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mnistlab.errors import MnistlabError, brief


def path_argument(name: str, value: object, what: str = "a path") -> str:
    """`value`, given to the Python API as the argument `name`, as a path's text; anything but
    a str or an os.PathLike (None, a number, bytes, a list) is a MnistlabError naming the
    argument, where os.fspath would raise a TypeError that names none. Bytes are refused too:
    the checks after this one compare names and suffixes as text."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise MnistlabError(f"{name}: expected {what} (a str or os.PathLike), got {brief(value)}")


def optional_path_argument(name: str, value: object, what: str = "a path") -> str | None:
    """`path_argument` for an argument whose default is None: None stays None."""
    return None if value is None else path_argument(name, value, what)


def read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path`, refusing a special file (FIFO, device, socket,
    folder) by its type and a file longer than `limit` bytes by what is read, not by `stat`.
    `what` names the file in the errors ("recipe", "checkpoint", ...)."""
    with open_regular(path, what) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise MnistlabError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    if len(data) > limit:
        raise MnistlabError(f"{path}: the {what} is larger than the {limit:,} bytes allowed")
    return data


def open_regular(path: str | os.PathLike, what: str) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file; a FIFO, device, socket or
    folder is refused by its type, before anything is read from it."""
    path = Path(path)
    try:
        # non-blocking: opening a FIFO with no writer would otherwise wait before fstat refuses it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise MnistlabError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise MnistlabError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the path, which no file's name holds
        raise MnistlabError(f"{str(path)!r}: cannot read the {what}: {e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise MnistlabError(f"{path}: not a regular file ({_file_kind(mode)}); "
                            f"the {what} must be a file")
    return os.fdopen(fd, "rb")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "a special file")


@contextmanager
def atomic_writer(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Open a binary file for writing that replaces `path` only if the block completes.

    `exclusive`: create `path`, never replace it. Where `path` exists (or another process
    creates it meanwhile) the block's bytes are dropped and FileExistsError is raised: the
    complete temporary file is given its name by a hard link, which fails on an existing name,
    where a rename would replace it."""
    # an exclusive write refuses whatever is in its place already (the link below fails)
    path = Path(path) if exclusive else _write_target(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError) as e:  # a file where a folder should be
        raise MnistlabError(f"cannot write {path}: {_file_in_the_way(path.parent)} is a file, "
                            "not a folder") from e
    except OSError as e:
        raise write_error(path, e) from e
    except ValueError as e:  # a NUL byte in the path
        raise MnistlabError(f"cannot write {str(path)!r}: {e}") from None
    try:
        # mkstemp creates the file private (0600); give it the permissions open() would have
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _pause_for_crash_tests()
        if exclusive:
            os.link(tmp_name, path)
            _unlink_quietly(tmp_name)  # the file lives on under its name
        else:
            os.replace(tmp_name, path)
    except BaseException as e:
        _unlink_quietly(tmp_name)
        if isinstance(e, OSError) and not (exclusive and isinstance(e, FileExistsError)):
            raise write_error(path, e) from e
        raise
    _fsync_dir(path.parent)


def _write_target(path: Path) -> Path:
    """Where writing `path` puts the file: the file a symbolic link names (the link is kept),
    else `path`; refused where a folder, FIFO, device or socket is in its place, which a new
    file would replace."""
    try:
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except NotADirectoryError:  # a file where a folder should be: said when creating the folder
        return path
    except OSError as e:
        raise write_error(path, e) from None
    except ValueError as e:  # a NUL byte in the path
        raise MnistlabError(f"cannot write {str(path)!r}: {e}") from None
    if not stat.S_ISREG(mode):
        raise MnistlabError(f"cannot write {path}: {_file_kind(mode)} is in its place, not a "
                            "file")
    return target


def _file_in_the_way(folder: Path) -> Path:
    """The first part of `folder` that exists and is no folder."""
    for part in reversed([folder, *folder.parents]):
        if part.exists() and not part.is_dir():
            return part
    return folder


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    # a path's bytes that are no UTF-8 come to Python as lone surrogates: written as \udcff
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def check_writable(path: str | os.PathLike) -> None:
    """One clear error now for a file a long command writes at its end (a benchmark's, a load
    test's results), rather than after its minutes of work: a folder in its place, or no folder
    to hold it."""
    path = _write_target(Path(path))
    if not path.parent.is_dir():
        raise MnistlabError(f"cannot write {path}: no folder {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise MnistlabError(f"cannot write {path}: the folder {path.parent} is not writable")


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

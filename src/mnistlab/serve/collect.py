"""`mnistlab serve --collect DIR`: corrections from the drawing page, kept as training images.

A person who finds a reading wrong says what it was; the image is stored as it was sent (the
pad's PNG, not the 28x28 input the model saw) in `DIR/train/<class>/`, the image-folder layout
`mnistlab train --data-dir DIR` reads. The folder of a class is its name exactly, so a model's
class names must each be one plain path component: checked once, when the server starts, and
a client's label is only ever looked up among them, never made into a path.

Every file is written atomically and created, never replaced (`atomic_writer(exclusive=True)`):
its name is the time (UTC, to the microsecond) and 8 random hex digits, so several workers, or
several servers, can write into the same folder. A class's folder is made with its first
image: the reader refuses a class folder with no image in it. What one server process stores is
bounded (`MAX_FILES`, `MAX_BYTES`; each worker counts its own).
"""

from __future__ import annotations

import errno
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_writer
from mnistlab.serve.errors import (
    CollectionFullError,
    InvalidRequestError,
    StorageError,
    UnknownLabelError,
)

MAX_FILES = 10_000  # images one server process stores; a person correcting a page stores dozens
MAX_BYTES = 1 << 30  # 1 GiB of them: a pad's PNG is some 10 kB, an upload up to 10 MiB
LISTED = 12  # class names an error lists; a model may have up to 1,000
MAX_NAME_BYTES = 255  # a file name's limit on every common file system
NAME_TRIES = 8  # fresh random names tried if one is taken (a chance of 1 in 4 billion)
# characters no folder name of a class may hold: a path separator on some system, Windows'
# other reserved ones (a dataset moves between machines), and control characters
FORBIDDEN = set('/\\:*?"<>|') | {chr(c) for c in range(32)} | {"\x7f"}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}


def folder_problem(name: str) -> str | None:
    """Why the class name `name` cannot be its folder's name, or None if it can."""
    if not name or name in (".", ".."):
        return "not a folder name"
    if name.startswith("."):
        return "it starts with '.': a hidden folder, which the image-folder reader passes over"
    bad = sorted(set(name) & FORBIDDEN)
    if bad:
        return f"it holds {', '.join(repr(c) for c in bad)}"
    if name != name.strip():
        return "it starts or ends with a space"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def checked_class_names(class_names: list[str]) -> tuple[str, ...]:
    """The model's class names, each a folder's name, or one MnistlabError naming the first
    that cannot be one."""
    for name in class_names:
        problem = folder_problem(name)
        if problem:
            raise MnistlabError(f"--collect: the model's class {name!r} cannot name a folder "
                                f"({problem}); collecting needs class names that are plain "
                                "folder names")
    repeated = sorted({n for n in class_names if class_names.count(n) > 1})
    if repeated:
        raise MnistlabError(f"--collect: the model's class names repeat ({', '.join(repeated)}): "
                            "each class needs a folder of its own")
    return tuple(class_names)


def new_name(extension: str) -> str:
    """A file name no other writer picks: the time in UTC and 32 random bits."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(4)}{extension}"


class Collector:
    """Where one server stores corrections, and how many it has stored.

    Made when the server starts: the folder `DIR/train` is created if missing and a file is
    written into it and removed, so that a folder that cannot be written is one MnistlabError
    then, not a failure at the first correction. The limits are class attributes, so that a
    test can lower them."""

    max_files = MAX_FILES
    max_bytes = MAX_BYTES

    def __init__(self, folder: str | os.PathLike, class_names: list[str]):
        self.classes = checked_class_names(list(class_names))
        self.root = Path(folder)
        self.train = self.root / "train"
        self.files = self.bytes = 0  # stored, or reserved by a store in progress
        self._check_writable()

    def _check_writable(self) -> None:
        try:
            self.train.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MnistlabError(f"--collect {self.root}: cannot create the folder {self.train}: "
                                f"{e.strerror or e}") from None
        probe = self.train / f".mnistlab-probe-{secrets.token_hex(4)}"
        try:
            with atomic_writer(probe, exclusive=True) as f:
                f.write(b"probe")
            probe.unlink()
        except (MnistlabError, OSError) as e:
            raise MnistlabError(f"--collect {self.root}: cannot write into {self.train}: "
                                f"{_reason(e)}") from None

    def label(self, text: str | None) -> str:
        """The class a request's `label` names: one of the model's class names, exactly."""
        if text is None:
            raise InvalidRequestError("say what the image shows: ?label=<class>, one of the "
                                      f"model's classes ({_listed(self.classes)})")
        if text not in self.classes:
            raise UnknownLabelError(f"label {text[:100]!r} is not one of the model's classes "
                                    f"({_listed(self.classes)})")
        return text

    def reserve(self, size: int) -> None:
        """Count a store of `size` bytes about to be made, or refuse it past the limits."""
        if self.files + 1 > self.max_files or self.bytes + size > self.max_bytes:
            raise CollectionFullError(
                f"this server has stored its limit of {self.max_files:,} images "
                f"({self.max_bytes:,} bytes); restart it to collect more")
        self.files += 1
        self.bytes += size

    def release(self, size: int) -> None:
        """Uncount a store that `reserve` counted but that failed."""
        self.files -= 1
        self.bytes -= size

    def store(self, label: str, data: bytes, extension: str) -> str:
        """Write `data` as a new image of class `label` (from `label()`); its path relative to
        the collect folder, with '/'. Blocking: disk writes and fsyncs."""
        folder = self.train / label  # a checked name, one path component
        for _ in range(NAME_TRIES):
            name = new_name(extension)
            try:
                with atomic_writer(folder / name, exclusive=True) as f:
                    f.write(data)
            except FileExistsError:
                continue  # another writer's name, at the same microsecond: draw another
            except MnistlabError as e:
                raise StorageError(f"cannot store the image in train/{folder.name}/: "
                                   f"{_reason(e)}; nothing was stored") from None
            return f"train/{folder.name}/{name}"
        raise StorageError(f"cannot store the image in train/{folder.name}/: no free file name "
                           f"in {NAME_TRIES} tries; nothing was stored")


def _reason(e: BaseException) -> str:
    """What the system said of an OSError (or of the one behind a write's MnistlabError),
    without the path it named."""
    cause = e if isinstance(e, OSError) else e.__cause__
    if not isinstance(cause, OSError):
        return str(e)
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if cause.errno in (errno.EEXIST, errno.ENOTDIR):  # where a folder was to be made, or read
        return "not a folder"
    return cause.strerror or str(cause)


def _listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f", ... {len(names):,} in all" if len(names) > LISTED else "")

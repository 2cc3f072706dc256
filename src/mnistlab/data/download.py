"""Downloading one file: retries with backoff, a progress bar on a terminal, md5 before rename.

The bytes stream into a temporary file beside the destination, and the destination appears only
once the whole body has arrived and its md5 matches: an interrupted or wrong download never
leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mnistlab import __version__
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_writer


class DownloadError(MnistlabError):
    """A file could not be downloaded, or what arrived is not the expected file."""


class _Transient(Exception):
    """A failure worth another try (network trouble, a server error); not an OSError on purpose,
    so that `atomic_writer` does not report it as a write failure."""


class _Progress:
    """`name  12.3/26.4 MB  46%  3.2 MB/s` redrawn in place on stderr, at most 10 times a second."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self.start = self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and not final):
            return
        self.last = now
        mb = done / 1e6
        size = f"{mb:.1f}/{self.total / 1e6:.1f} MB" if self.total else f"{mb:.1f} MB"
        pct = f"  {100 * done / self.total:3.0f}%" if self.total else ""
        speed = mb / max(now - self.start, 1e-6)
        sys.stderr.write(f"\r{self.name}  {size}{pct}  {speed:.1f} MB/s" + ("\n" if final else ""))
        sys.stderr.flush()


def _too_large(url: str, size: int, max_bytes: int) -> DownloadError:
    return DownloadError(f"{url}: the server sends {size:,} bytes or more, more than the "
                         f"{max_bytes:,} allowed for this file; nothing was saved")


def _fetch(url: str, dest: Path, expected_md5: str | None, timeout: float, show: bool,
           max_bytes: int | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": f"mnistlab/{__version__}"})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(str(getattr(e, "reason", None) or e)) from e
    with resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise _too_large(url, total, max_bytes)
        bar = _Progress(dest.name, total, show)
        md5, done = hashlib.md5(usedforsecurity=False), 0
        with atomic_writer(dest) as f:
            try:
                while chunk := resp.read(1 << 16):
                    f.write(chunk)
                    md5.update(chunk)
                    done += len(chunk)
                    if max_bytes is not None and done > max_bytes:  # whatever it announced
                        raise _too_large(url, done, max_bytes)
                    bar.update(done)
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"connection lost after {done} bytes ({e})") from e
            bar.update(done, final=True)
            if total is not None and done != total:
                raise _Transient(f"received {done} of {total} bytes")
            if expected_md5 is not None and md5.hexdigest() != expected_md5:
                raise DownloadError(
                    f"{url}: md5 of the download is {md5.hexdigest()}, expected {expected_md5}; "
                    "nothing was saved"
                )


def download_file(
    url: str,
    dest: str | os.PathLike,
    expected_md5: str | None,
    *,
    retries: int = 3,
    timeout: float = 30,
    progress: bool | None = None,
    backoff: float = 1.0,
    max_bytes: int | None = None,
) -> Path:
    """Download `url` to `dest` atomically, checking its md5 when given; raise DownloadError.
    A body longer than `max_bytes` is refused as it arrives, and nothing is saved.

    Transient failures are tried again up to `retries` times, waiting backoff, 2*backoff, ...
    seconds. `progress` None shows a bar only when stderr is a terminal.
    """
    dest = Path(dest)
    show = sys.stderr.isatty() if progress is None else progress
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch(url, dest, expected_md5, timeout, show, max_bytes)
            return dest
        except _Transient as e:
            reason = str(e)
    raise DownloadError(f"{url}: {reason} (tried {retries + 1} times)")

"""The IDX file format (LeCun's format for MNIST): read, validate, write.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the data in row-major order, big-endian. Files are often gzip-compressed;
compression is detected from the content (1f 8b), never from the file name.

Every problem with a file raises `IdxError` with one line naming the file and what is wrong.
A compressed file is never decompressed past what its header declares (plus one byte to detect
trailing data), so a small malicious .gz cannot fill the memory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes

GZIP_MAGIC = b"\x1f\x8b"
MAX_DATA_BYTES = 2 * 1024**3  # the largest payload we agree to read (2 GiB)
_CHUNK = 1 << 22

# On-disk (big-endian) dtype of each IDX type code.
_CODES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_NATIVE = {dt.newbyteorder("="): code for code, dt in _CODES.items()}


class IdxError(MnistlabError):
    """An IDX file is missing, unreadable, corrupt or not an IDX file."""


def _dtype_name(dtype: np.dtype) -> str:
    return dtype.newbyteorder("=").name


def _supported() -> str:
    return ", ".join(f"0x{c:02X} {_dtype_name(d)}" for c, d in _CODES.items())


class _GzipReader:
    """Decompresses a gzip file on demand, never producing more bytes than asked for."""

    def __init__(self, f: BinaryIO, name: str):
        self._f = f
        self._name = name
        self._d = zlib.decompressobj(wbits=31)
        self._tail = b""  # compressed input not yet consumed by the decompressor

    def read(self, n: int) -> bytearray:
        out = bytearray()
        try:
            while len(out) < n:
                if self._d.eof:
                    # Concatenated gzip members are legal (gzip(1) reads them as one stream).
                    self._tail = self._d.unused_data or self._f.read(_CHUNK)
                    if not self._tail:
                        break
                    self._d = zlib.decompressobj(wbits=31)
                elif not self._tail:
                    self._tail = self._f.read(_CHUNK)
                    if not self._tail:
                        raise IdxError(
                            f"{self._name}: corrupt gzip stream: it ends before its end marker "
                            "(truncated download?)"
                        )
                out += self._d.decompress(self._tail, n - len(out))
                self._tail = b"" if self._d.eof else self._d.unconsumed_tail
        except zlib.error as e:
            raise IdxError(f"{self._name}: corrupt gzip stream ({e})") from e
        return out


def _read_exact(src: BinaryIO | _GzipReader, n: int) -> bytearray:
    if isinstance(src, _GzipReader):
        return src.read(n)
    buf = bytearray(n)
    got = src.readinto(buf)
    del buf[got:]
    return buf


def _read(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read and validate an IDX file; return the array and the md5 of its decompressed bytes."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
            f.seek(0)
            src = _GzipReader(f, name) if compressed else f
            return _parse(src, name, compressed, f)
    except FileNotFoundError as e:
        raise IdxError(f"{name}: no such file") from e
    except PermissionError as e:
        raise IdxError(f"{name}: permission denied") from e
    except OSError as e:
        raise IdxError(f"{name}: cannot read: {e.strerror or e}") from e


def _parse(
    src: BinaryIO | _GzipReader, name: str, compressed: bool, f: BinaryIO
) -> tuple[np.ndarray, str]:
    head = _read_exact(src, 4)
    if len(head) < 4:
        raise IdxError(f"{name}: truncated: {len(head)} bytes, shorter than the 4-byte IDX header")
    if head[0] != 0 or head[1] != 0:
        raise IdxError(
            f"{name}: not an IDX file: it starts with bytes {head[0]:02x} {head[1]:02x}, "
            "an IDX file starts with 00 00"
        )
    code, ndim = head[2], head[3]
    if code not in _CODES:
        raise IdxError(f"{name}: unknown IDX type code 0x{code:02X} (known: {_supported()})")
    if not 1 <= ndim <= 4:
        raise IdxError(f"{name}: header declares {ndim} dimensions; IDX files here have 1 to 4")
    dims_raw = _read_exact(src, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise IdxError(f"{name}: truncated: the header ends inside its {ndim} dimension sizes")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = _CODES[code]
    shape = "x".join(map(str, dims))
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if expected > MAX_DATA_BYTES:
        raise IdxError(
            f"{name}: header declares {shape} {_dtype_name(dtype)} ({expected} bytes of data), "
            f"more than the {MAX_DATA_BYTES} bytes mnistlab agrees to read: corrupt header?"
        )
    declared = f"header declares {shape} {_dtype_name(dtype)} ({expected} bytes of data)"
    st = os.fstat(f.fileno())
    if not compressed and stat.S_ISREG(st.st_mode) and st.st_size - f.tell() < expected:
        # refused before reading: a few bytes declaring 2 GiB must not cost 2 GiB of memory
        raise IdxError(f"{name}: truncated: {declared} but the file holds {st.st_size - f.tell()}")
    data = _read_exact(src, expected + 1)
    if len(data) < expected:
        raise IdxError(f"{name}: truncated: {declared} but the file holds {len(data)}")
    if len(data) > expected:
        if compressed:
            extra = "more after them"
        else:
            extra = f"{os.fstat(f.fileno()).st_size - len(head) - len(dims_raw) - expected} more"
        raise IdxError(f"{name}: trailing bytes: {declared} but the file holds {extra}")
    md5 = hashlib.md5(head, usedforsecurity=False)
    md5.update(dims_raw)
    md5.update(data)
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(dims)
    except ValueError:  # an empty array whose other sizes multiply past what numpy can index
        raise IdxError(f"{name}: {declared}: numpy cannot hold an array of that shape") from None
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array, md5.hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian array; raise IdxError if invalid."""
    return _read(path)[0]


def read_idx_and_md5(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Like `read_idx`, also returning the md5 of the decompressed file content."""
    return _read(path)


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of `array`."""
    array = np.asarray(array)
    code = _CODE_OF_NATIVE.get(array.dtype.newbyteorder("="))
    if code is None:
        raise IdxError(f"cannot write dtype {array.dtype} as IDX (supported: {_supported()})")
    if not 1 <= array.ndim <= 4:
        raise IdxError(f"cannot write a {array.ndim}-dimensional array as IDX (1 to 4 only)")
    if max(array.shape) >= 2**32:
        raise IdxError(f"cannot write shape {array.shape} as IDX: a size exceeds 2**32 - 1")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as IDX, atomically; gzip when `compress` (default: path ends in .gz)."""
    data = idx_bytes(array)
    if compress if compress is not None else str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: same bytes every time
    atomic_write_bytes(Path(path), data)

"""The IDX file format (LeCun's format for MNIST): read, validate, write.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the data in row-major order, big-endian. Files are often gzip-compressed;
compression is detected from the content (1f 8b), never from the file name.

Every problem with a file raises `IdxError` with one line naming the file and what is wrong.
Only a regular file is read (a FIFO or a device is refused by its type). What is read is
bounded by counting it, never by `stat`: at most `limit` bytes of data (plus one to detect
trailing data) are inflated from a compressed file, a few megabytes at a time so that the
memory follows what was inflated, and at most `MAX_COMPRESSED_BYTES` of it are read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes, open_regular

GZIP_MAGIC = b"\x1f\x8b"
# The most images one IDX file may hold, and the most bytes of data (decompressed) read from one.
# The largest real MNIST-format file is EMNIST's byclass training images: 697,932 images of
# 28x28, 547,178,688 bytes (MNIST's, Fashion-MNIST's and KMNIST's training images: 60,000, that
# is 47,040,000 bytes). 700,000 images of 28x28 admit it with a little room and no more: a file
# past that is no dataset of this kind, and a run's data stays near 1.1 GB even when its
# training and test images are both at the cap (docs/RELIABILITY.md measures `evaluate` there).
MAX_IMAGES = 700_000
MAX_DATA_BYTES = MAX_IMAGES * 28 * 28  # 548,800,000
# gzip never makes data larger than its framing adds (deflate's stored blocks: 5 bytes in every
# 65,535, and a few dozen for the header and trailer), so 1% more than the data is room enough
MAX_COMPRESSED_BYTES = MAX_DATA_BYTES + MAX_DATA_BYTES // 100
_CHUNK = 1 << 22  # compressed bytes read, and decompressed bytes made, at a time

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
    """Decompresses a gzip file on demand, never producing more bytes than asked for, and never
    reading more than `MAX_COMPRESSED_BYTES` of the file."""

    def __init__(self, f: BinaryIO, name: str):
        self._f = f
        self._name = name
        self._d = zlib.decompressobj(wbits=31)
        self._tail = b""  # compressed input not yet consumed by the decompressor
        self._compressed = 0  # bytes read from the file so far

    def _more(self) -> bytes:
        chunk = self._f.read(_CHUNK)
        self._compressed += len(chunk)
        if self._compressed > MAX_COMPRESSED_BYTES:
            raise IdxError(
                f"{self._name}: the compressed file is larger than the "
                f"{MAX_COMPRESSED_BYTES:,} bytes read from one IDX file (no MNIST-format "
                "dataset comes near it): not a dataset file"
            )
        return chunk

    def read(self, n: int) -> bytearray:
        out = bytearray()
        try:
            while len(out) < n:
                if self._d.eof:
                    # Concatenated gzip members are legal (gzip(1) reads them as one stream).
                    self._tail = self._d.unused_data or self._more()
                    if not self._tail:
                        break
                    self._d = zlib.decompressobj(wbits=31)
                elif not self._tail:
                    self._tail = self._more()
                    if not self._tail:
                        raise IdxError(
                            f"{self._name}: corrupt gzip stream: it ends before its end marker "
                            "(truncated download?)"
                        )
                # at most _CHUNK at a time: one call asked for all of `n` would hold it twice
                out += self._d.decompress(self._tail, min(n - len(out), _CHUNK))
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


def _read(path: str | os.PathLike, limit: int) -> tuple[np.ndarray, str]:
    """Read and validate an IDX file; return the array and the md5 of its decompressed bytes."""
    name = str(path)
    try:
        f = open_regular(path, "IDX data")
    except MnistlabError as e:  # missing, not allowed, or a FIFO, a device, a folder
        raise IdxError(str(e)) from None
    try:
        with f:
            compressed = f.read(2) == GZIP_MAGIC
            f.seek(0)
            src = _GzipReader(f, name) if compressed else f
            return _parse(src, name, compressed, f, limit)
    except OSError as e:
        raise IdxError(f"{name}: cannot read: {e.strerror or e}") from e


def _header(src: BinaryIO | _GzipReader, name: str) -> tuple[bytearray, bytearray, np.dtype]:
    """The IDX header's first four bytes, its dimension sizes, and the data's dtype."""
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
    return head, dims_raw, _CODES[code]


def _parse(
    src: BinaryIO | _GzipReader, name: str, compressed: bool, f: BinaryIO, limit: int
) -> tuple[np.ndarray, str]:
    head, dims_raw, dtype = _header(src, name)
    dims = struct.unpack(f">{head[3]}I", dims_raw)
    shape = "x".join(map(str, dims))
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    declared = f"header declares {shape} {_dtype_name(dtype)} ({expected} bytes of data)"
    if expected > limit:
        raise IdxError(
            f"{name}: {declared}, more than the {limit:,} bytes mnistlab reads from this file "
            f"(the largest MNIST-format dataset, EMNIST byclass, holds 697,932 images of 28x28): "
            "a corrupt header, or not an MNIST-format dataset"
        )
    size = os.fstat(f.fileno()).st_size
    if not compressed and size - f.tell() < expected:
        # refused before reading: a few bytes declaring 500 MB must not cost 500 MB of memory
        raise IdxError(f"{name}: truncated: {declared} but the file holds {size - f.tell()}")
    data = _read_exact(src, expected + 1)  # never more: what is read is bounded by the header
    if len(data) < expected:
        raise IdxError(f"{name}: truncated: {declared} but the file holds {len(data)}")
    if len(data) > expected:
        after = size - len(head) - len(dims_raw) - expected
        extra = "more after them" if compressed else f"{after} more"
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


def read_idx(path: str | os.PathLike, limit: int = MAX_DATA_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian array; raise IdxError if invalid or
    if its data (decompressed) is longer than `limit` bytes."""
    return _read(path, limit)[0]


def read_idx_and_md5(
    path: str | os.PathLike, limit: int = MAX_DATA_BYTES
) -> tuple[np.ndarray, str]:
    """Like `read_idx`, also returning the md5 of the decompressed file content."""
    return _read(path, limit)


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

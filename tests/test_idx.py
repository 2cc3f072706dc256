import gzip
import struct
import zlib

import numpy as np
import pytest

from mnistlab.data.idx import IdxError, idx_bytes, read_idx, write_idx
from mnistlab.errors import MnistlabError

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def sample(dtype: str, shape=(3, 4, 5)) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(-100, 100, size=shape) if dtype != "uint8" else rng.integers(0, 255, shape)
    return (a * (1.5 if dtype.startswith("float") else 1)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    a = sample(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4), (1, 2, 3, 4)])
def test_round_trip_ndims(tmp_path, shape):
    a = sample("int16", shape)
    write_idx(tmp_path / "a", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)


def test_gzip_detected_by_content_not_name(tmp_path):
    a = sample("uint8")
    write_idx(tmp_path / "plain.gz", a, compress=False)
    write_idx(tmp_path / "packed", a, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed"), a)


def test_gzip_is_reproducible(tmp_path):
    write_idx(tmp_path / "a.gz", sample("uint8"))
    write_idx(tmp_path / "b.gz", sample("uint8"))
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_idx_bytes_layout():
    data = idx_bytes(np.array([[1, 2, 3]], dtype=">i2"))
    assert data == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2, 0, 3])


@pytest.mark.parametrize("bad", [np.zeros(3, np.int64), np.zeros(3, bool), np.zeros(3, np.uint16)])
def test_write_refuses_unsupported_dtype(tmp_path, bad):
    with pytest.raises(IdxError, match="cannot write dtype"):
        write_idx(tmp_path / "x", bad)
    assert not (tmp_path / "x").exists()


def test_write_refuses_bad_ndim(tmp_path):
    with pytest.raises(IdxError, match="5-dimensional"):
        write_idx(tmp_path / "x", np.zeros((1,) * 5, np.uint8))


def header(code=0x08, dims=(2, 3)) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def check(tmp_path, content: bytes, *patterns: str, name="f-idx"):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IdxError) as info:
        read_idx(path)
    message = str(info.value)
    assert isinstance(info.value, MnistlabError)
    assert "\n" not in message and message.startswith(str(path))
    for p in patterns:
        assert p in message, message


def test_truncated(tmp_path):
    check(
        tmp_path,
        header(dims=(60000, 28, 28)) + bytes(1000),
        "truncated: header declares 60000x28x28 uint8 (47040000 bytes of data)",
        "holds 1000",
    )


def test_truncated_gzip_content(tmp_path):
    content = gzip.compress(header(dims=(60000, 28, 28)) + bytes(1000))
    check(tmp_path, content, "truncated", "holds 1000", name="f.gz")


def test_trailing_bytes(tmp_path):
    check(tmp_path, header() + bytes(6 + 5), "trailing bytes", "2x3 uint8", "5 more")
    check(tmp_path, gzip.compress(header() + bytes(7)), "trailing bytes", name="g.gz")


@pytest.mark.parametrize("content", [b"", b"\x00\x00", header()[:6]])
def test_truncated_header(tmp_path, content):
    check(tmp_path, content, "truncated")


def test_bad_magic(tmp_path):
    check(tmp_path, b"\x89PNG" + bytes(20), "not an IDX file", "89 50")


def test_bad_type_code(tmp_path):
    check(tmp_path, header(code=0x0A) + bytes(6), "unknown IDX type code 0x0A", "0x08 uint8")


@pytest.mark.parametrize("ndim", [0, 5, 200])
def test_bad_ndim(tmp_path, ndim):
    check(tmp_path, bytes([0, 0, 8, ndim]) + bytes(64), f"declares {ndim} dimensions", "1 to 4")


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(header() + bytes(range(6)))
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # inside the CRC
    check(tmp_path, bytes(flipped), "corrupt gzip", name="crc.gz")
    check(tmp_path, good[: len(good) // 2], "corrupt gzip", name="cut.gz")
    check(tmp_path, b"\x1f\x8b" + b"garbage" * 10, "corrupt gzip", name="junk.gz")


def test_absurd_declared_size(tmp_path):
    check(tmp_path, header(dims=(4_000_000_000, 28, 28)) + bytes(10), "more than the", "corrupt")


def test_gzip_bomb_is_not_inflated(tmp_path):
    # 2x3 declared, 200 MB of zeros behind it: reading must stop after 7 bytes of data.
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = z.compress(header()) + b"".join(z.compress(bytes(1 << 20)) for _ in range(200))
    bomb += z.flush()
    assert len(bomb) < 1_000_000
    check(tmp_path, bomb, "trailing bytes", name="bomb.gz")


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="no such IDX data file") as info:
        read_idx(tmp_path / "nope-idx1-ubyte")
    assert str(tmp_path / "nope-idx1-ubyte") in str(info.value)


def test_directory_is_an_error(tmp_path):
    with pytest.raises(IdxError, match=str(tmp_path)):
        read_idx(tmp_path)

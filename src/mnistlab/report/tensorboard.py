"""TensorBoard event files, written without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecords, each a serialized `Event` protocol buffer framed as

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian). We write only what scalar charts need: the first event names the file format
(`file_version`, "brain.Event:2"), every other one holds `wall_time`, `step` and a `Summary` of
`simple_value`s under their tags. TensorBoard reads `simple_value` as a scalar series.

A run's curves go into one folder per kind, like Keras' TensorBoard callback (the tutorials' tool):
`tensorboard/train`, `tensorboard/validation`, `tensorboard/test`, each with the tags `loss` and
`accuracy` (and `learning_rate` for train), so TensorBoard overlays training and validation on
one chart, and `tensorboard --logdir runs` shows every run side by side.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mnistlab.errors import MnistlabError

FOLDER = "tensorboard"
FILE_PREFIX = "events.out.tfevents."
FILE_VERSION = "brain.Event:2"
# metrics.jsonl event -> {record field: TensorBoard tag}
TAGS = {
    "train": {"loss": "loss", "accuracy": "accuracy", "lr": "learning_rate"},
    "validation": {"loss": "loss", "accuracy": "accuracy"},
    "test": {"loss": "loss", "accuracy": "accuracy"},
}

# ---- CRC-32C (Castagnoli), as TFRecord frames use it ------------------------------------


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord around `data`."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def unframe(blob: bytes) -> Iterator[bytes]:
    """The records of a TFRecord file, checking both checksums of each."""
    pos = 0
    while pos < len(blob):
        if pos + 12 > len(blob):
            raise MnistlabError(f"event file cut short at byte {pos}")
        header = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", blob[pos + 8 : pos + 12])
        data = blob[pos + 12 : pos + 12 + length]
        if crc != masked_crc32c(header) or len(data) != length or pos + 16 + length > len(blob):
            raise MnistlabError(f"event file: bad record at byte {pos}")
        (crc,) = struct.unpack("<I", blob[pos + 12 + length : pos + 16 + length])
        if crc != masked_crc32c(data):
            raise MnistlabError(f"event file: bad data checksum at byte {pos}")
        yield data
        pos += 16 + length


# ---- protocol buffers: the few fields of Event and Summary we need ----------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    """An Event: wall_time (1, double), step (2, int64), file_version (3) or summary (5), whose
    values (1) each hold a tag (1) and a simple_value (2, float)."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _bytes_field(5, values)
    return out


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: ints for varints, bytes for the others."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        elif wire_type == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise MnistlabError(f"event: unsupported protobuf wire type {wire_type}")
        yield field, value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise MnistlabError("event: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_event(data: bytes) -> dict[str, Any]:
    """The fields encode_event writes: wall_time, step, file_version and scalars {tag: value}."""
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0, "scalars": {}}
    for field, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for f, summary_value in _fields(value):
                if f != 1:
                    continue
                parts = dict(_fields(summary_value))
                if 1 in parts and 2 in parts:
                    event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    return event


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every event of one event file, decoded."""
    return [decode_event(record) for record in unframe(Path(path).read_bytes())]


# ---- writing a run's event files ----------------------------------------------------------


class EventWriter:
    """One event file, appended to and flushed record by record so TensorBoard sees it live."""

    _count = 0

    def __init__(self, folder: Path):
        EventWriter._count += 1
        name = (f"{FILE_PREFIX}{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{EventWriter._count}")
        self.path = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(self.path, "ab")
        except OSError as e:
            raise MnistlabError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._write(encode_event(time.time(), file_version=FILE_VERSION))

    def scalars(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self._write(encode_event(wall_time, step, scalars=values))

    def _write(self, event: bytes) -> None:
        self._file.write(frame(event))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Turns metrics.jsonl records into TensorBoard scalars: pass it as a Trainer's `on_log`.

    The first record starts new event files, replacing this run's earlier ones after replaying
    what metrics.jsonl still holds: a resumed run's charts then show what its metrics.jsonl
    shows, without the steps that were logged after the checkpoint it resumed from.
    """

    def __init__(self, run_dir: str | os.PathLike, metrics_file: str = "metrics.jsonl"):
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / FOLDER
        self.metrics_file = metrics_file
        self._writers: dict[str, EventWriter] | None = None  # by kind, opened when first needed

    def __call__(self, record: dict[str, Any]) -> None:
        if self._writers is None:
            self._start()
            earlier = _read_records(self.run_dir / self.metrics_file)
            self.write([r for r in earlier if r != record])
        self.write([record])

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        if self._writers is None:
            self._start()
        assert self._writers is not None
        for record in records:
            tags = TAGS.get(record.get("event"))  # type: ignore[arg-type]
            if not tags or not isinstance(record.get("step"), int):
                continue
            values = {tag: float(record[key]) for key, tag in tags.items()
                      if isinstance(record.get(key), (int, float))}
            if values:
                kind = record["event"]
                if kind not in self._writers:
                    self._writers[kind] = EventWriter(self.folder / kind)
                self._writers[kind].scalars(record["step"], values,
                                            float(record.get("time") or time.time()))

    def _start(self) -> None:
        for kind in TAGS:
            folder = self.folder / kind
            if folder.is_dir():
                for old in folder.glob(FILE_PREFIX + "*"):
                    try:
                        old.unlink()
                    except OSError:
                        pass
        self._writers = {}

    def close(self) -> None:
        for writer in (self._writers or {}).values():
            writer.close()


def _read_records(path: Path) -> list[dict[str, Any]]:
    from mnistlab.report.run import read_metrics

    try:
        return read_metrics(path)[0] if path.is_file() else []
    except MnistlabError:
        return []  # the report says what is wrong with the file; the charts go on without it

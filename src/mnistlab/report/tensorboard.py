"""TensorBoard event files of a run, written by PyTorch's `SummaryWriter`.

`torch.utils.tensorboard` needs the `tensorboard` package, the optional extra
`pip install "mnistlab[tensorboard]"`; it is imported only when event files are asked for, and
without it `TensorBoardLogger()` raises one `MnistlabError` that names the extra, before anything
is trained or written.

A run's curves go into one folder per kind, like Keras' TensorBoard callback (the tutorials' tool):
`tensorboard/train`, `tensorboard/validation`, `tensorboard/test`, each with the tags `loss` and
`accuracy` (and `learning_rate` for train), so TensorBoard overlays training and validation on
one chart, and `tensorboard --logdir runs` shows every run side by side.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mnistlab.errors import MnistlabError

FOLDER = "tensorboard"
FILE_PREFIX = "events.out.tfevents."
INSTALL = 'pip install "mnistlab[tensorboard]"'
# metrics.jsonl event -> {record field: TensorBoard tag}
TAGS = {
    "train": {"loss": "loss", "accuracy": "accuracy", "lr": "learning_rate"},
    "validation": {"loss": "loss", "accuracy": "accuracy"},
    "test": {"loss": "loss", "accuracy": "accuracy"},
}


def summary_writer_class() -> type:
    """`torch.utils.tensorboard.SummaryWriter`, imported now; without the `tensorboard`
    package (or with one that cannot be imported), a one-line error that names the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if e.name == "tensorboard":
            raise MnistlabError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
        reason = " ".join(str(e).split())  # one line, whatever the message
        raise MnistlabError(f"--tensorboard needs the tensorboard package, which cannot be "
                            f"imported ({reason}): {INSTALL}") from None
    return SummaryWriter


def _close_all(writers: dict[str, Any]) -> None:
    """Close each writer (a final flush, its thread stopped, its file closed), then forget it."""
    while writers:
        _, writer = writers.popitem()
        writer.close()


class TensorBoardLogger:
    """Turns metrics.jsonl records into TensorBoard scalars: pass it as a Trainer's `on_log`.

    The first record starts new event files, replacing this run's earlier ones after replaying
    what metrics.jsonl still holds: a resumed run's charts then show what its metrics.jsonl
    shows, without the steps that were logged after the checkpoint it resumed from.

    Each record is flushed to disk as it is written, so TensorBoard sees it live and a run
    stopped by Ctrl-C or an error leaves readable files; `close` (or leaving a `with` block,
    or the end of the process) closes them.
    """

    def __init__(self, run_dir: str | os.PathLike, metrics_file: str = "metrics.jsonl"):
        self._summary_writer = summary_writer_class()  # no tensorboard package: fail now
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / FOLDER
        self.metrics_file = metrics_file
        self._started = False
        self._writers: dict[str, Any] = {}  # a SummaryWriter by kind, opened when first needed
        # a run that ends without close() still has its files closed when the process ends
        weakref.finalize(self, _close_all, self._writers)

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, record: dict[str, Any]) -> None:
        if not self._started:
            self._start()
            earlier = _read_records(self.run_dir / self.metrics_file)
            self.write([r for r in earlier if r != record])
        self.write([record])

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Write the scalars of these records, then flush the files they went to."""
        if not self._started:
            self._start()
        touched = set()
        for record in records:
            tags = TAGS.get(record.get("event"))  # type: ignore[arg-type]
            if not tags or not isinstance(record.get("step"), int):
                continue
            values = {tag: float(record[key]) for key, tag in tags.items()
                      if isinstance(record.get(key), (int, float))}
            if values:
                kind = record["event"]
                wall_time = float(record.get("time") or time.time())
                with self._writing(kind):
                    if kind not in self._writers:
                        self._writers[kind] = self._summary_writer(str(self.folder / kind))
                    for tag, value in values.items():
                        self._writers[kind].add_scalar(tag, value, record["step"],
                                                       walltime=wall_time)
                touched.add(kind)
        for kind in touched:
            with self._writing(kind):
                self._writers[kind].flush()

    @contextlib.contextmanager
    def _writing(self, kind: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise MnistlabError(f"cannot write the TensorBoard event files in "
                                f"{self.folder / kind}: {e.strerror or e}") from None

    def _start(self) -> None:
        for kind in TAGS:
            folder = self.folder / kind
            if folder.is_dir():
                for old in folder.glob(FILE_PREFIX + "*"):
                    try:
                        old.unlink()
                    except OSError:
                        pass
        self._started = True

    def close(self) -> None:
        _close_all(self._writers)


def _read_records(path: Path) -> list[dict[str, Any]]:
    from mnistlab.report.run import read_metrics

    try:
        return read_metrics(path)[0] if path.is_file() else []
    except MnistlabError:
        return []  # the report says what is wrong with the file; the charts go on without it

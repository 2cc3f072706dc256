"""Export a checkpoint to ONNX, then prove the file computes what PyTorch does.

The proof runs both on the test images of the data the model was trained on (MNIST's, or a
folder of the user's own, as its checkpoint records): the file is read back from disk through
the reader `predict` and `serve` use (so what is checked is what was written, and that it
loads), and the report gives the largest difference in any probability and how often the two
predicted labels agree. Where that data is not at hand (a folder since moved, a dataset not
downloaded), MNIST's test images still prove the two agree, with no accuracy. The graph is
checked as on every load before it is written, and a NaN anywhere fails the export.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab.checkpoint import load_model, resolve_checkpoint, shipped_dir
from mnistlab.data.splits import Split, load_split
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import own_split
from mnistlab.fileio import atomic_write_bytes
from mnistlab.inference import onnxio
from mnistlab.inference.predictor import Predictor

VERIFY_IMAGES = 1000


@dataclass
class ExportReport:
    path: Path
    checkpoint: Path
    model: str
    opset: int
    size_bytes: int
    images: int  # test images both ran on
    dataset: str  # whose test images: the model's own, or "mnist" where those are not at hand
    max_abs_diff: float  # largest |p_onnx - p_torch| over every image and class
    agreement: float  # fraction of images given the same label by both
    torch_accuracy: float | None  # on those images, for scale; None on images not its own
    onnx_accuracy: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path), "checkpoint": str(self.checkpoint)}


def default_output(target: str | Path) -> Path:
    """Beside the checkpoint; a shipped model's file goes to the current folder instead
    (`mnistlab-default.onnx`, `mnistlab-keras-cnn.onnx`, ...): the package is not written into."""
    if shipped_dir(target) is not None:
        return Path(f"mnistlab-{target}.onnx")
    return resolve_checkpoint(target).with_suffix(".onnx")


def export_onnx(target: str | Path, out_path: str | Path | None = None, *,
                verify_images: int = VERIFY_IMAGES) -> ExportReport:
    """Write the checkpoint `target` as an ONNX file (atomically) and verify it."""
    started = time.perf_counter()
    out = Path(out_path) if out_path is not None else default_output(target)
    if out.suffix.lower() != ".onnx":
        raise MnistlabError(f"{out}: the output file's name must end in .onnx")
    if out.is_dir():
        raise MnistlabError(f"{out}: is a folder; name the .onnx file to write")
    model, meta = load_model(target, "cpu")
    data = onnxio.model_to_onnx(model, meta)
    Predictor.from_onnx(data, str(out))  # the checks on load, before anything is written
    atomic_write_bytes(out, data)

    reference = Predictor.load(str(target), backend="torch", device="cpu")
    exported = Predictor.load(str(out), backend="onnx")  # read back through our own reader
    test, dataset, own = _test_images(target, meta)
    count = min(max(1, verify_images), len(test))
    images = test.images[:count].numpy()
    labels = test.labels[:count].numpy()
    p_torch = reference.probabilities(images)
    p_onnx = exported.probabilities(images)
    for side, probabilities in (("PyTorch", p_torch), ("ONNX Runtime", p_onnx)):
        if not np.isfinite(probabilities).all():  # NaN compares as neither more nor less
            raise MnistlabError(f"{out}: not verified: {side} gives NaN or infinite "
                                f"probabilities for some of {count:,} {dataset} test images")
    return ExportReport(
        path=out,
        checkpoint=resolve_checkpoint(target),
        model=str((meta.get("model") or {}).get("name")),
        opset=onnxio.OPSET,
        size_bytes=len(data),
        images=count,
        dataset=dataset,
        max_abs_diff=float(np.abs(p_onnx - p_torch).max()),
        agreement=float((p_onnx.argmax(1) == p_torch.argmax(1)).mean()),
        torch_accuracy=float((p_torch.argmax(1) == labels).mean()) if own else None,
        onnx_accuracy=float((p_onnx.argmax(1) == labels).mean()) if own else None,
        seconds=time.perf_counter() - started,
    )


def _test_images(target: str | Path, meta: dict[str, Any]) -> tuple[Split, str, bool]:
    """The test split of the model's own data, its name and True; MNIST's test split, "mnist"
    and False where that data cannot be read here."""
    cpu = torch.device("cpu")
    try:
        test, dataset, _, _ = own_split(meta, "test", None, cpu, str(target))
        return test, dataset, True
    except MnistlabError:
        return load_split("test", "mnist", None, cpu), "mnist", False


def format_report(report: ExportReport) -> str:
    return "\n".join([
        f"written: {report.path} ({report.size_bytes:,} bytes, ONNX opset {report.opset}, "
        f"{report.model}, dynamic batch)",
        f"verified on {report.images:,} {_named(report.dataset)} test images against PyTorch: largest "
        f"probability difference {report.max_abs_diff:.2e}, labels agree on "
        f"{100 * report.agreement:.2f}% " + _accuracies(report),
    ])


def _named(dataset: str) -> str:
    return "MNIST" if dataset == "mnist" else dataset


def _accuracies(report: ExportReport) -> str:
    if report.onnx_accuracy is None or report.torch_accuracy is None:
        return "(not the images this model was trained on, which are not at hand: no accuracy)"
    return (f"(accuracy {100 * report.onnx_accuracy:.2f}% ONNX, {100 * report.torch_accuracy:.2f}% "
            "PyTorch)")

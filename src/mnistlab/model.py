"""A trained model, ready to use from Python: `mnistlab.load` and the `Model` it gives.

`Model` is the public face of a checkpoint (a run folder, a model.safetensors file, an .onnx
file or `default`, the shipped model): it reads people's pictures as `mnistlab predict` does,
gives probabilities for images already in MNIST's form, and measures, summarises and exports
itself. The commands `predict`, `evaluate`, `summary` and `export` are built on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mnistlab.checkpoint import load_model, resolve_checkpoint, shipped_dir
from mnistlab.device import check_device_name, resolve_device
from mnistlab.errors import MnistlabError, brief, check_flag
from mnistlab.evaluate import Evaluation, evaluate_model
from mnistlab.fileio import optional_path_argument, path_argument
from mnistlab.inference.errors import BadPixelsError, UnsupportedImageError
from mnistlab.inference.export import ExportReport, export_onnx
from mnistlab.inference.images import MAX_IMAGE_PIXELS, load_image, usable_image
from mnistlab.inference.onnxio import check_threads
from mnistlab.inference.predictor import BACKENDS, Predictor, check_onnx_device
from mnistlab.inference.preprocess import pixel_bytes
from mnistlab.inference.reading import DEFAULT_TOP_K, Reading, read_image
from mnistlab.models import format_summary

__all__ = ["Model", "load"]


def load(target: str | os.PathLike = "default", *, backend: str | None = None,
         device: str = "auto", threads: int | None = None) -> Model:
    """The model a checkpoint holds, checked on a few MNIST images as it loads.

    `target` is a run folder, a model.safetensors file, an .onnx file or "default" (the model
    shipped with mnistlab). `backend` is "torch" or "onnx" (ONNX Runtime); by default .onnx
    files run on ONNX Runtime and the rest on PyTorch. `device` is "auto" (an accelerator if
    there is one, else the CPU), "cpu", "cuda", "mps"...; ONNX Runtime runs on the CPU.
    `threads` (1 to 1,024) is how many threads ONNX Runtime may use for this model (None: its
    default, a thread per core); it is checked on either backend but applies to ONNX Runtime
    only: PyTorch's threads are the whole process's, set with `torch.set_num_threads`.

    >>> model = mnistlab.load("default")
    >>> model
    Model('default': mnistlab-cnn, 10 classes, torch on cpu)
    """
    target = path_argument("target", target, "a run folder, a model file or 'default'")
    check_device_name(device)
    check_threads(threads)  # the same check on both backends, though PyTorch does not use it
    if backend is None:
        backend = "onnx" if target.lower().endswith(".onnx") else "torch"
    if backend not in BACKENDS:
        raise MnistlabError(f"unknown backend {backend!r}: expected {' or '.join(BACKENDS)}")
    if backend == "onnx":
        device = "cpu" if device == "auto" else device  # the one ONNX Runtime runs on here
        check_onnx_device(device)  # for a checkpoint too, before it loads
        if target.lower().endswith(".onnx"):
            return Model(target, Predictor.load(target, backend="onnx", device=device,
                                                threads=threads))
    dev = resolve_device(device)
    module, meta = load_model(target, dev)
    predictor = Predictor.from_model(module, meta, resolve_checkpoint(target), backend=backend,
                                     threads=threads)
    return Model(target, predictor, module, meta)


class Model:
    """A trained model: `predict`, `predict_proba`, `evaluate`, `summary`, `export`.

    Made by `mnistlab.load` (or `run.model` after `mnistlab.train`). Its attributes:
    `target` (what it was loaded from), `path` (the model file), `backend`, `device`,
    `class_names`, `test_accuracy` (as recorded when it was trained, or None), `info` (all
    of these as a dict) and `module`, the PyTorch module (None for an .onnx file).
    """

    def __init__(self, target: str, predictor: Predictor, module: nn.Module | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.target = target
        # where export reads the checkpoint again: found from any working folder later
        self._source = target if shipped_dir(target) is not None else os.path.abspath(target)
        self.module = module
        self._predictor = predictor
        self._meta = meta or {}
        self.info = info = predictor.info  # what `mnistlab predict --json` says of the model
        self.path = Path(info["checkpoint"])
        self.backend: str = info["backend"]
        self.device: str = info["device"]
        self.class_names: list[str] = info["class_names"]
        self.test_accuracy: float | None = info["test_accuracy"]
        self.name: str | None = info["model"]

    def __repr__(self) -> str:
        return (f"Model({self.target!r}: {self.name}, {len(self.class_names)} classes, "
                f"{self.backend} on {self.device})")

    def predict(self, images: Any, *, top_k: int | None = None, number: bool = False) -> list[Reading]:
        """Read pictures of digits as `mnistlab predict` does: one `Reading` per picture.

        `images` is one picture or a list of them: a file's path, a PIL image, or a numpy array
        or tensor of any size (H x W grey, H x W x 2 grey with alpha, H x W x 3 or 4 colour; a
        3-D array without 1 to 4 channels, or a 4-D one, is a stack of pictures). Each is
        turned into MNIST's form (the ink found, scaled into 20x20, centred by mass), so dark
        ink on white paper reads as well as MNIST's own light-on-dark digits. A picture holding
        several separate digits is read as a number, left to right; `number=True` reads every
        picture so. `top_k` candidates are listed for each digit: by default 3, or the model's
        classes where fewer.

        >>> import numpy as np
        >>> images, labels = mnistlab.datasets.load("mnist", split="test")
        >>> model.predict(255 - images[0])                # dark ink on white, as on paper
        [Reading(digit '7', confidence 91.8%)]
        >>> model.predict(np.hstack(255 - images[:3]))    # three digits side by side
        [Reading(number '721', confidence 91.2%)]
        >>> first, second = model.predict([255 - images[0], images[1]], top_k=3)
        >>> [digit for digit, probability in second.digits[0].top]   # likeliest first
        ['2', '8', '5']
        """
        count = len(self.class_names)
        if top_k is None:
            top_k = min(DEFAULT_TOP_K, count)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= count:
            raise MnistlabError(f"top_k must be from 1 to {count}, got {brief(top_k)}")
        number = check_flag("number", number)
        return [read_image(self._predictor, picture, top_k=top_k, number=number)
                for picture in _pictures(images)]

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities, (N, classes) float32, for images already in MNIST's form:
        uint8 (N, 28, 28) or one (28, 28), light ink on 0, as `mnistlab.datasets.load` gives
        them. Nothing is moved or rescaled.

        >>> images, labels = mnistlab.datasets.load("mnist", split="test")
        >>> p = model.predict_proba(images[:5])
        >>> p.shape, p.argmax(axis=1).tolist(), labels[:5].tolist()
        ((5, 10), [7, 2, 1, 0, 4], [7, 2, 1, 0, 4])
        """
        array = _array(images)
        if array.ndim == 2:
            array = array[None]
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (28, 28):
            raise BadPixelsError(f"predict_proba takes uint8 images of shape (N, 28, 28) in "
                                 f"MNIST's form, got {array.dtype} {array.shape}; use predict "
                                 "for pictures of any size")
        return self._predictor.probabilities(array)

    def evaluate(self, split: str = "test", *, data_dir: str | os.PathLike | None = None) -> Evaluation:
        """Accuracy, loss, per-class accuracy and the confusion matrix on a split ("test",
        "validation", "train" or "train-full") of the dataset the model was trained on, or of
        the IDX files in `data_dir`, as `mnistlab evaluate` measures them.

        >>> result = model.evaluate()
        >>> result
        Evaluation(test: accuracy 99.74%, loss 0.1041, 10,000 images)
        >>> result.metrics.confusion[9][4]  # nines read as fours
        6
        """
        folder = optional_path_argument("data_dir", data_dir, "a folder")
        module = self.module if self.backend == "torch" else _ProbabilitiesModule(self._predictor)
        return evaluate_model(module, self._predictor_meta(), self.path, split=split,
                              data_dir=folder, named=self.target)

    def summary(self) -> None:
        """Print a Keras-style table of the layers: output shapes and parameter counts.

        >>> model.summary()  # doctest: +ELLIPSIS
        Model: "mnistlab-cnn (default)"
        ...
        Total params: 307,370
        ...
        """
        if self.module is None:
            raise MnistlabError(f"{self.target}: an ONNX file has no PyTorch layers to list; "
                                "summarise the checkpoint it was exported from")
        print(format_summary(self.module, f"{self.name} ({self.target})"))

    def export(self, path: str | os.PathLike | None = None) -> ExportReport:
        """Write the model as an ONNX file and verify it against PyTorch on 1,000 test images
        of the data it was trained on, as `mnistlab export` does; raises MnistlabError if the
        two disagree. The file goes beside the checkpoint unless `path` names it (a shipped
        model's, into the current folder: `mnistlab-default.onnx`).
        """
        path = optional_path_argument("path", path, "the .onnx file's path")
        if self.module is None:
            raise MnistlabError(f"{self.target}: is already an ONNX file")
        report = export_onnx(self._source, path)
        if not (report.max_abs_diff <= 1e-4 and report.agreement == 1.0):  # NaN fails too
            raise MnistlabError(
                f"{report.path} does not compute what PyTorch does: largest probability "
                f"difference {report.max_abs_diff:.2e}, labels agree on "
                f"{100 * report.agreement:.2f}% of {report.images:,} test images")
        return report

    def _predictor_meta(self) -> dict[str, Any]:
        """The checkpoint's metadata; an ONNX file's is what its graph records."""
        if self._meta:
            return self._meta
        return {"class_names": self.class_names}


class _ProbabilitiesModule(nn.Module):
    """An ONNX model as a module `evaluate_model` can measure: MNIST's float input back to
    the uint8 images the predictor takes (k/255 times 255 rounds to k exactly), and out the
    log of its probabilities, as `ensemble.Committee` gives them."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x[:, 0].mul(255).round_().to(torch.uint8).cpu().numpy()
        probabilities = torch.from_numpy(self.predictor.probabilities(images))
        return probabilities.clamp_min(1e-12).log()


def _pictures(images: Any) -> Iterable[Image.Image]:
    """Each picture in `images` (see `Model.predict`) as a PIL image."""
    if isinstance(images, (str, os.PathLike)):
        return [load_image(os.fspath(images))]
    if isinstance(images, Image.Image):
        return [usable_image(images)]
    if isinstance(images, torch.Tensor) and images.is_nested:  # pictures of several sizes
        return [p for picture in images.unbind() for p in _pictures(picture)]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        array = _array(images)
        if _is_stack(array):
            return [_picture(a, stack=array.shape) for a in array]
        return [_picture(array)]
    if isinstance(images, (list, tuple)):
        if any(isinstance(item, (int, float, np.number)) for item in images):  # as tolist() gives
            raise UnsupportedImageError("a list of numbers is not a picture: give a picture's "
                                        "rows as a numpy array (np.asarray) or a tensor")
        return [p for item in images for p in _pictures(item)]
    raise UnsupportedImageError(f"cannot read a {type(images).__name__} as a picture: give a "
                                "file's path, a PIL image, a numpy array or a tensor, or a list")


def _array(images: Any) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        return _tensor_array(images)
    try:
        return np.asarray(images)
    except ValueError:  # nested lists of unequal lengths
        raise BadPixelsError("the images' rows differ in length: predict_proba takes uint8 "
                             "images of shape (N, 28, 28); use predict for pictures of any "
                             "size") from None


def _tensor_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as numpy holds them: sparse ones made dense, and floats numpy has no
    type for (bfloat16, float8) widened to float32, which holds each of their values exactly."""
    if tensor.is_meta:  # shapes only, as a model built on the meta device has
        raise BadPixelsError(f"a tensor on the meta device has no pixel values "
                             f"(shape {tuple(tensor.shape)})")
    if tensor.is_nested:  # predict_proba's batch, which must be one size
        pictures = tensor.unbind()
        if len({picture.shape for picture in pictures}) > 1:
            raise BadPixelsError("a nested tensor's pictures differ in size: predict_proba "
                                 "takes uint8 images of shape (N, 28, 28); use predict for "
                                 "pictures of any size")
        tensor = torch.stack(pictures) if pictures else torch.empty(0, dtype=tensor.dtype)
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32,
                                                           torch.float64):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


# a picture's channels by their count: grey, grey with alpha, colour, colour with alpha
MODES = {2: "LA", 3: "RGB", 4: "RGBA"}
CHANNELS = (1, *MODES)


def _is_stack(array: np.ndarray) -> bool:
    """A 4-D array, or a 3-D one whose last axis is no count of channels (1 to 4 values)."""
    return array.ndim == 4 or (array.ndim == 3 and array.shape[-1] not in CHANNELS)


def _picture(array: np.ndarray, stack: tuple[int, ...] | None = None) -> Image.Image:
    """One picture's array (H x W, H x W x C, or a tensor's C x H x W) as a PIL image; `stack`
    is the shape of the stack it came from, for the message."""
    if array.ndim == 3 and array.shape[0] in CHANNELS and array.shape[-1] not in CHANNELS:
        array = np.moveaxis(array, 0, -1)  # PyTorch's channels first
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in MODES)) or array.size == 0:
        within = f" (one of a stack of shape {stack})" if stack is not None else ""
        raise BadPixelsError(f"a picture's array must be H x W or H x W x 2, 3 or 4, got shape "
                             f"{array.shape}{within}")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise BadPixelsError(f"a picture of {array.shape[0]:,} x {array.shape[1]:,} pixels is "
                             f"more than the {MAX_IMAGE_PIXELS:,} read")
    return Image.fromarray(_bytes(array), "L" if array.ndim == 2 else MODES[array.shape[-1]])


def _bytes(array: np.ndarray) -> np.ndarray:
    """Pixel values to uint8: 0-255 as they are, 0-1 (floats, or booleans) scaled up."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    kind = array.dtype.kind  # booleans, integers or floats: complex ones would lose a part
    if kind not in "biuf":
        real = "real " if kind == "c" else ""
        raise BadPixelsError(f"pixels must be {real}numbers, got {array.dtype}")
    return pixel_bytes(array.astype(np.float64))

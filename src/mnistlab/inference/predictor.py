"""A checkpoint ready to answer: MNIST-layout images in, class probabilities out.

Two backends compute the same function: PyTorch over the checkpoint's model, or ONNX Runtime
over an exported graph (an .onnx file, or a checkpoint exported in memory on load). Both are
safe to call from several threads at once: the torch model is only ever read (eval mode, under
inference_mode), and an ONNX Runtime session's `run` is thread-safe. `Predictor.interrupt`
stops the inferences in progress, from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab.checkpoint import (
    CHECK_BATCHES,
    MODEL_FIELDS,
    check_answers,
    check_fields,
    check_images,
    class_names,
    input_normalisation,
    load_model,
    resolve_checkpoint,
)
from mnistlab.cpu_memory import keep_freed_memory
from mnistlab.data.splits import as_input
from mnistlab.device import check_device_spelling, resolve_device
from mnistlab.errors import MnistlabError
from mnistlab.inference import onnxio
from mnistlab.inference.errors import InferenceError, InferenceInterrupted
from mnistlab.models import count_parameters

BACKENDS = ("torch", "onnx")
BATCH_SIZE = 256  # what evaluation found fastest on the CPU (docs/BENCHMARKS.md)
# the check on load of an ONNX graph (a few images, milliseconds for ours) stops after this:
# a graph can hold a Loop of days, and a model this slow could not serve anyway
CHECK_SECONDS = 5.0


def check_onnx_device(device: object) -> None:
    """ONNX Runtime runs here on the CPU: refuse any other device, a misspelt name as such."""
    check_device_spelling(device)
    if device != "cpu":
        raise MnistlabError(f"--device {device}: the onnx backend runs on the CPU only: use "
                            "--device cpu")


class Predictor:
    """Probabilities for (N, 28, 28) uint8 images, light ink on 0, as `to_mnist` makes them."""

    def __init__(self, run: Callable[[np.ndarray, Callable[[], bool]], np.ndarray],
                 info: dict[str, Any], batch_size: int = BATCH_SIZE,
                 stop_runs: Callable[[], None] | None = None) -> None:
        # one batch of uint8 images to float32 probabilities; the second argument says whether
        # the call was interrupted since it began
        self._run = run
        self.info = info
        self.batch_size = batch_size
        self._stop_runs = stop_runs  # stops the backend's runs in flight, where it can
        self._interruptions = 0  # a call began before an interrupt when this changed since
        # the PyTorch model and its input's (scale, mean, std), when built from a checkpoint:
        # what explanations need (gradients, layer outputs), whichever backend predicts
        self.module: torch.nn.Module | None = None
        self.normalisation: tuple[float, float, float] | None = None

    def interrupt(self) -> None:
        """Stop every inference in progress as soon as the backend allows: each such call of
        `probabilities` raises InferenceInterrupted; later calls run as usual. Safe from any
        thread.

        ONNX Runtime: the runs in flight are terminated (it checks between operators, inside a
        Loop too), and a call of several batches stops before its next one. PyTorch offers no
        way to stop a forward pass and needs none here: our models' sizes are bounded before
        they are built and a batch takes milliseconds, so a call stops before its next batch.
        """
        self._interruptions += 1
        if self._stop_runs is not None:
            self._stop_runs()

    @classmethod
    def load(cls, target: str = "default", *, backend: str = "torch",
             device: str = "cpu", threads: int | None = None) -> Predictor:
        """A predictor over a run folder, a model.safetensors file, `default` (the shipped
        model) or, for the onnx backend, an .onnx file.

        `threads` sets ONNX Runtime's threads for this predictor (`onnxio.open_session`; None:
        its defaults). PyTorch's threads are the process's, set with torch.set_num_threads."""
        if backend not in BACKENDS:
            raise MnistlabError(f"unknown backend {backend!r}: expected {' or '.join(BACKENDS)}")
        target = str(target)
        if backend == "onnx":
            check_onnx_device(device)
            if target.lower().endswith(".onnx"):
                return cls._from_onnx_file(Path(target), threads)
        elif target.lower().endswith(".onnx"):
            raise MnistlabError(f"{target}: an ONNX file needs the onnx backend (--backend onnx)")

        dev = resolve_device(device)
        model, meta = load_model(target, dev)  # checked on load: finite answers, one per class
        return cls.from_model(model, meta, resolve_checkpoint(target), backend=backend,
                              threads=threads)

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: dict[str, Any], path: Path, *,
                   backend: str = "torch", threads: int | None = None) -> Predictor:
        """A predictor over a model `load_model` built from the checkpoint at `path` (checked
        there), on the device its weights are on."""
        model.eval()  # predictions are deterministic: dropout off even where a tutorial left it on
        dev = next(model.parameters()).device
        info = _info(meta, path, backend, str(dev), count_parameters(model))
        if backend == "onnx":
            predictor = cls.from_onnx(onnxio.model_to_onnx(model, meta), str(path),
                                      threads=threads, info=info)
        else:
            predictor = cls(_torch_runner(model, meta, dev, str(path)), info)
        predictor.module = model
        predictor.normalisation = input_normalisation(meta, path)[:3]
        return predictor

    @classmethod
    def _from_onnx_file(cls, path: Path, threads: int | None = None) -> Predictor:
        return cls.from_onnx(onnxio.read_onnx(path), str(path), threads=threads)

    @classmethod
    def from_onnx(cls, data: bytes, where: str, *, threads: int | None = None,
                  info: dict[str, Any] | None = None) -> Predictor:
        """A predictor over the bytes of an ONNX file (`where` names it in errors), refused
        unless its input and output are what mnistlab feeds and reads and it answers a few
        MNIST test images within CHECK_SECONDS, as `checkpoint.load_model` checks a model."""
        session = onnxio.open_session(data, where, threads)
        meta = onnxio.session_meta(session, where)
        check_fields(meta, Path(where), MODEL_FIELDS)  # as a checkpoint's: a file from anywhere
        if info is None:
            info = _info(meta, Path(where), "onnx", "cpu", meta.get("parameters"))
        classes = len(info["class_names"])
        onnxio.check_signature(session, where, classes)
        runner = _OnnxRunner(session, input_normalisation(meta, where))
        for count in CHECK_BATCHES:
            answer = runner.run_within(check_images()[:count], CHECK_SECONDS, where)
            check_answers(answer, count, classes, where, probabilities=True)
        return cls(runner, info, stop_runs=runner.stop_all)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 to (N, classes) float32 probabilities, in batches."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise MnistlabError(f"expected uint8 images of shape (N, 28, 28), got "
                                f"{images.dtype} {images.shape}")
        classes = len(self.info["class_names"])
        if len(images) == 0:
            return np.zeros((0, classes), dtype=np.float32)
        images = np.ascontiguousarray(images)
        began = self._interruptions

        def interrupted() -> bool:
            return self._interruptions != began

        out = []
        for i in range(0, len(images), self.batch_size):
            if interrupted():
                raise InferenceInterrupted("the inference was interrupted")
            out.append(self._run(images[i:i + self.batch_size], interrupted))
        probabilities = np.concatenate(out).astype(np.float32, copy=False)
        unusable = int((~np.isfinite(probabilities)).any(axis=1).sum())
        if unusable:  # a model that passed the check on load can still fail on other images
            raise InferenceError(f"the model gives NaN or infinite probabilities for {unusable} "
                                 f"of {len(images)} image(s): it cannot read them")
        return probabilities


def _info(meta: dict[str, Any], path: Path, backend: str, device: str,
          parameters: int | None) -> dict[str, Any]:
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    accuracy = test.get("accuracy")
    return {
        "model": model.get("name"),
        "args": model.get("args", {}),
        "parameters": parameters,
        "checkpoint": str(path),
        "backend": backend,
        "device": device,
        "test_accuracy": accuracy if isinstance(accuracy, (int, float)) else None,
        "class_names": class_names(meta),
    }


def padded_size(count: int) -> int:
    """The batch size a torch model runs `count` images at: `count` rounded up to a ladder of
    four sizes per doubling (1-8, 10, 12, 14, 16, 20, ..., 224, 256). oneDNN keeps the kernels
    it prepares for every input shape it meets, about 6 MB each for the shipped model: a server
    seeing every batch size from 1 to 256 grew to 1.9 GB that way. The ladder's 28 sizes keep
    that bounded, for less than a quarter more work a batch, an eighth on average (in eval mode
    the model's answer to an image does not depend on the others in its batch)."""
    step = 1 << max(0, (count - 1).bit_length() - 3)
    return -(-count // step) * step


def _torch_runner(model: torch.nn.Module, meta: dict[str, Any], device: torch.device,
                  where: str) -> Callable[[np.ndarray, Callable[[], bool]], np.ndarray]:
    scale, mean, std, plain = input_normalisation(meta, where)
    if device.type == "cpu":
        keep_freed_memory()  # each call reuses the last one's activations: no page faults

    @torch.inference_mode()
    def run(batch: np.ndarray, interrupted: Callable[[], bool]) -> np.ndarray:
        # a forward pass cannot be stopped, and is short: `probabilities` checks between batches
        count = len(batch)
        images = torch.zeros((padded_size(count), 28, 28), dtype=torch.uint8, device=device)
        images[:count] = torch.tensor(batch)  # the caller's array may be read-only
        if plain:  # exactly what training fed the model, bit for bit
            x = as_input(images, channels_last=True)
        else:
            x = images.unsqueeze(1).float().mul_(scale).sub_(mean).div_(std)
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.softmax(model(x).float(), dim=1)[:count].cpu().numpy()

    return run


class _OnnxRunner:
    """One batch through an ONNX Runtime session, as probabilities. Each run has RunOptions of
    its own, kept while it runs so that `stop_all` can set their `terminate` flag."""

    def __init__(self, session: Any, normalisation: tuple[float, float, float, bool]) -> None:
        self.session = session
        self.scale, self.mean, self.std, self.plain = normalisation
        self.input_name = session.get_inputs()[0].name
        # our graphs end in a softmax; a graph from elsewhere may return logits
        self.softmax = session.get_outputs()[0].name != onnxio.OUTPUT_NAME
        self._lock = threading.Lock()
        self._running: dict[int, Any] = {}  # id -> the RunOptions of each run in flight

    def __call__(self, batch: np.ndarray, interrupted: Callable[[], bool]) -> np.ndarray:
        options = onnxio.run_options()
        with self._lock:
            self._running[id(options)] = options
        try:
            # registered first, then asked: an interrupt either finds this run registered or
            # is seen here, never neither
            if interrupted():
                raise InferenceInterrupted("the inference was interrupted")
            return self._run(batch, options)
        finally:
            with self._lock:
                del self._running[id(options)]

    def run_within(self, batch: np.ndarray, seconds: float, where: str) -> np.ndarray:
        """One batch, terminated and refused if it takes more than `seconds`."""
        options = onnxio.run_options()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            options.terminate = True

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            return self._run(batch, options)
        except InferenceInterrupted:
            if not expired.is_set():
                raise
            raise MnistlabError(f"{where}: the model takes more than {seconds:g} s on "
                                f"{len(batch)} MNIST test image{'s' if len(batch) > 1 else ''} "
                                "(a loop that does not end?); refused") from None
        except InferenceError as e:
            raise MnistlabError(f"{where}: {e}") from None
        finally:
            timer.cancel()

    def stop_all(self) -> None:
        with self._lock:
            for options in self._running.values():
                options.terminate = True

    def _run(self, batch: np.ndarray, options: Any) -> np.ndarray:
        x = batch[:, None].astype(np.float32)
        if self.plain:
            x /= np.float32(255.0)  # as torch's as_input does, to the last bit
        else:
            x = (x * np.float32(self.scale) - np.float32(self.mean)) / np.float32(self.std)
        try:
            outputs = onnxio.run_stoppably(self.session, {self.input_name: x}, options)
        except Exception as e:  # onnxruntime's errors are its own C++ exception types
            if options.terminate:
                raise InferenceInterrupted("the inference was interrupted") from None
            raise InferenceError(f"the ONNX model failed on {len(batch)} image(s) "
                                 f"({onnxio.first_line(e)})") from None
        out = np.asarray(outputs[0], dtype=np.float32)
        if out.ndim != 2 or len(out) != len(batch):  # a graph may leave its output's shape free
            raise InferenceError(f"the ONNX model answers {len(batch)} image(s) with shape "
                                 f"{out.shape}, not one row of values per image")
        if self.softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

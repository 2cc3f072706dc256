"""A checkpoint's model as an ONNX graph, and an ONNX Runtime session over one.

The graph takes float images (N, 1, 28, 28) in [0, 1] with a free batch size and returns
probabilities (N, 10): the softmax is inside, so any ONNX consumer gets what `Predictor` does.
The checkpoint's metadata travels in the model's `metadata_props` under the key "mnistlab", so
an exported file alone says what it is.

An ONNX file is untrusted input like a checkpoint: read bounded (`read_onnx`), its one input and
one output checked against what mnistlab feeds and reads (`check_signature`), and every run
stoppable (`run_stoppably`, with RunOptions of its own).

PyTorch's TorchScript-based exporter (`dynamo=False`) is used: it needs only the onnx package
(the torch.export-based one needs onnxscript as well) and exists in every PyTorch this project
supports (2.4 onwards), though newer releases mark it deprecated.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.checkpoint import MAX_FILE_BYTES, MAX_META_CHARS, parse_meta
from mnistlab.errors import MnistlabError, brief
from mnistlab.fileio import read_limited
from mnistlab.models.layers import Conv2dTFSame, tf_same_padding

OPSET = 17  # ONNX Runtime has run opset 17 since 1.13; every PyTorch from 2.4 exports it
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
META_KEY = "mnistlab"
# an exported graph is about its checkpoint's size, so the checkpoint's bound serves for both
MAX_ONNX_BYTES = MAX_FILE_BYTES
# the most threads one session may be given: more than the cores of any machine this runs on,
# and ONNX Runtime builds a pool of that many for each session (10**9 is a std::bad_alloc)
MAX_THREADS = 1024
# PyTorch 2.5 added the `dynamo` switch (and 2.9 made True its default); before, the legacy
# exporter was the only one and the keyword does not exist
_LEGACY = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)


class _PaddedConv(nn.Module):
    """A Conv2dTFSame with its padding fixed for the one input size the graph will see."""

    def __init__(self, conv: Conv2dTFSame, pad: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv = conv
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Conv2d.forward(self.conv, F.pad(x, self.pad))


def _static_padding(model: nn.Module) -> nn.Module:
    """Conv2dTFSame computes its padding from the input's size with floor division; traced, that
    becomes ONNX's integer Div, which truncates, and ceil(7 / 2) comes out 3 instead of 4. The
    graph's images are always 28x28, so the padding is computed once here, as plain numbers."""
    pads: dict[str, tuple[int, int, int, int]] = {}

    def record(name: str):
        def hook(module: Conv2dTFSame, args: tuple[torch.Tensor, ...]) -> None:
            height, width = (int(s) for s in args[0].shape[-2:])
            top, bottom = _same(height, module, 0)
            left, right = _same(width, module, 1)
            pads[name] = (left, right, top, bottom)
        return hook

    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dTFSame)}
    if not convs:
        return model
    handles = [m.register_forward_pre_hook(record(name)) for name, m in convs.items()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))
    finally:
        for handle in handles:
            handle.remove()
    for name, conv in convs.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _PaddedConv(conv, pads[name]))
    return model


def _same(size: int, conv: Conv2dTFSame, axis: int) -> tuple[int, int]:
    return tf_same_padding(size, conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis])


def model_to_onnx(model: nn.Module, meta: dict[str, Any]) -> bytes:
    """The model (on any device) as the bytes of an ONNX file with a dynamic batch axis."""
    try:
        import onnx  # the exporter needs it too; asked for here to fail with a clear line
    except ImportError:
        raise MnistlabError("exporting to ONNX needs the onnx package: pip install onnx") from None
    graph = _Probabilities(_static_padding(copy.deepcopy(model).to("cpu").float())).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the exporter warns that it is the legacy one, and about traced shapes: both known
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph, (torch.zeros(2, 1, 28, 28),), buffer, **_LEGACY,
                opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as e:  # the exporter raises many types; any of them means "cannot"
            name = (meta.get("model") or {}).get("name", "this model")
            raise MnistlabError(f"cannot export {name} to ONNX: {first_line(e)}") from e
    meta = {**meta, "parameters": sum(p.numel() for p in model.parameters())}
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)
    data = proto.SerializeToString()
    # refused here what `read_onnx` and `session_meta` would refuse to read back
    if len(data) > MAX_ONNX_BYTES or len(entry.value) > MAX_META_CHARS:
        raise MnistlabError(f"cannot export to ONNX: the file would be {len(data):,} bytes with "
                            f"{len(entry.value):,} characters of metadata, more than the "
                            f"{MAX_ONNX_BYTES:,} and {MAX_META_CHARS:,} mnistlab reads")
    return data


def read_onnx(path: Path) -> bytes:
    """An ONNX file's bytes: a regular file of at most MAX_ONNX_BYTES, bounded by what is read
    (ONNX Runtime takes the bytes: it never opens the path itself)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MnistlabError(f"{path}: no such ONNX file") from None
    except OSError as e:
        raise MnistlabError(f"{path}: cannot read the ONNX model: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the path
        raise MnistlabError(f"{str(path)!r}: cannot read the ONNX model: {e}") from None
    if size > MAX_ONNX_BYTES:  # refused before reading a gigabyte; read_limited bounds the rest
        raise MnistlabError(f"{path}: {size:,} bytes is too large for an ONNX model "
                            f"(at most {MAX_ONNX_BYTES:,})")
    return read_limited(path, MAX_ONNX_BYTES, "ONNX model")


def open_session(source: bytes, where: str, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU over the bytes of an ONNX file.

    `threads`: the threads one call may use, as for serving, where each request's batch is
    small and the other cores parse and answer requests: that many intra-op threads, one
    inter-op thread, and no spinning (idle pool threads that spin burn the CPU the server
    needs). None: ONNX Runtime's defaults (a thread per physical core, spinning), the fastest
    for large batches on a machine of their own.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MnistlabError("the onnx backend needs ONNX Runtime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    # fatal only: its warnings are about graph optimisations, and every error comes back to us
    # as an exception, reported in one line
    options.log_severity_level = 4
    if check_threads(threads) is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors are its own C++ exception types
        raise MnistlabError(f"{where}: not a usable ONNX model ({first_line(e)})") from None


def check_threads(threads: object) -> int | None:
    """`threads` as `open_session` takes it: None, or a whole number from 1 to MAX_THREADS;
    anything else (0, '2', 1.5, True, 10**9) is a MnistlabError, never a TypeError from the
    comparison or from ONNX Runtime's bindings, nor a failed allocation blamed on the model."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise MnistlabError(f"threads: expected a whole number from 1 to {MAX_THREADS:,}, "
                            f"got {brief(threads)}")
    return threads


def check_signature(session: Any, where: str, classes: int) -> None:
    """Refuse a graph that does not take what mnistlab feeds, one input of float32 images
    [N, 1, 28, 28] with a free batch size N, or does not return what it reads, one float32
    output [N, classes]. A dimension the graph leaves free passes here; the check on load
    runs it."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected_input = "one input of float32 images [N, 1, 28, 28], N free"
    if len(inputs) != 1:
        raise MnistlabError(f"{where}: expected {expected_input}; the model takes "
                            f"{len(inputs)} inputs ({_describe(inputs)})")
    image = inputs[0]
    shape = list(image.shape)
    if (image.type != "tensor(float)" or len(shape) != 4
            or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (1, 28, 28)))):
        raise MnistlabError(f"{where}: expected {expected_input}; the model takes "
                            f"{_describe(inputs)}")
    if isinstance(shape[0], int):
        raise MnistlabError(f"{where}: expected {expected_input}; the model takes a fixed batch "
                            f"of {shape[0]} ({_describe(inputs)}), and a picture of several "
                            "digits is one batch")
    expected_output = f"one float32 output [N, {classes}], a value per class"
    shape = list(outputs[0].shape) if len(outputs) == 1 else []
    # an empty shape: a rank ONNX Runtime does not know, left to the run on load
    if (len(outputs) != 1 or outputs[0].type != "tensor(float)" or len(shape) not in (0, 2)
            or len(shape) == 2 and isinstance(shape[1], int) and shape[1] != classes):
        raise MnistlabError(f"{where}: expected {expected_output}; the model returns "
                            f"{_describe(outputs)}")


def _describe(args: list[Any]) -> str:
    """ONNX Runtime's inputs or outputs as `name: type [dims]`, a free dimension as `?`."""
    def dims(shape: list[Any]) -> str:
        return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"

    return ", ".join(f"{a.name}: {a.type} {dims(a.shape)}" for a in args) or "nothing"


def first_line(e: BaseException) -> str:
    """An exception's first line (ONNX Runtime's messages run on), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_options() -> Any:
    """Fresh RunOptions for one run: its `terminate` flag stops that run alone."""
    import onnxruntime as ort

    options = ort.RunOptions()
    # fatal only: a run that fails (or is terminated) is reported by us, in one line
    options.log_severity_level = 4
    return options


def run_stoppably(session: Any, feeds: dict[str, Any], options: Any) -> list[Any]:
    """`session.run(None, feeds, options)`, stoppable by Ctrl-C as well as by the options'
    `terminate` flag.

    Python runs signal handlers only in the main thread and only between bytecodes, and
    ONNX Runtime's run is one long C++ call: on the main thread, the run goes to a worker
    thread while this one waits in short waits, where a KeyboardInterrupt can land; the run is
    then terminated and the interrupt goes on up. Other threads never see a signal and run
    the session themselves.
    """
    if threading.current_thread() is not threading.main_thread():
        return session.run(None, feeds, options)
    outcome: dict[str, Any] = {}
    # an Event, not Thread.join: in Python 3.11 a join interrupted by Ctrl-C marks the thread
    # as ended while it still runs, and the process would exit (and abort) around the run
    done = threading.Event()

    def work() -> None:
        try:
            outcome["outputs"] = session.run(None, feeds, options)
        except Exception as e:  # handed to the waiting thread, which raises it
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="mnistlab-onnx-run", daemon=True).start()
    try:
        while not done.wait(0.05):
            pass
    except BaseException:  # KeyboardInterrupt, or SystemExit from a signal handler
        options.terminate = True
        done.wait(2.0)  # ONNX Runtime checks the flag between operators, Loop iterations too
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["outputs"]


def session_meta(session: Any, where: str) -> dict[str, Any]:
    """The mnistlab metadata an exported file carries, or {} for an ONNX file from elsewhere;
    refused as a checkpoint's is when too large or nested too deep."""
    text = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if not text:
        return {}
    try:
        return parse_meta(text)
    except RecursionError as e:
        raise MnistlabError(f"{where}: no valid mnistlab metadata ({e})") from None
    except ValueError as e:
        if len(text) > MAX_META_CHARS:
            raise MnistlabError(f"{where}: no valid mnistlab metadata ({e})") from None
        return {}  # not ours: metadata another tool wrote under the same key

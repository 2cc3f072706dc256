"""Model checkpoints: weights in safetensors, metadata in JSON, nothing ever unpickled.

A run folder holds
- `model.safetensors`: the model's weights; its header carries the metadata (model name and
  arguments, recipe, input normalisation, metrics, versions) so the one file is complete and is
  replaced in one atomic rename;
- `model.json`: the same metadata, readable by people and tools;
- `training-state.safetensors`: what `--resume` needs besides the weights
  (`mnistlab.training.state`), written and read through `write_file` and `read_file` here.

Every file is untrusted input: `read_file` refuses special files and oversized files (by what
it reads, not by what `stat` says), malformed headers and metadata too large or nested too
deep; `load_model` checks the model name and arguments the metadata gives, builds that model,
refuses weights that are not exactly its own, and then runs it once on a few real MNIST test
images (`check_model_answers`): a model that answers NaN, or not one score per class, is
refused on load rather than on every prediction. `write_file` refuses to write what
`read_file` would refuse to read.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import platform
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

import mnistlab
from mnistlab.data.registry import SHIPPED_ROOT, get_spec
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes, atomic_write_text, read_limited
from mnistlab.models import build_model, check_model_args

MODEL_FILE = "model.safetensors"
MODEL_META_FILE = "model.json"
FORMAT = "mnistlab.model/1"
META_KEY = "mnistlab"  # the safetensors header entry that holds our metadata (JSON)
MAX_FILE_BYTES = 1 << 30  # no model of ours comes near; refuse before reading a huge file
MAX_META_CHARS = 1 << 20  # ours are a few kilobytes
# the check on load runs the model at more than one batch size: a model (or an ONNX graph) that
# works for one image only breaks on a picture of several digits
CHECK_BATCHES = (1, 3)
DEFAULT_CLASS_NAMES = [str(i) for i in range(10)]
MNIST_SCALE = 1.0 / 255.0


class CheckpointError(MnistlabError):
    pass


def versions() -> dict[str, str]:
    return {"mnistlab": mnistlab.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


# ---- the model -----------------------------------------------------------------------------


def save_model(run_dir: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    meta = {"format": FORMAT, **meta}
    path = Path(run_dir) / MODEL_FILE
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep to write
        raise CheckpointError(f"cannot write {path}: its metadata cannot be written as JSON "
                              f"({e}); nothing was written") from None
    write_file(path, model.state_dict(), text)
    atomic_write_text(Path(run_dir) / MODEL_META_FILE, text + "\n")
    return path


DEFAULT_NAME = "default"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
# the model that ships inside the package, so that prediction works with no training
DEFAULT_DIR = PRETRAINED_DIR / DEFAULT_NAME
# every model shipped, by name: `default`, and the tutorials' models small enough to ship
# (a few hundred KB to a few MB each), so that a learner can compare them with no training
SHIPPED_MODELS = (DEFAULT_NAME, "softmax-regression", "keras-cnn")


def shipped_dir(target: str | Path) -> Path | None:
    """The folder of the shipped model `target` names, or None. A path of that name that
    exists wins: a run folder called `default` is that folder, as it always was."""
    name = str(target)
    if name in SHIPPED_MODELS and not Path(name).exists():
        return PRETRAINED_DIR / name
    return None


def resolve_checkpoint(target: str | Path) -> Path:
    """A run folder, a .safetensors file or a shipped model's name (`default`, ...) to the
    model file."""
    folder = shipped_dir(target)
    if folder is not None:
        path = folder / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"this installation has no shipped model {target!r} ({path} "
                                  "is missing); name a run folder or a .safetensors file instead")
        return path
    path = Path(target)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"{target}: no {MODEL_FILE} in this folder (is it a run folder?)")
    elif not path.exists():
        raise CheckpointError(f"{target}: no such checkpoint file or run folder")
    return path


def load_model(target: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights, refusing anything odd."""
    path = resolve_checkpoint(target)
    tensors, meta = read_file(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnistlab model checkpoint (format {meta.get('format')!r})")
    check_fields(meta, path, MODEL_FIELDS)
    spec = meta.get("model")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("args", {}), dict)):
        raise CheckpointError(f"{path}: metadata has no valid 'model' entry (name and args)")
    try:
        args = check_model_args(spec["name"], spec.get("args", {}))  # their one check
    except MnistlabError as e:
        raise CheckpointError(f"{path}: {e}") from None
    # first on the meta device, which allocates nothing: the weights in the file must fit the
    # model before the model costs memory (its sizes are bounded, yet up to hundreds of MB)
    with torch.device("meta"):
        skeleton = build_model(spec["name"], init="pytorch", **args)
    check_weights(skeleton, tensors, str(path))
    model = build_model(spec["name"], init="pytorch", **args)
    model.load_state_dict(tensors)
    # channels last, the layout every model trains in: with it a convolution's output stays
    # channels last, where PyTorch's CPU max-pool is an order of magnitude faster than on
    # the plain layout a one-channel input otherwise leaves (docs/BENCHMARKS.md: measuring
    # and predicting on the CPU)
    model = model.to(device, memory_format=torch.channels_last)
    check_model_answers(model, meta, path)
    return model, meta


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    check_weights(model, tensors, where)
    model.load_state_dict(tensors)


def check_weights(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse `tensors` unless they are exactly `model`'s: names, shapes, dtypes, finite."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the model: "
            + "; ".join(filter(None, [missing and f"missing {', '.join(missing[:3])}",
                                      unexpected and f"unexpected {', '.join(unexpected[:3])}"]))
        )
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(
                f"{where}: tensor '{key}' is {got.dtype} {tuple(got.shape)}, "
                f"the model needs {want.dtype} {tuple(want.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"{where}: tensor '{key}' holds NaN or infinite values")


# ---- the check on load: a few real images through the model --------------------------------


def input_normalisation(meta: dict[str, Any], where: str | Path) -> tuple[float, float, float, bool]:
    """(scale, mean, std, plain): the model sees (pixel * scale - mean) / std, as it did in
    training; plain when that is pixel / 255, MNIST's own scaling."""
    spec = meta.get("input") if isinstance(meta.get("input"), dict) else {}
    values = [spec.get("scale", MNIST_SCALE), spec.get("mean", 0.0), spec.get("std", 1.0)]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values) or values[2] == 0:
        raise CheckpointError(f"{where}: the input normalisation in its metadata is invalid "
                              "(its scale, mean and std must be finite numbers, std not 0)")
    scale, mean, std = float(values[0]), float(values[1]), float(values[2])
    plain = abs(scale - MNIST_SCALE) < 1e-12 and mean == 0.0 and std == 1.0
    return scale, mean, std, plain


def class_names(meta: dict[str, Any]) -> list[str]:
    """The class names the metadata gives (`check_fields` bounds them), else MNIST's digits."""
    names = meta.get("class_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    return list(DEFAULT_CLASS_NAMES)


@functools.lru_cache(maxsize=1)
def check_images() -> np.ndarray:
    """The first few MNIST test images, (N, 28, 28) uint8, read-only: the start of the shipped
    file only, which costs a millisecond (the whole split, checksummed, costs a quarter of a
    second, and `predict` and `serve` never need it)."""
    file = next(f for f in get_spec("mnist").files if f.role == "test-images")
    path = SHIPPED_ROOT / "mnist" / file.filename
    count = max(CHECK_BATCHES)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(16 + count * 28 * 28)
    except (OSError, EOFError, zlib.error) as e:
        raise MnistlabError(f"{path}: cannot read the shipped MNIST test images ({e}); the "
                            "installed package is damaged: reinstall mnistlab") from None
    if len(data) != 16 + count * 28 * 28 or data[:4] != b"\x00\x00\x08\x03":
        raise MnistlabError(f"{path}: not the MNIST test images; the installed package is "
                            "damaged: reinstall mnistlab")
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, 28, 28)
    images.setflags(write=False)
    return images


def check_model_answers(model: nn.Module, meta: dict[str, Any], path: str | Path) -> None:
    """Refuse a model that does not answer a few real MNIST test images, fed as its metadata
    says, with finite scores, one per class, at more than one batch size: a negative batch-norm
    variance or an input scale of 1e308 gives NaN for every image. Milliseconds, once a load."""
    scale, mean, std, _ = input_normalisation(meta, path)
    classes = len(class_names(meta))
    device = next(iter(model.state_dict().values())).device
    was_training = model.training
    model.eval()  # batch norm's running statistics, as every prediction uses them
    try:
        with torch.inference_mode():
            for count in CHECK_BATCHES:
                images = torch.tensor(check_images()[:count], device=device)
                x = images.unsqueeze(1).float().mul_(scale).sub_(mean).div_(std)
                # channels last, as predictions and evaluation feed it: the kernels PyTorch
                # sets up on a first call are then theirs too, not extra work
                x = x.contiguous(memory_format=torch.channels_last)
                scores = model(x).float().cpu().numpy()
                check_answers(scores, count, classes, path)
    except RuntimeError as e:  # the model cannot run at all: PyTorch's errors are RuntimeErrors
        raise CheckpointError(f"{path}: the model fails on MNIST test images "
                              f"({str(e).strip().splitlines()[0]})") from None
    finally:
        model.train(was_training)


def check_answers(out: np.ndarray, count: int, classes: int, where: str | Path, *,
                  probabilities: bool = False) -> None:
    """Refuse a model's answer to `count` MNIST test images unless it has one finite value per
    image and class (and, for `probabilities`, each is in [0, 1] and they sum to 1)."""
    what = "probabilities" if probabilities else "scores"
    if out.shape != (count, classes):
        raise CheckpointError(f"{where}: the model answers {count} MNIST test image"
                              f"{'s' if count > 1 else ''} with shape {tuple(out.shape)}; "
                              f"expected ({count}, {classes}), one value per class")
    if not np.isfinite(out).all():
        raise CheckpointError(f"{where}: the model's {what} for MNIST test images are NaN or "
                              "infinite: it cannot be used")
    if probabilities and (out.min() < 0 or out.max() > 1 + 1e-3
                          or np.abs(out.sum(axis=1) - 1).max() > 1e-3):
        raise CheckpointError(f"{where}: the model's probabilities for MNIST test images are "
                              "not probabilities (each in [0, 1], summing to 1 per image)")


# ---- the file format, shared with the training state ---------------------------------------

# The metadata that code reads, and the kinds it must have: a checkpoint is untrusted input
PATH_FIELD = (str, type(None))
MODEL_FIELDS = {"class_names": (list, type(None)), "recipe": (dict, type(None)), "data_dir": PATH_FIELD,
                "input": (dict, type(None)), "metrics": (dict, type(None)),
                "dropout_at_test": (bool, type(None)), "complete": (bool, type(None))}


def check_fields(meta: dict[str, Any], path: Path, fields: dict[str, tuple[type, ...]],
                 required: bool = False) -> None:
    """Refuse metadata whose fields (those present, or all with `required`) are of another
    kind than `fields` names."""
    for key, kinds in fields.items():
        value = meta.get(key)
        if (key in meta or required) and (not isinstance(value, kinds) or isinstance(value, bool)
                                          and bool not in kinds):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise CheckpointError(f"{path}: metadata '{key}' should be {expected}, "
                                  f"not {type(value).__name__}")
    names = meta.get("class_names") or []
    if not isinstance(names, list) or len(names) > 1000 or not all(isinstance(n, str) and len(n) <= 100 for n in names):
        raise CheckpointError(f"{path}: metadata 'class_names' should be at most 1,000 short strings")
    data = (meta.get("recipe") or {}).get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("dataset", ""), str)):
        raise CheckpointError(f"{path}: metadata 'recipe.data' should be a table with a dataset name")


def write_file(path: Path, tensors: dict[str, torch.Tensor], meta_text: str) -> None:
    """`tensors` and the metadata (JSON text) as one safetensors file, replaced atomically;
    refused first, with nothing written, if `read_file` would refuse to read it back."""
    try:
        parse_meta(meta_text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"cannot write {path}: its metadata could not be read back "
                              f"({e}); nothing was written") from None
    # safetensors wants contiguous CPU tensors that share no memory
    copies = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = safetensors.torch.save(copies, {META_KEY: meta_text})
    if len(data) > MAX_FILE_BYTES:
        raise CheckpointError(f"cannot write {path}: {len(data):,} bytes, more than the "
                              f"{MAX_FILE_BYTES:,} a checkpoint may hold; nothing was written")
    atomic_write_bytes(path, data)


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors file's tensors and our metadata, refusing anything malformed or oversized."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    # stat only refuses early what is surely too large (reading a gigabyte first would be a
    # waste); the bound that holds is what read_limited reads (stat says 0 for /dev/zero)
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size:,} bytes is too large for a checkpoint "
                              f"(at most {MAX_FILE_BYTES:,})")
    try:
        data = read_limited(path, MAX_FILE_BYTES, "checkpoint")
    except MnistlabError as e:
        raise CheckpointError(str(e)) from None
    try:
        tensors = safetensors.torch.load(data)
        # the header (8-byte little-endian length, then JSON) holds the metadata; safetensors
        # has just validated its layout
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises its own error types for every malformed file
        if path.suffix.lower() == ".onnx":  # an exported model where its checkpoint is needed
            raise CheckpointError(f"{path}: an ONNX file; this needs the model's checkpoint (a "
                                  "run folder or a .safetensors file)") from None
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        meta = parse_meta(header[META_KEY])
    except (KeyError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise CheckpointError(f"{path}: no valid mnistlab metadata in the header ({e})") from None
    return tensors, meta


def parse_meta(text: str) -> dict[str, Any]:
    """Our metadata from its JSON text: an object of at most MAX_META_CHARS characters, else
    ValueError (or RecursionError, nested too deep), on reading and before writing alike."""
    if len(text) > MAX_META_CHARS:
        raise ValueError(f"{len(text):,} characters, more than the {MAX_META_CHARS:,} allowed")
    meta = json.loads(text)
    if not isinstance(meta, dict):
        raise ValueError("not an object")
    return meta

"""Model checkpoints: weights in safetensors, metadata in JSON, nothing ever unpickled.

A run folder holds
- `model.safetensors`: the model's weights; its header carries the metadata (model name and
  arguments, recipe, input normalisation, metrics, versions) so the one file is complete and is
  replaced in one atomic rename;
- `model.json`: the same metadata, readable by people and tools;
- `training-state.safetensors`: what `--resume` needs besides the weights
  (`mnistlab.training.state`), written and read through `write_file` and `read_file` here.

Every file is untrusted input: `read_file` refuses oversized files, malformed headers and
metadata too large or nested too deep; `load_model` checks the model name and arguments the
metadata gives, builds that model and refuses weights that are not exactly its own.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import mnistlab
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes, atomic_write_text
from mnistlab.models import build_model, check_model_args

MODEL_FILE = "model.safetensors"
MODEL_META_FILE = "model.json"
FORMAT = "mnistlab.model/1"
META_KEY = "mnistlab"  # the safetensors header entry that holds our metadata (JSON)
MAX_FILE_BYTES = 1 << 30  # no model of ours comes near; refuse before reading a huge file
MAX_META_CHARS = 1 << 20  # ours are a few kilobytes


class CheckpointError(MnistlabError):
    pass


def versions() -> dict[str, str]:
    return {"mnistlab": mnistlab.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


# ---- the model -----------------------------------------------------------------------------


def save_model(run_dir: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    meta = {"format": FORMAT, **meta}
    text = json.dumps(meta, indent=2, sort_keys=True)
    path = Path(run_dir) / MODEL_FILE
    write_file(path, model.state_dict(), text)
    atomic_write_text(Path(run_dir) / MODEL_META_FILE, text + "\n")
    return path


DEFAULT_NAME = "default"
# the model that ships inside the package, so that prediction works with no training
DEFAULT_DIR = Path(__file__).resolve().parent / "pretrained" / DEFAULT_NAME


def resolve_checkpoint(target: str | Path) -> Path:
    """A run folder, a .safetensors file or `default` (the shipped model) to the model file."""
    if str(target) == DEFAULT_NAME and not Path(target).exists():  # a folder named so wins
        path = DEFAULT_DIR / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"this installation has no default model ({path} is missing); "
                                  "name a run folder or a .safetensors file instead")
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
    return model.to(device), meta


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
    if len(names) > 1000 or not all(isinstance(n, str) and len(n) <= 100 for n in names):
        raise CheckpointError(f"{path}: metadata 'class_names' should be at most 1,000 short strings")
    data = (meta.get("recipe") or {}).get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("dataset", ""), str)):
        raise CheckpointError(f"{path}: metadata 'recipe.data' should be a table with a dataset name")


def write_file(path: Path, tensors: dict[str, torch.Tensor], meta_text: str) -> None:
    """`tensors` and the metadata (JSON text) as one safetensors file, replaced atomically."""
    # safetensors wants contiguous CPU tensors that share no memory
    copies = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(copies, {META_KEY: meta_text}))


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors file's tensors and our metadata, refusing anything malformed or oversized."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CheckpointError(f"{path}: {size} bytes is too large for a checkpoint")
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        tensors = safetensors.torch.load(data)
        # the header (8-byte little-endian length, then JSON) holds the metadata; safetensors
        # has just validated its layout
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises its own error types for every malformed file
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        text = header[META_KEY]
        if len(text) > MAX_META_CHARS:
            raise ValueError(f"{len(text):,} characters, more than the {MAX_META_CHARS:,} allowed")
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (KeyError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise CheckpointError(f"{path}: no valid mnistlab metadata in the header ({e})") from None
    return tensors, meta

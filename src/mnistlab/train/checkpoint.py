"""Checkpoints: weights in safetensors, metadata in JSON, nothing ever unpickled.

A run folder holds
- `model.safetensors`: the model's weights; its header carries the metadata (model name and
  arguments, recipe, input normalisation, metrics, versions) so the one file is complete and is
  replaced in one atomic rename;
- `model.json`: the same metadata, readable by people and tools;
- `training-state.safetensors`: what `--resume` needs besides the weights (optimiser state,
  random-number generator states, the step), also written in one atomic rename.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import mnistlab
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes, atomic_write_text
from mnistlab.models import build_model
from mnistlab.train.optim import match_state_layout

MODEL_FILE = "model.safetensors"
MODEL_META_FILE = "model.json"
STATE_FILE = "training-state.safetensors"
FORMAT = "mnistlab.model/1"
STATE_FORMAT = "mnistlab.training-state/1"
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
    atomic_write_bytes(path, safetensors.torch.save(_tensors(model.state_dict()), {"mnistlab": text}))
    atomic_write_text(Path(run_dir) / MODEL_META_FILE, text + "\n")
    return path


DEFAULT_NAME = "default"
# the model that ships inside the package, so that prediction works with no training
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "pretrained" / DEFAULT_NAME


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
    tensors, meta = _read(path, "mnistlab")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnistlab model checkpoint (format {meta.get('format')!r})")
    _check_fields(meta, path, MODEL_FIELDS)
    spec = meta.get("model")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("args", {}), dict)):
        raise CheckpointError(f"{path}: metadata has no valid 'model' entry (name and args)")
    try:
        # first on the meta device, which allocates nothing: the weights in the file (at most
        # MAX_FILE_BYTES) must fit the model before a size in the metadata can cost memory
        with torch.device("meta"):
            skeleton = build_model(spec["name"], init="pytorch", **spec.get("args", {}))
    except MnistlabError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{path}: model arguments are invalid: {e}") from None
    check_weights(skeleton, tensors, str(path))
    model = build_model(spec["name"], init="pytorch", **spec.get("args", {}))
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


# ---- training state, for --resume ---------------------------------------------------------


def save_training_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        meta: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> None:
    """Everything --resume needs; `extra` holds more tensors to keep (a weight average's)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | (extra or {})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    # a CUDA-graphed run keeps its learning rate in a tensor (train/step.py): save the number
    groups = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in group.items()}
              for group in opt["param_groups"]]
    meta = {"format": STATE_FORMAT, **meta, "param_groups": groups,
            "optim_scalars": scalars}
    text = json.dumps(meta, sort_keys=True)
    atomic_write_bytes(Path(run_dir) / STATE_FILE, safetensors.torch.save(_tensors(tensors), {"mnistlab": text}))


def read_training_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: nothing to resume: no {STATE_FILE} in this folder")
    tensors, meta = _read(path, "mnistlab")
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an mnistlab training state")
    _check_fields(meta, path, STATE_FIELDS, required=True)
    if not 0 <= meta["step"] <= meta["total_steps"]:
        raise CheckpointError(f"{path}: metadata 'step' is {meta['step']}, outside "
                              f"0..{meta['total_steps']}")
    return tensors, meta


def restore_training_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           model: nn.Module, optimizer: torch.optim.Optimizer, where: str) -> None:
    load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, where)
    state: dict[int, dict[str, Any]] = {}
    try:  # a damaged file (names, indices, tables of the wrong kind) is refused like a misfit
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in meta.get("optim_scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        _check_optimizer_state(state, meta["param_groups"], optimizer, where)
        # a setting the file lacks (an older PyTorch's, or a damaged file) is the recipe's own
        groups = [{**{k: v for k, v in own.items() if k != "params"}, **saved}
                  for own, saved in zip(optimizer.param_groups, meta["param_groups"])]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        match_state_layout(optimizer)
        torch.set_rng_state(tensors["rng.cpu"])
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: the training state is damaged or does not fit this "
                              f"recipe (optimiser state, random-number state): {e!r}") from None
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _check_optimizer_state(state: dict[int, dict[str, Any]], groups: Any,
                           optimizer: torch.optim.Optimizer, where: str) -> None:
    """Refuse saved optimiser state that would fail, or quietly misbehave, at the next step:
    a setting of another kind than the optimiser's own (`betas` a string, `eps` NaN), a tensor
    whose shape or dtype is not its weight's. load_state_dict checks none of this."""
    if not (isinstance(groups, list) and len(groups) == len(optimizer.param_groups)
            and all(isinstance(g, dict) for g in groups)):
        raise CheckpointError(f"{where}: the optimiser's parameter groups do not fit this recipe")
    for saved, own in zip(groups, optimizer.param_groups):
        for key, like in own.items():
            if key != "params" and not _same_kind(saved.get(key, like), like):
                raise CheckpointError(f"{where}: optimiser setting '{key}' is "
                                      f"{str(saved.get(key))[:40]!r}, not like {like!r}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in state.items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                continue
            weight = params[index] if 0 <= index < len(params) else None
            if (weight is None or not value.is_floating_point()
                    or value.dim() and value.shape != weight.shape):
                raise CheckpointError(
                    f"{where}: optimiser state 'optim.{index}.{name}' is {value.dtype} "
                    f"{tuple(value.shape)}, which fits no weight of this model")
    # a weight's state must be whole: one name missing is a KeyError at the next step
    kept = _state_names(optimizer)
    group_of = [i for i, group in enumerate(optimizer.param_groups) for _ in group["params"]]
    for index, values in state.items():
        want = kept[group_of[index]] if 0 <= index < len(group_of) else None
        if values and set(values) != want:
            raise CheckpointError(f"{where}: optimiser state of weight {index} holds "
                                  f"{sorted(values)}; this optimiser keeps {sorted(want or [])}")


def _state_names(optimizer: torch.optim.Optimizer) -> list[set[str]]:
    """For each parameter group, the names of the state a step of `optimizer` keeps for a
    weight: found by stepping a copy of it over a one-element stand-in weight a group."""
    groups = []
    for group in optimizer.param_groups:
        like = group["params"][0]
        stand_in = torch.zeros(1, device=like.device, dtype=like.dtype, requires_grad=True)
        stand_in.grad = torch.zeros_like(stand_in)
        groups.append({**group, "params": [stand_in]})
    shadow = type(optimizer)(groups)
    shadow.step()
    return [set(shadow.state[group["params"][0]]) for group in groups]


def _same_kind(value: Any, like: Any) -> bool:
    if like is None or isinstance(like, bool):  # flags: foreach, fused, amsgrad, ...
        return value is None or isinstance(value, bool)
    if isinstance(like, (int, float, torch.Tensor)):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if isinstance(like, (list, tuple)):
        return (isinstance(value, (list, tuple)) and len(value) == len(like)
                and all(_same_kind(v, w) for v, w in zip(value, like)))
    return type(value) is type(like)


# ---- shared --------------------------------------------------------------------------------

# The metadata that code reads, and the kinds it must have: a checkpoint is untrusted input
_PATH = (str, type(None))
MODEL_FIELDS = {"class_names": (list, type(None)), "recipe": (dict, type(None)), "data_dir": _PATH,
                "input": (dict, type(None)), "metrics": (dict, type(None)),
                "dropout_at_test": (bool, type(None)), "complete": (bool, type(None))}
STATE_FIELDS = {"recipe": (dict,), "seed": (int,), "step": (int,), "total_steps": (int,),
                "train_seconds": (int, float), "data_dir": _PATH, "param_groups": (list,),
                "optim_scalars": (dict,)}


def _check_fields(meta: dict[str, Any], path: Path, fields: dict[str, tuple[type, ...]],
                  required: bool = False) -> None:
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


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no memory
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _read(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
        text = header[key]
        if len(text) > MAX_META_CHARS:
            raise ValueError(f"{len(text):,} characters, more than the {MAX_META_CHARS:,} allowed")
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (KeyError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise CheckpointError(f"{path}: no valid mnistlab metadata in the header ({e})") from None
    return tensors, meta

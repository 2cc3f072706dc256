"""A run's training state, for `--resume`: what continuing needs besides the weights.

`training-state.safetensors` holds the live weights, the optimiser's state, the random-number
generators' states and the step, written through the checkpoint file format
(`mnistlab.checkpoint`) in one atomic rename. Reading it back refuses anything that would fail,
or quietly misbehave, at the next step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.checkpoint import (
    PATH_FIELD,
    CheckpointError,
    check_fields,
    load_weights,
    read_file,
    write_file,
)
from mnistlab.training.optim import match_state_layout

STATE_FILE = "training-state.safetensors"
STATE_FORMAT = "mnistlab.training-state/1"
STATE_FIELDS = {"recipe": (dict,), "seed": (int,), "step": (int,), "total_steps": (int,),
                "train_seconds": (int, float), "data_dir": PATH_FIELD, "param_groups": (list,),
                "optim_scalars": (dict,)}


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
    # a CUDA-graphed run keeps its learning rate in a tensor (training/step.py): save the number
    groups = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in group.items()}
              for group in opt["param_groups"]]
    meta = {"format": STATE_FORMAT, **meta, "param_groups": groups,
            "optim_scalars": scalars}
    text = json.dumps(meta, sort_keys=True)
    write_file(Path(run_dir) / STATE_FILE, tensors, text)


def read_training_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: nothing to resume: no {STATE_FILE} in this folder")
    tensors, meta = read_file(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an mnistlab training state")
    check_fields(meta, path, STATE_FIELDS, required=True)
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

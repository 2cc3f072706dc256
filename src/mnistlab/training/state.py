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
from mnistlab.device import accelerator
from mnistlab.recipebook.recipe import MAX_SEED, MAX_STEPS
from mnistlab.training.optim import match_state_layout

STATE_FILE = "training-state.safetensors"
STATE_FORMAT = "mnistlab.training-state/1"
STATE_FIELDS = {"recipe": (dict,), "seed": (int,), "step": (int,), "total_steps": (int,),
                "train_seconds": (int, float), "data_dir": PATH_FIELD, "param_groups": (list,),
                "optim_scalars": (dict,)}
LATER_FIELDS = {"class_names": (list, type(None)), "init": (dict, type(None))}
MAX_TRAIN_SECONDS = 10**9  # 32 years: any real run's training time, and a number we can print


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
    if (rng := _accelerator_rng(started=True)) is not None:
        tensors[f"rng.{rng[0]}"] = rng[1].get_rng_state()
    # a CUDA-graphed run keeps its learning rate in a tensor (training/step.py): save the number
    groups = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in group.items()}
              for group in opt["param_groups"]]
    meta = {"format": STATE_FORMAT, **meta, "param_groups": groups,
            "optim_scalars": scalars}
    text = json.dumps(meta, sort_keys=True)
    write_file(Path(run_dir) / STATE_FILE, tensors, text)


def read_training_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(run_dir) / STATE_FILE
    if not Path(run_dir).is_dir():
        what = "a file, not a run folder" if Path(run_dir).exists() else "no such run folder"
        raise CheckpointError(f"{run_dir}: nothing to resume: {what}")
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: nothing to resume: no {STATE_FILE} in this folder")
    tensors, meta = read_file(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an mnistlab training state")
    check_fields(meta, path, STATE_FIELDS, required=True)
    check_fields(meta, path, LATER_FIELDS)  # absent from states written before them
    _check_run_numbers(meta, path)
    return tensors, meta


def _check_run_numbers(meta: dict[str, Any], path: Path) -> None:
    """The step, the run's length, the seed and the time within what a run of mnistlab has:
    the recipe's own bounds (a run takes at most MAX_STEPS steps), so a state claiming step
    10^29 of 10^30 is refused here."""
    if not 1 <= meta["total_steps"] <= MAX_STEPS:
        raise CheckpointError(f"{path}: metadata 'total_steps' is {_shown(meta['total_steps'])}, "
                              f"outside 1..{MAX_STEPS:,}")
    if not 0 <= meta["step"] <= meta["total_steps"]:
        raise CheckpointError(f"{path}: metadata 'step' is {_shown(meta['step'])}, outside "
                              f"0..{meta['total_steps']}")
    if not 0 <= meta["seed"] <= MAX_SEED:
        raise CheckpointError(f"{path}: metadata 'seed' is {_shown(meta['seed'])}, outside "
                              f"0..{MAX_SEED:,}")
    seconds = meta["train_seconds"]
    if not 0 <= seconds <= MAX_TRAIN_SECONDS:  # NaN fails too
        raise CheckpointError(f"{path}: metadata 'train_seconds' is {_shown(seconds)}, outside "
                              f"0..{MAX_TRAIN_SECONDS:,}")


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def restore_training_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           model: nn.Module, optimizer: torch.optim.Optimizer, where: str, *,
                           total_steps: int | None = None) -> None:
    """Load the saved weights, optimiser state and random-number state into `model`,
    `optimizer` (built from the recipe) and PyTorch, or refuse what does not fit them; a state
    for another length of run than `total_steps` (the recipe's, where the caller knows it) too."""
    if total_steps is not None and meta["total_steps"] != total_steps:
        raise CheckpointError(f"{where}: the training state is of a run of {meta['total_steps']:,} "
                              f"steps; its recipe gives {total_steps:,}")
    load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, where)
    state: dict[int, dict[str, Any]] = {}
    try:  # a damaged file (names, indices, tables of the wrong kind) is refused like a misfit
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in meta.get("optim_scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        _check_settings(meta["param_groups"], optimizer, where)
        _check_optimizer_state(state, optimizer, meta["step"], where)
        optimizer.load_state_dict({"state": state, "param_groups": _own_groups(optimizer)})
        match_state_layout(optimizer)
        torch.set_rng_state(tensors["rng.cpu"])
        if (rng := _accelerator_rng(started=False)) is not None and f"rng.{rng[0]}" in tensors:
            rng[1].set_rng_state(tensors[f"rng.{rng[0]}"])
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: the training state is damaged or does not fit this "
                              f"recipe (optimiser state, random-number state): {e!r}") from None
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _accelerator_rng(*, started: bool) -> tuple[str, Any] | None:
    """The type and module (torch.mps, torch.xpu, ...) of the accelerator other than CUDA that
    this machine has, whose random numbers a run on it draws (augmentation, dropout), or None;
    with `started`, None too while nothing has used it (as for CUDA: asking would start it).
    The machine's accelerator, never the file, names the state to restore: one saved on a Mac
    and resumed on a CPU-only machine is left unread."""
    kind = accelerator()
    module = getattr(torch, kind, None) if kind not in (None, "cuda") else None
    if not hasattr(module, "get_rng_state"):
        return None
    if started and not getattr(module, "is_initialized", lambda: True)():  # torch.mps: no such
        return None
    return kind, module


def _check_settings(groups: Any, optimizer: torch.optim.Optimizer, where: str) -> None:
    """The saved optimiser settings must be the recipe's, which built `optimizer`: a setting of
    another value (Adam's `betas` holding 1.999, which fails at the next step) means a damaged
    file or another recipe. Exceptions: the learning rate, which the schedule sets at every
    step, and flags of how PyTorch computes (`fused`, `capturable`, ...), which follow the
    device; a setting the file lacks (an older PyTorch's) is the recipe's."""
    if not (isinstance(groups, list) and len(groups) == len(optimizer.param_groups)
            and all(isinstance(g, dict) for g in groups)):
        raise CheckpointError(f"{where}: the optimiser's parameter groups do not fit this recipe")
    for saved, own in zip(groups, optimizer.param_groups):
        for key, like in own.items():
            if key == "params" or key not in saved:
                continue
            value = saved[key]
            if not _same_kind(value, like):
                raise CheckpointError(f"{where}: optimiser setting '{key}' is "
                                      f"{str(value)[:40]!r}, not like {like!r}")
            if key != "lr" and not _is_flag(like) and not _same_value(value, like):
                raise CheckpointError(f"{where}: optimiser setting '{key}' is {str(value)[:40]}, "
                                      f"but the recipe's is {_plain(like)}: the training state "
                                      "is damaged or is another recipe's")


def _own_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The parameter groups as a state dict gives them (weights numbered in order), with the
    recipe's settings, which the saved ones were checked to be."""
    groups, first = [], 0
    for group in optimizer.param_groups:
        count = len(group["params"])
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": list(range(first, first + count))})
        first += count
    return groups


def _check_optimizer_state(state: dict[int, dict[str, Any]], optimizer: torch.optim.Optimizer,
                           step: int, where: str) -> None:
    """Refuse saved optimiser state that would fail, or quietly misbehave, at the next step: a
    tensor whose shape or dtype is not its weight's, a weight's state not whole or of other
    kinds than a step keeps, an update count beyond the run's step. load_state_dict checks
    none of this."""
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
            if name == "step" and not (value.numel() == 1 and 0 <= value.item() <= step):
                raise CheckpointError(f"{where}: optimiser state 'optim.{index}.step' counts "
                                      f"updates beyond the run's step {step}")
    # a weight's state must be whole: one name missing is a KeyError at the next step
    kept = _state_kept(optimizer)
    group_of = [i for i, group in enumerate(optimizer.param_groups) for _ in group["params"]]
    for index, values in state.items():
        want = kept[group_of[index]] if 0 <= index < len(group_of) else {}
        if values and (set(values) != set(want) or not all(
                _same_state_kind(values[name], like) for name, like in want.items())):
            raise CheckpointError(f"{where}: optimiser state of weight {index} holds "
                                  f"{sorted(values)}; this optimiser keeps {sorted(want)}")


def _state_kept(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """For each parameter group, the state a step of `optimizer` keeps for a weight (its names
    and values): found by stepping a copy of it over a one-element stand-in weight a group."""
    groups = []
    for group in optimizer.param_groups:
        like = group["params"][0]
        stand_in = torch.zeros(1, device=like.device, dtype=like.dtype, requires_grad=True)
        stand_in.grad = torch.zeros_like(stand_in)
        groups.append({**group, "params": [stand_in]})
    shadow = type(optimizer)(groups)
    shadow.step()
    return [dict(shadow.state[group["params"][0]]) for group in groups]


def _same_state_kind(value: Any, like: Any) -> bool:
    """Whether a saved piece of a weight's state is of the kind a step keeps there: a tensor,
    nothing (SGD's momentum buffer without momentum), or a number."""
    if isinstance(like, torch.Tensor) or like is None:
        return isinstance(value, type(like))
    return _same_kind(value, like)


def _is_flag(like: Any) -> bool:
    return like is None or isinstance(like, bool)


def _same_value(value: Any, like: Any) -> bool:
    return _plain(value) == _plain(like)


def _plain(value: Any) -> Any:
    """A setting as JSON holds it: lists for tuples, numbers for one-element tensors."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, torch.Tensor) else value


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

"""Recipes: a training run described as data.

A recipe is a TOML file: the model and its initialisation, the optimiser with every
hyperparameter, the learning-rate schedule, batch size, length, loss, training split and, for a
tutorial recipe, the tutorial it reproduces and what that tutorial claims. Loading validates every key, type and value, and a mistake
is reported with the file, the key and what was expected.

Everything a recipe holds is bounded, so that whatever it asks for can run and be read back: the
file's size, its nesting, the run's length and batch, its texts (a copy of the recipe goes into
every checkpoint's header, which the checkpoint reader caps), its name (which names the run's
folder) and the optimiser settings PyTorch would refuse at the first step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mnistlab.errors import MnistlabError, brief, did_you_mean
from mnistlab.fileio import read_limited

# A recipe is a few hundred bytes (the longest shipped one, 1.2 kB): 64 KiB leaves room for any
# comments while /dev/zero, a FIFO or a huge file is refused by what is read.
MAX_RECIPE_BYTES = 64 << 10
# A copy of the recipe, as JSON, goes into the header of every checkpoint a run writes, which the
# checkpoint reader caps at 1 MiB (checkpoint.MAX_META_CHARS): a recipe's copy of at most 64 Ki
# characters leaves the rest of the header (a few kilobytes in practice) ample room.
MAX_RECIPE_JSON_CHARS = 64 << 10
# A run's length and batch, far beyond any real MNIST run, so that an absurd value is an error at
# load, not a run that never ends: the longest shipped recipes take 20,000 steps (deep-mnist) or
# 30 epochs (best), and 10 million steps of even the cheapest recipe take days on a CPU.
MAX_STEPS = 10_000_000  # also the most steps a run may take, epochs times steps per epoch
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536  # MNIST's training split has 60,000 images: a batch is at most all of them
# Random seeds: torch.manual_seed takes 64 bits, and the batch plan seeds each epoch's generator
# with seed * 1,000,003 + epoch, which 32-bit seeds keep well inside them.
MAX_SEED = 2**32 - 1
# --seeds: a run a seed, each training a model; a thousand is more than any ensemble or timing
MAX_SEED_COUNT = 1_000
DEFAULT_RECIPE = "quick"  # what `mnistlab train` and `mnistlab.train()` train when not told
MAX_TEACHERS = 32  # models a run distils from: an ensemble's members
# A recipe's name names its run folder (runs/NAME-TIME): one plain path component, never a path.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
NAME_RULE = ("letters, digits, '.', '-' and '_', not starting with '.', at most 64 characters "
             "(it names the run's folder)")
# the texts a recipe carries, in characters: the shipped ones are at most 180 and 150
MAX_DESCRIPTION = 2_000
MAX_CLAIM_TEXT = 2_000
MAX_TITLE = 200  # a claim's tutorial and document

UPDATED = "recipe.updated(...)"  # where an error in a recipe made by `updated` lies


class RecipeError(MnistlabError):
    pass


@dataclass(frozen=True)
class Claim:
    """What a tutorial says its program achieves, and where it says so."""

    tutorial: str  # its title, as a reader would look it up
    document: str  # the tutorial's text, as kept in the project's shared/seeds/
    accuracy: float | None = None  # claimed test accuracy (fraction), None when none is stated
    text: str = ""

    def check(self) -> None:
        if self.accuracy is not None and not 0 < self.accuracy <= 1:
            raise ValueError("accuracy: expected a fraction in (0, 1], such as 0.992")
        _check_length("tutorial", self.tutorial, MAX_TITLE)
        _check_length("document", self.document, MAX_TITLE)
        _check_length("text", self.text, MAX_CLAIM_TEXT)


@dataclass(frozen=True)
class ModelSection:
    name: str
    init: str | None = None  # the model's own default scheme when None
    args: dict[str, Any] = field(default_factory=dict)  # every other key of [model]


OPTIMIZER_KEYS = {
    "sgd": {"lr", "momentum", "nesterov", "weight_decay"},
    "adam": {"lr", "betas", "eps", "weight_decay"},
    "adamw": {"lr", "betas", "eps", "weight_decay"},
    # RMSprop as Keras computes it: lr * g / sqrt(v + eps), rho 0.9 and eps 1e-7 by default.
    "keras-rmsprop": {"lr", "rho", "eps"},
}


@dataclass(frozen=True)
class OptimizerSection:
    name: str
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    rho: float = 0.9

    def check(self) -> None:
        _one_of("name", self.name, OPTIMIZER_KEYS)
        if not self.lr > 0:
            raise ValueError("lr: expected a learning rate above 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas: expected two numbers in [0, 1), such as [0.9, 0.999]")
        if not (0 <= self.rho < 1 and 0 <= self.momentum < 1):
            raise ValueError("rho and momentum: expected numbers in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("eps: expected > 0; weight_decay: expected >= 0")
        # PyTorch's SGD refuses Nesterov momentum without momentum, when the optimiser is built
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov = true needs momentum above 0 (such as momentum = 0.9)")


SCHEDULES = {
    "constant": "the same learning rate throughout",
    "onecycle": "linear warm-up to lr over `warmup` of the run, then linear decay to lr * final",
    "cosine": "linear warm-up over `warmup`, then cosine decay to lr * final",
}


@dataclass(frozen=True)
class ScheduleSection:
    name: str = "constant"
    warmup: float = 0.0  # fraction of all steps
    final: float = 0.0  # final learning rate as a fraction of the peak

    def check(self) -> None:
        _one_of("name", self.name, SCHEDULES)
        if not 0 <= self.warmup < 1:
            raise ValueError("warmup: expected a fraction of the run in [0, 1)")
        if not 0 <= self.final <= 1:
            raise ValueError("final: expected a fraction of the peak learning rate in [0, 1]")


@dataclass(frozen=True)
class TrainSection:
    batch_size: int
    epochs: int | None = None  # exactly one of epochs and steps
    steps: int | None = None
    split: str = "train"  # "train" (validated on "validation") or "train-full"
    loss_reduction: str = "mean"  # "sum" where a tutorial summed the loss over the batch
    label_smoothing: float = 0.0
    # "fp32"; "bf16" autocast; "auto": bf16 where the hardware computes it natively, else fp32
    precision: str = "fp32"
    log_every: int = 100
    # decay per step of an average of the weights (training/ema.py), which is then what is
    # validated, tested and saved; 0: no average, the last weights
    ema: float = 0.0
    # FreezeOut (Brock et al. 2017): a part of the model (a top-level name, such as fast-cnn's
    # "stem") stops training after this fraction of the steps, and later steps skip its backward
    freeze_after: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("epochs/steps: expected exactly one of them")
        bounds = {"batch_size": MAX_BATCH_SIZE, "epochs": MAX_EPOCHS, "steps": MAX_STEPS,
                  "log_every": MAX_STEPS}
        for key, most in bounds.items():
            _check_count(key, getattr(self, key), most)
        _one_of("split", self.split, ("train", "train-full"))
        _one_of("loss_reduction", self.loss_reduction, ("mean", "sum"))
        _one_of("precision", self.precision, ("fp32", "bf16", "auto"))
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing: expected a number in [0, 1)")
        if not 0 <= self.ema < 1:
            raise ValueError("ema: expected a decay in [0, 1) (0: no weight average)")
        for name, fraction in self.freeze_after.items():
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise ValueError(f"freeze_after.{name}: expected a fraction of the run in [0, 1], "
                                 f"got {brief(fraction)}")


@dataclass(frozen=True)
class AugmentSection:
    """Random distortions of the training images: affine ones, and optionally elastic ones
    (Simard et al. 2003); every limit 0 means none."""

    rotate: float = 0.0  # degrees, either way
    scale: float = 0.0  # fraction, bigger or smaller
    shear: float = 0.0  # degrees
    translate: float = 0.0  # pixels, in each direction
    elastic_alpha: float = 0.0  # elastic distortions' strength (pixels, scaling the field)
    elastic_sigma: float = 0.0  # their smoothness: the Gaussian's width, in pixels

    @property
    def enabled(self) -> bool:
        return any((self.rotate, self.scale, self.shear, self.translate, self.elastic_alpha))

    def check(self) -> None:
        if not (0 <= self.rotate <= 180 and 0 <= self.shear < 60 and 0 <= self.scale < 1
                and 0 <= self.translate <= 14):
            raise ValueError("expected rotate in [0, 180] and shear in [0, 60) degrees, scale in "
                             "[0, 1) and translate in [0, 14] pixels")
        if not (0 <= self.elastic_alpha <= 100 and 0 <= self.elastic_sigma <= 14):
            raise ValueError("expected elastic_alpha in [0, 100] and elastic_sigma in [0, 14] pixels")
        if self.elastic_alpha and self.elastic_sigma < 1:
            raise ValueError("elastic_alpha needs elastic_sigma of at least 1 pixel: an unsmoothed "
                             "field tears the image apart")


@dataclass(frozen=True)
class DataSection:
    dataset: str = "mnist"

    def check(self) -> None:
        if not NAME_PATTERN.fullmatch(self.dataset):
            raise ValueError(f"dataset: expected a dataset's name, got {_describe(self.dataset)}")


@dataclass(frozen=True)
class QuirksSection:
    """Faithful reproductions of what a tutorial's printed code really does."""

    # Deep MNIST as printed runs the optimiser only when step % 100 == 0, though a batch is
    # drawn on every iteration.
    update_every: int = 1
    # OpenGenus' CNN as printed never sets dropout's keep probability to 1 for the test.
    dropout_at_test: bool = False

    def check(self) -> None:
        _check_count("update_every", self.update_every, MAX_STEPS)


@dataclass(frozen=True)
class DistillSection:
    """Knowledge distillation (Hinton et al. 2015): the model learns, besides the labels, the
    averaged probabilities of trained models, the teachers, both softened by `temperature`;
    `weight` of the loss is the teachers', the rest the labels'. No teachers: none."""

    teachers: list[str] = field(default_factory=list)  # checkpoints: run folders, model files
    temperature: float = 4.0
    weight: float = 0.9

    def check(self) -> None:
        if len(self.teachers) > MAX_TEACHERS or not all(0 < len(t) <= 4096 for t in self.teachers):
            raise ValueError(f"teachers: expected at most {MAX_TEACHERS} checkpoints' paths")
        if not 0 < self.temperature <= 100:
            raise ValueError(f"temperature: expected a number above 0, at most 100, got "
                             f"{self.temperature}")
        if not 0 <= self.weight <= 1:
            raise ValueError(f"weight: expected a number from 0 to 1, got {self.weight}")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    model: ModelSection
    optimizer: OptimizerSection
    train: TrainSection
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    quirks: QuirksSection = field(default_factory=QuirksSection)
    distill: DistillSection = field(default_factory=DistillSection)
    claim: Claim | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __hash__(self) -> int:
        # equal recipes hash alike (a key in a dict or a set); the generated hash would fail on
        # the sections' lists and dicts
        return hash(_hashable(self.to_dict()))

    def with_length(self, *, epochs: int | None = None, steps: int | None = None) -> Recipe:
        """The same recipe trained for another length (one of epochs or steps)."""
        if epochs is None and steps is None:
            return self
        for name, value, most in (("epochs", epochs, MAX_EPOCHS), ("steps", steps, MAX_STEPS)):
            try:
                _check_count(name, value, most)
            except ValueError as e:  # an API caller's argument, named as such
                raise RecipeError(str(e)) from None
        train = dataclasses.replace(self.train, epochs=epochs, steps=steps)
        # the model is this recipe's, whose loading checked it; the length is checked above
        return _checked(dataclasses.replace(self, train=train), self.name, check_model=False)

    def updated(self, **sections: Any) -> Recipe:
        """A new recipe with some keys of its sections replaced, checked as a recipe file is:
        `recipe.updated(name="mine", optimizer={"lr": 0.01}, train={"epochs": 2})`. A length
        given in [train] (epochs or steps) replaces the other one."""
        table = self.to_dict()
        for key, value in sections.items():
            if key not in table:
                raise RecipeError(f"unknown recipe section {key!r}: expected one of "
                                  f"{', '.join(table)}")
            if isinstance(value, dict) and isinstance(table[key], dict):
                if key == "train" and ({"epochs", "steps"} & value.keys()):
                    table[key] = {**table[key], "epochs": None, "steps": None}
                table[key] = {**table[key], **value}
            else:
                table[key] = value
        return recipe_from_dict(table, UPDATED)


# ---- loading -------------------------------------------------------------------------------


def recipe_names() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in _shipped().iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path, *, check_model: bool = True) -> Recipe:
    """A shipped recipe by name, or a user's TOML file by path. `check_model=False` skips
    checking the [model] section (and `freeze_after`), which imports PyTorch: for listing the
    shipped recipes, which the tests check."""
    text = str(name_or_path)
    path = Path(text)
    # a bare name is a shipped recipe even if a folder of that name sits in the working
    # directory (`runs/fast`, say); a file of that name is the user's own
    if text.endswith(".toml") or path.is_file() or "/" in text or (
            path.exists() and not (_shipped() / f"{text}.toml").is_file()):
        return parse_recipe(_read_user_recipe(path), str(path), check_model=check_model)
    shipped = _shipped() / f"{text}.toml"
    if not shipped.is_file():
        raise RecipeError(
            f"unknown recipe '{text}'{did_you_mean(text, recipe_names())}; shipped recipes: "
            f"{', '.join(recipe_names())} "
            "(or give the path of a .toml file)"
        )
    return parse_recipe(shipped.read_text(encoding="utf-8"), f"recipe '{text}'",
                        check_model=check_model)


def _read_user_recipe(path: Path) -> str:
    """The text of a user's recipe file, read through `read_limited`: a special file is refused
    by its type and a file larger than MAX_RECIPE_BYTES by what is read."""
    try:
        data = read_limited(path, MAX_RECIPE_BYTES, "recipe")
    except MnistlabError as e:
        raise RecipeError(str(e)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: cannot read recipe: not UTF-8 text (byte {e.start})") from None


def parse_recipe(source: str, where: str, *, check_model: bool = True) -> Recipe:
    try:
        table = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{where}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise RecipeError(f"{where}: nested too deeply to be a recipe") from None
    return recipe_from_dict(table, where, check_model=check_model)


def recipe_from_dict(table: dict[str, Any], where: str, *, check_model: bool = True) -> Recipe:
    """Build and validate a recipe from a TOML table (or a checkpoint's copy of one)."""
    try:
        return _recipe_from_table(dict(table), where, check_model)
    except RecursionError:  # printing or copying values nested deeper than Python recurses
        raise RecipeError(f"{where}: nested too deeply to be a recipe") from None


def _recipe_from_table(table: dict[str, Any], where: str, check_model: bool) -> Recipe:
    model = table.get("model")
    if isinstance(model, dict):
        # [model] holds name and init; every other key is an argument of the model.
        known = {"name", "init", "args"}
        if not isinstance(model.get("args", {}), dict):
            raise RecipeError(f"{where}: 'model.args': expected a table, got {_describe(model['args'])}")
        args = dict(model.get("args") or {})
        args.update({k: v for k, v in model.items() if k not in known})
        table["model"] = {k: v for k, v in model.items() if k in known} | {"args": args}
    recipe = _build(Recipe, table, where, "")
    return _checked(recipe, where, check_model=check_model)


def _checked(recipe: Recipe, where: str, *, check_model: bool = True) -> Recipe:
    _check_texts(recipe, where)
    sections = {
        "claim": recipe.claim,
        "data": recipe.data,
        "optimizer": recipe.optimizer,
        "schedule": recipe.schedule,
        "train": recipe.train,
        "augment": recipe.augment,
        "quirks": recipe.quirks,
        "distill": recipe.distill,
    }
    for name, section in sections.items():
        if section is None:
            continue
        try:
            section.check()
        except ValueError as e:
            raise RecipeError(f"{where}: [{name}] {e}") from None
    if check_model:
        recipe = _check_model(recipe, where)
    unused = _unused_optimizer_keys(recipe.optimizer)
    if unused:
        raise RecipeError(
            f"{where}: [optimizer] {', '.join(sorted(unused))} does not apply to "
            f"'{recipe.optimizer.name}', which takes: "
            f"{', '.join(sorted(OPTIMIZER_KEYS[recipe.optimizer.name]))}"
        )
    _check_recorded_size(recipe, where)
    return recipe


def _check_texts(recipe: Recipe, where: str) -> None:
    """The recipe's name is a plain folder name, and its texts fit a checkpoint's header."""
    if not NAME_PATTERN.fullmatch(recipe.name):
        raise RecipeError(f"{where}: name: expected {NAME_RULE}, got {_describe(recipe.name)}")
    try:
        _check_length("description", recipe.description, MAX_DESCRIPTION)
    except ValueError as e:
        raise RecipeError(f"{where}: {e}") from None


def _check_recorded_size(recipe: Recipe, where: str) -> None:
    """Each field is bounded; this bounds what they make together, as checkpoints hold it
    (model arguments left unchecked, for listing, are measured as text)."""
    size = len(json.dumps(recipe.to_dict(), default=str))
    if size > MAX_RECIPE_JSON_CHARS:
        raise RecipeError(f"{where}: the recipe takes {size:,} characters as a checkpoint records "
                          f"it, more than the {MAX_RECIPE_JSON_CHARS:,} allowed")


def _check_model(recipe: Recipe, where: str) -> Recipe:
    """The recipe with its model's arguments checked (`check_model_args`: the one check they
    get) and its init scheme, and `freeze_after`'s parts found in the model. PyTorch is imported
    here, not at the top of the module, so that listing the recipes does not wait seconds for it."""
    from mnistlab.models import check_init, check_model_args

    try:
        args = check_model_args(recipe.model.name, recipe.model.args)
        if recipe.model.init is not None:
            check_init(recipe.model.init)
    except MnistlabError as e:
        raise RecipeError(f"{where}: [model] {e}") from None
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, args=args))
    if recipe.train.freeze_after:
        _check_parts(recipe, where)
    return recipe


def _check_parts(recipe: Recipe, where: str) -> None:
    """Every part that `freeze_after` names is a part of the model with weights: the model is
    built on the meta device (its arguments checked, nothing allocated) to list its parts."""
    import torch

    from mnistlab.models import build_model

    with torch.device("meta"):
        model = build_model(recipe.model.name, init="pytorch", **recipe.model.args)
    parts = [name for name, part in model.named_children() if any(True for _ in part.parameters())]
    freeze_after = recipe.train.freeze_after
    for name in freeze_after:
        if name not in parts:
            hint = did_you_mean(name, parts) if isinstance(name, str) else ""
            raise RecipeError(f"{where}: [train] freeze_after: {recipe.model.name} has no part "
                              f"'{name}' with weights{hint}; its parts: "
                              f"{', '.join(parts)}")
    # with every part frozen before the end, the steps left have nothing to train, and
    # PyTorch's backward pass fails on a loss that no weight gets a gradient from
    if all(freeze_after.get(name, 1) < 1 for name in parts):
        raise RecipeError(f"{where}: [train] freeze_after freezes every part of "
                          f"{recipe.model.name} ({', '.join(parts)}) before the run ends: leave "
                          "one part out, or give it 1 (frozen at the end)")


def _unused_optimizer_keys(opt: OptimizerSection) -> set[str]:
    defaults = OptimizerSection(name=opt.name, lr=opt.lr)
    changed = {f.name for f in dataclasses.fields(opt) if getattr(opt, f.name) != getattr(defaults, f.name)}
    return changed - OPTIMIZER_KEYS[opt.name] - {"name", "lr"}


def _build(cls: type, table: Any, where: str, prefix: str) -> Any:
    """Instantiate dataclass `cls` from `table`, checking every key and type."""
    section = f"[{prefix}]" if prefix else "top level"
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: {section}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(table) - set(fields)
    if unknown:
        raise RecipeError(
            f"{where}: {section}: unknown key '{sorted(unknown, key=str)[0]}'; expected one of: "
            f"{', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in table:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if no_default:
                raise RecipeError(f"{where}: missing key '{key}'")
            continue
        values[name] = _convert(table[name], hints[name], where, key)
    return cls(**values)


def _convert(value: Any, hint: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if value is None and type(None) in args:
            return None
        return _convert(value, options[0], where, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: '{key}': expected a list, got {_describe(value)}")
        return [_convert(v, args[0], where, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: '{key}': expected a table, got {_describe(value)}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: '{key}': expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer past 1.8e308, from Python (TOML's stop at 2**63)
            number = math.inf
        if not math.isfinite(number):
            raise RecipeError(f"{where}: '{key}': expected a finite number, got {brief(value)}")
        return number
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: '{key}': expected a whole number, got {_describe(value)}")
    if hint in (str, bool) and not isinstance(value, hint):
        raise RecipeError(f"{where}: '{key}': expected {_NAMES[hint]}, got {_describe(value)}")
    return value


_NAMES = {str: "a string", bool: "true or false"}


def _hashable(value: Any) -> Any:
    """`value` with its dicts and lists made tuples, which hash as equal values do (1 as 1.0)."""
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    return value


def count_rule(most: int) -> str:
    """What a count from 1 to `most` is expected to be, in an error message."""
    return f"expected a whole number of at least 1, at most {most:,}"


def _check_count(key: str, value: int | None, most: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= most):
        raise ValueError(f"{key}: {count_rule(most)}, got {brief(value)}")


def _check_length(key: str, text: str, most: int) -> None:
    if len(text) > most:
        raise ValueError(f"{key}: expected at most {most:,} characters, got {len(text):,}")


def _describe(value: Any) -> str:
    shown = brief(value)
    if shown.startswith("a "):  # an integer too long to show, which `brief` says in words
        return shown
    return f"{type(value).__name__} {shown}"[:80]


def _one_of(key: str, value: str, allowed: Any) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: expected one of {', '.join(allowed)}, got '{value}'")


def _shipped() -> Any:
    return resources.files("mnistlab.recipebook")

"""Where a run starts: the model made for the data's classes, and, with `--init`, the trained
model whose weights it starts from (fine-tuning).

A dataset's classes set the model's outputs: MNIST's ten digits, or a folder's own classes
(letters, say), recorded in the recipe the run keeps (`classes` among the model's arguments,
where it is not 10) so that a resumed run builds the same model. A run started from a
checkpoint trains that checkpoint's architecture (the recipe gives the optimiser, the schedule
and the distortions) and copies all its weights. Where the data holds some or all of its classes, it keeps them all
(the labels index its classes: load_split's `classes`); where the data has other classes, the
classifier, the layers whose shape depends on the classes, is new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mnistlab import checkpoint
from mnistlab.data.registry import load_arrays
from mnistlab.errors import MnistlabError
from mnistlab.models import classifier_names
from mnistlab.recipebook import Recipe
from mnistlab.recipebook.recipe import UPDATED, RecipeError

MNIST_CLASSES = 10  # a model's outputs when its arguments do not say


@dataclass
class Start:
    recipe: Recipe  # with the model this run trains
    class_names: list[str]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # to copy in; {}: none
    record: dict[str, Any] | None = None  # what the checkpoint's metadata says of `--init`


def plan_start(recipe: Recipe, data_dir: str | None, init: str | None = None,
               recorded: list[str] | None = None) -> Start:
    """The recipe as this run trains it and what its model starts from; a resumed run's
    classes are the `recorded` ones."""
    classes = recorded or list(load_arrays(recipe.data.dataset, data_dir).class_names)
    weights, record = {}, None
    if init is not None:
        model, meta = checkpoint.load_model(init, "cpu")  # checked, as every load is
        spec = meta["model"]
        args = {k: v for k, v in spec.get("args", {}).items() if k != "classes"}
        try:
            recipe = recipe.updated(model={"name": spec["name"], "args": args})
        except RecipeError as e:  # a recipe's [train] may name parts of its own model
            raise RecipeError(f"recipe {recipe.name!r} cannot train the model of {init} "
                              f"({spec['name']}): {str(e).removeprefix(UPDATED + ': ')}") from None
        weights = model.state_dict()
        new = sorted(classifier_names(spec["name"], args))
        theirs = checkpoint.class_names(meta)
        if set(classes) <= set(theirs):  # some or all of its classes: it keeps them all
            classes, new = theirs, []
        else:
            weights = {k: v for k, v in weights.items() if k not in new}
        record = {"checkpoint": str(checkpoint.resolve_checkpoint(init)),
                  "class_names": checkpoint.class_names(meta), "new": new}
    return Start(_with_classes(recipe, len(classes)), classes, weights, record)


def _with_classes(recipe: Recipe, count: int) -> Recipe:
    args = dict(recipe.model.args)
    stated = args.get("classes", MNIST_CLASSES)
    if "classes" in recipe.model.args and stated != count:
        raise MnistlabError(f"the recipe's model has {stated} classes, the data {count}: leave "
                            "classes out of [model], the data sets it")
    if count == MNIST_CLASSES:
        args.pop("classes", None)
    else:
        args["classes"] = count
    return recipe if args == recipe.model.args else recipe.updated(model={"args": args})


def start_from(model: torch.nn.Module, start: Start) -> None:
    """Copy the starting weights into a freshly built model (the classifier keeps its fresh
    initialisation where it is new)."""
    if start.weights:
        missing, unexpected = model.load_state_dict(start.weights, strict=False)
        assert not unexpected and set(missing) == set(start.record["new"]), (missing, unexpected)


def describe(start: Start) -> str | None:
    """The line a run prints about where it starts, if anywhere."""
    if start.record is None:
        return None
    source, new = start.record["checkpoint"], start.record["new"]
    if not new:
        return f"starting from the weights of {source}"
    before = len(start.record["class_names"])
    return (f"starting from the weights of {source}, with a new classifier ({', '.join(new)}): "
            f"{len(start.class_names)} classes instead of its {before}")

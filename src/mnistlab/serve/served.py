"""The models a server serves, by name: `mnistlab serve --model A --model B` serves both, the
first being the default, and `?model=NAME` picks one.

Each model has its own batcher (its own thread, started on its first request): a request for
one model never waits behind another's batch, and a model nobody asks for costs no thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistlab.checkpoint import MODEL_FILE, shipped_dir
from mnistlab.inference.predictor import Predictor
from mnistlab.serve.batcher import Batcher
from mnistlab.serve.errors import InvalidRequestError, UnknownModelError


@dataclass
class ServedModel:
    name: str
    predictor: Predictor
    batcher: Batcher
    classes: int  # how many classes it reads: the most `top_k` may ask for
    top_k: int  # the server's `top_k`, at most `classes`


def model_name(target: str) -> str:
    """The name a client picks a model by: a shipped model's own name (`keras-cnn`), a run
    folder's name (`runs/mine` -> `mine`), a file's name without its suffix (`a/b.onnx` ->
    `b`). Never a path: the server's folders are none of the client's business."""
    if shipped_dir(target) is not None:
        return str(target)
    path = Path(target)
    if path.name == MODEL_FILE:
        path = path.parent
    elif path.suffix:
        return path.stem or "model"
    return path.resolve().name or "model"


def unique_names(names: list[str]) -> list[str]:
    """`names` with a repeated one numbered (`mine`, `mine-2`): two run folders both called
    `best` in different places are both served."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}-{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def serve_models(predictors: Predictor | Mapping[str, Predictor], top_k: int,
                 timeout: float) -> dict[str, ServedModel]:
    """Each predictor by its name, in order (the first is the default). A single predictor is
    named after its checkpoint (`default` for the shipped model)."""
    if not isinstance(predictors, Mapping):
        checkpoint = predictors.info.get("checkpoint") or predictors.info.get("model") or "model"
        predictors = {model_name(str(checkpoint)): predictors}
    if not predictors:
        raise ValueError("a server needs at least one model")
    served = {}
    for name, predictor in predictors.items():
        classes = len(predictor.info["class_names"])
        served[name] = ServedModel(name, predictor, Batcher(predictor, timeout=timeout),
                                   classes, min(top_k, classes))
    return served


def choose(models: dict[str, ServedModel], default: ServedModel, name: str | None) -> ServedModel:
    """The model `?model=` names, the default without it; UnknownModelError for another name."""
    if name is None:
        return default
    served = models.get(name)
    if served is None:
        shown = name if len(name) <= 100 else name[:100] + "..."
        raise UnknownModelError(f"no model {shown!r} is served here: the models are "
                                f"{', '.join(models)} (GET /api/models lists them)")
    return served


# past this many significant digits a count is read as this many: int() refuses strings of more
# than 4,300 digits, and nothing a request counts comes near 10**18
MOST_DIGITS = 18


def whole_number(text: str) -> int | None:
    """`text` as a whole number when it is ASCII digits only (leading zeros allowed), else None;
    a number of more than MOST_DIGITS significant digits reads as 10**MOST_DIGITS."""
    # isdigit alone admits '²', which int() refuses: ASCII digits only
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= MOST_DIGITS else 10**MOST_DIGITS


def parse_top_k(text: str | None, served: ServedModel) -> int:
    """`?top_k=`: 1 up to the model's number of classes; the server's own without it."""
    if text is None:
        return served.top_k
    top_k = whole_number(text)
    if top_k is None or not 1 <= top_k <= served.classes:
        raise InvalidRequestError(f"top_k must be a whole number from 1 to {served.classes} "
                                  f"(the classes of model {served.name}), got {text[:20]!r}")
    return top_k


def describe(served: ServedModel, public: Mapping[str, Any], default: bool) -> dict[str, Any]:
    """One entry of `GET /api/models`: what `/api/model` says of it, with its name."""
    return {"name": served.name, "default": default, **public}

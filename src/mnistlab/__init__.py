"""mnistlab: the TensorFlow MNIST tutorials made real, in PyTorch.

The public API is what this module names in `__all__`; everything in its submodules is
internal and may change. A tour:

>>> import mnistlab
>>> model = mnistlab.load("default")                      # the shipped model
>>> images, labels = mnistlab.datasets.load("mnist", split="test")
>>> model.predict_proba(images[:3]).argmax(axis=1).tolist(), labels[:3].tolist()
([7, 2, 1], [7, 2, 1])

`mnistlab.train("quick")` trains a recipe, `model.predict("digit.png")` reads a picture,
`model.evaluate()` measures, `model.summary()` lists the layers, `model.export("m.onnx")`
writes ONNX. Every mistake raises a `MnistlabError` with the line the command prints.
The names are loaded on first use, so `import mnistlab` costs no PyTorch import.
"""

import importlib

from mnistlab.errors import MnistlabError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "recipes": "mnistlab.api",
    "recipe": "mnistlab.api",
    "train": "mnistlab.api",
    "resume": "mnistlab.api",
    "compare": "mnistlab.api",
    "ensemble": "mnistlab.api",
    "reproduce": "mnistlab.api",
    "Run": "mnistlab.api",
    "Reproduction": "mnistlab.api",
    "load": "mnistlab.model",
    "Model": "mnistlab.model",
    "Recipe": "mnistlab.recipebook",
    "RecipeError": "mnistlab.recipebook",
    "CheckpointError": "mnistlab.checkpoint",
    "ImageError": "mnistlab.inference.errors",
    "InferenceError": "mnistlab.inference.errors",
}
_SUBMODULES = {"datasets"}

__all__ = ["MnistlabError", "__version__", "datasets", *_LAZY]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"mnistlab.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""Models: the tutorials' networks and ours, a registry by name, init schemes, a Keras-style summary."""

from mnistlab.models.args import Arg
from mnistlab.models.init import INIT_SCHEMES, check_init, init_weights
from mnistlab.models.layers import weights_layout
from mnistlab.models.summary import LayerRow, format_summary, summarize
from mnistlab.models.zoo import (
    MODELS,
    ModelEntry,
    build_model,
    check_model_args,
    classifier_names,
    count_parameters,
    model_names,
)

__all__ = [
    "INIT_SCHEMES",
    "MODELS",
    "Arg",
    "LayerRow",
    "ModelEntry",
    "build_model",
    "check_init",
    "check_model_args",
    "classifier_names",
    "count_parameters",
    "format_summary",
    "init_weights",
    "model_names",
    "summarize",
    "weights_layout",
]

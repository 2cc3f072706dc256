"""The models, and a registry of them by name.

Every model takes a float tensor (N, 1, 28, 28) of pixels in [0, 1] and returns logits (N, C),
one per class: MNIST's ten digits unless `classes` says otherwise (a folder of one's own
images: letters, say). `classifier_names` names the layers that depend on the classes.
None applies a softmax: the loss and the predictor do, and Keras' softmax followed by categorical
cross-entropy is the same function as cross-entropy on logits.

Layers are named so that `format_summary` reads like the tutorials' own descriptions. Activations
are functional (F.relu), as in the tutorials, where an activation belongs to its layer.

Tensors are flattened in PyTorch's (channels, height, width) order where TF flattens (height,
width, channels). That permutes the inputs of the first dense layer and nothing else: with
independently drawn initial weights the two are the same model.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import MnistlabError, did_you_mean
from mnistlab.models.args import Arg
from mnistlab.models.init import init_weights
from mnistlab.models.layers import (
    Conv2dTFSame,
    Dropout,
    Linear,
    PatchConv2d,
    to_onednn_layout,
    to_plain_layout,
)

# -----------------------------------------------------------------------------
# Deep MNIST for Experts: softmax regression.


class Softmax(nn.Module):
    """Softmax regression: one linear layer from the 784 pixels to 10 logits (Deep MNIST)."""

    def __init__(self, *, classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = Linear(28 * 28, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


# -----------------------------------------------------------------------------
# Deep MNIST and OpenGenus: the deep CNN of TensorFlow's "Deep MNIST for Experts".


class DeepCNN(nn.Module):
    """Two 5x5 SAME convolutions with max-pooling, a 1024-unit dense layer, dropout (Deep MNIST).

    OpenGenus' CNN is the same network with N(0, 1) initialisation and dropout 0.2 (keep 0.8).
    """

    trains_on_onednn_layout = True  # its forward pass calls to_onednn_layout (layers.weights_layout)

    def __init__(self, *, dropout: float = 0.5, classes: int = 10) -> None:
        super().__init__()
        # Stride 1 and a 5x5 kernel: TF's SAME is 2 on every side, so padding=2 is exact.
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)  # 28x28
        # TF pools 2x2 with SAME padding, which on even sizes (28, 14) pads nothing.
        self.pool1 = nn.MaxPool2d(2)  # 14x14
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool2 = nn.MaxPool2d(2)  # 7x7
        self.flatten = nn.Flatten()
        self.fc1 = Linear(7 * 7 * 64, 1024)
        self.dropout = Dropout(dropout)  # TF's keep_prob is 1 - dropout
        self.fc2 = Linear(1024, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_onednn_layout(x, self.training)
        # ReLU after the pool instead of before: the same function and gradient (max-pooling
        # commutes with any non-decreasing function), on a quarter of the values.
        x = F.relu(self.pool1(self.conv1(x)))
        x = F.relu(to_plain_layout(self.pool2(self.conv2(x))))  # PyTorch's ReLU is the faster here
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(self.dropout(x))


# -----------------------------------------------------------------------------
# The strided CNN tutorial.


class StridedCNN(nn.Module):
    """Two stride-2 convolutions without bias or activation, each max-pooled (the strided CNN tutorial).

    The tutorial's convolutions are purely linear (no bias, no ReLU): the first nonlinearity is the
    max-pooling, then the ReLU of the dense layer. Kept as printed.
    """

    def __init__(self, *, dropout: float = 0.5, classes: int = 10) -> None:
        super().__init__()
        # TF SAME with stride 2 pads asymmetrically (see layers.py): 28 -> 14, 7 -> 4.
        self.conv1 = Conv2dTFSame(1, 32, 5, stride=2, bias=False)  # 14x14
        self.pool1 = nn.MaxPool2d(2)  # VALID: 7x7
        self.conv2 = Conv2dTFSame(32, 64, 5, stride=2, bias=False)  # 4x4
        self.pool2 = nn.MaxPool2d(2)  # 2x2
        self.flatten = nn.Flatten()
        self.fc1 = Linear(2 * 2 * 64, 1024)
        self.dropout = Dropout(dropout)
        self.fc2 = Linear(1024, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # PyTorch's own layout: at batch 50 these tensors are too small for oneDNN's to pay
        # for its conversions: 2,000 steps trained slower in it
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(self.dropout(x))


# -----------------------------------------------------------------------------
# The Keras tutorial: the small CNN of "Deep Learning with Python".


class KerasCNN(nn.Module):
    """Three 3x3 VALID convolutions, two max-pools, Dense 64, Dense 10: 93,322 parameters."""

    trains_on_onednn_layout = True  # its forward pass calls to_onednn_layout (layers.weights_layout)

    def __init__(self, *, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)  # 26x26
        self.pool1 = nn.MaxPool2d(2)  # 13x13
        self.conv2 = nn.Conv2d(32, 64, 3)  # 11x11
        self.pool2 = nn.MaxPool2d(2)  # 5x5 (floor, as Keras)
        self.conv3 = nn.Conv2d(64, 64, 3)  # 3x3
        self.flatten = nn.Flatten()  # 576
        self.fc1 = Linear(3 * 3 * 64, 64)
        self.fc2 = Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_onednn_layout(x, self.training)
        # ReLU after the pool, as in DeepCNN: same result, a quarter of the work.
        x = F.relu(self.pool1(self.conv1(x)))
        x = F.relu(self.pool2(self.conv2(x)))
        x = F.relu(to_plain_layout(self.conv3(x)))
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


# -----------------------------------------------------------------------------
# Ours: a small modern CNN, to be tuned for speed and accuracy.


class ConvBlock(nn.Module):
    """3x3 convolutions (no bias: BatchNorm's shift replaces it), each with BatchNorm and ReLU,
    the last one max-pooled 2x2 before its ReLU.

    Pooling before the ReLU gives the same result as after it (max-pooling commutes with any
    non-decreasing function) on a quarter of the values; BatchNorm must stay before the pool,
    since its scale may be negative.
    """

    def __init__(self, in_channels: int, out_channels: int, *, ceil_mode: bool = False,
                 convs: int = 1) -> None:
        super().__init__()
        # the first conv keeps its historical name so that one-conv checkpoints still load
        self.inner = nn.ModuleList()
        for _ in range(convs - 1):
            self.inner.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()))
            in_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.inner:
            x = layer(x)
        return F.relu(self.pool(self.bn(self.conv(x))))


class MnistlabCNN(nn.Module):
    """Three blocks of conv-BN(-pool)-ReLU (28 -> 14 -> 7 -> 4), dropout, one linear layer.

    One convolution per resolution is built for speed on small machines; `convs=2` doubles the
    depth (VGG-style) for the accuracy recipes.
    """

    def __init__(self, *, widths: Sequence[int] = (32, 64, 128), dropout: float = 0.1,
                 convs: int = 1, classes: int = 10) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.block1 = ConvBlock(1, w0, convs=convs)  # 28x28 -> 14x14
        self.block2 = ConvBlock(w0, w1, convs=convs)  # 14x14 -> 7x7
        self.block3 = ConvBlock(w1, w2, ceil_mode=True, convs=convs)  # 7x7 -> 4x4, keeping the last row
        self.flatten = nn.Flatten()
        self.dropout = Dropout(dropout)
        self.fc = Linear(w2 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.dropout(self.flatten(x)))


class PoolFirstBlock(nn.Module):
    """Convolution, 2x2 max-pool, BatchNorm, ReLU: normalising after the pool touches a quarter
    of the values, which on a CPU is most of a small network's non-convolution time."""

    def __init__(self, conv: nn.Conv2d, *, ceil_mode: bool) -> None:
        super().__init__()
        self.conv = conv
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)
        self.bn = nn.BatchNorm2d(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.pool(self.conv(x))))


class FastCNN(nn.Module):
    """The cheapest network that still reaches 99% in one epoch: a 4x4 stride-2 stem, then
    3x3 blocks at 7x7 and below (28 -> 14 -> 7 by the stem and its pool, then 4, 2, 1).

    Nearly all its arithmetic is one 3x3 convolution at 7x7, and every width is a multiple of 32
    because oneDNN's convolutions run fastest there (24 channels measured slower than 32).

    `crop` drops that many pixels from each side of the image first. MNIST centres each digit's
    20x20 box in the 28x28 frame, so a 2-pixel border is nearly always blank, and cropping it
    leaves the blocks 6x6 (then 3, 2, 1) instead of 7x7: about a third less arithmetic; 4 pixels
    leave 5x5 (then 3).

    `stem_padding = 0` drops the stem's zero padding: with `crop = 3` the stem then covers the
    same 22x22 square as with `crop = 4` and padding, at the same cost, with real pixels where
    the padding put zeros.

    `hidden` puts a fully connected layer of that many units (with ReLU) before the classifier.
    On a CPU it costs less than another convolution block at 3x3, which is mostly padding.
    """

    def __init__(
        self, *, widths: Sequence[int] = (32, 32), dropout: float = 0.0, crop: int = 0,
        stem_padding: int = 1, hidden: int = 0, classes: int = 10,
    ) -> None:
        super().__init__()
        self.crop = crop
        self.stem = PoolFirstBlock(PatchConv2d(1, widths[0], 4, stride=2, padding=stem_padding,
                                               bias=False), ceil_mode=False)
        self.blocks = nn.Sequential(*[
            PoolFirstBlock(nn.Conv2d(w_in, w_out, 3, padding=1, bias=False), ceil_mode=True)
            for w_in, w_out in zip(widths, widths[1:])
        ])
        side = ((28 - 2 * crop + 2 * stem_padding - 4) // 2 + 1) // 2  # the stem, then its pool
        for _ in widths[1:]:
            side = math.ceil(side / 2)
        features = widths[-1] * side * side
        self.hidden = Linear(features, hidden) if hidden else None
        self.dropout = Dropout(dropout)
        self.fc = Linear(hidden or features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop:
            x = x[:, :, self.crop : -self.crop, self.crop : -self.crop]
        x = self.blocks(self.stem(x))
        # flatten in (height, width, channels) order: for a channels-last tensor that is a view,
        # where the usual order costs a copy forward and a slow strided gradient backward
        x = x.permute(0, 2, 3, 1).flatten(1)
        if self.hidden is not None:
            x = F.relu(self.hidden(x))
        return self.fc(self.dropout(x))


class ValidCNN(nn.Module):
    """Convolutions without padding or pooling, each with BatchNorm and ReLU, until the image
    is 8x8 (4x4 with 7x7 kernels), then one linear layer and BatchNorm over the ten logits: the
    simple CNNs of An et al. (2020), whose ensembles reached 99.87% on MNIST.

    `kernel` 3 stacks ten 3x3 convolutions of 32 to 176 channels (28 -> 8), 5 five 5x5 ones of
    32 to 160 (28 -> 8), 7 four 7x7 ones of 48 to 192 (28 -> 4): the paper's M3, M5 and M7. The
    three see the digit through receptive fields of different shapes, which is what makes
    their errors differ.
    """

    WIDTHS = {3: [32, 48, 64, 80, 96, 112, 128, 144, 160, 176], 5: [32, 64, 96, 128, 160],
              7: [48, 96, 144, 192]}

    def __init__(self, *, kernel: int = 5, classes: int = 10) -> None:
        super().__init__()
        widths = self.WIDTHS[kernel]
        layers: dict[str, nn.Module] = {}
        for i, (w_in, w_out) in enumerate(zip([1] + widths, widths), start=1):
            layers |= {f"conv{i}": nn.Conv2d(w_in, w_out, kernel, bias=False),
                       f"bn{i}": nn.BatchNorm2d(w_out), f"relu{i}": nn.ReLU()}
        self.convs = nn.Sequential(OrderedDict(layers))
        side = 28 - len(widths) * (kernel - 1)
        self.fc = Linear(widths[-1] * side * side, classes, bias=False)
        self.bn = nn.BatchNorm1d(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flatten in (height, width, channels) order: a view of a channels-last tensor
        x = self.convs(x).permute(0, 2, 3, 1).flatten(1)
        return self.bn(self.fc(x))


# -----------------------------------------------------------------------------
# The registry.


# The arguments' bounds. The upper ones are far beyond any sane MNIST model (the widest layer of
# any recipe has 256 channels, An et al.'s 192; fast-cnn's hidden layer 128 units) and are there
# so that a recipe or checkpoint naming huge sizes is one clear error, not gigabytes allocated.
MAX_WIDTH = 1024
MAX_HIDDEN = 4096
# The model as a whole, since arguments each within bounds can still add up (mnistlab-cnn with
# widths of 1,024 and four convolutions a block has 104 million parameters). The largest
# shipped models have 3.3 million parameters (deep-cnn) and keep 2.9 MB of activations per image
# (valid-cnn with 3x3 kernels). 100 million parameters are 400 MB of weights, 1.6 GB with Adam's
# moments and the gradients; 32 MiB of activations per image are 4 GiB for a batch of 128.
MAX_PARAMETERS = 100_000_000
MAX_ACTIVATION_BYTES = 32 << 20
DROPOUT = Arg(float, 0, 1, open_high=True, what="a drop probability")
# every model's: its number of outputs, the classes of the dataset it is trained on
MAX_CLASSES = 1000
CLASSES = Arg(int, 2, MAX_CLASSES, note="classes")


def _widths(fewest: int, most: int) -> Arg:
    return Arg(list, 1, MAX_WIDTH, length=(fewest, most), note="channels")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    tutorial: str | None  # the tutorial(s) whose network it is, or None for ours
    default_init: str  # a key of INIT_SCHEMES
    builder: Callable[..., nn.Module]  # takes keyword arguments only
    # what each of the builder's arguments may be, in its order; the builder trusts them
    args: dict[str, Arg] = field(default_factory=dict)

    def __post_init__(self) -> None:  # every model takes `classes`
        object.__setattr__(self, "args", {**self.args, "classes": CLASSES})

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments and their defaults (lists, not tuples: JSON-ready)."""
        params = inspect.signature(self.builder).parameters.values()
        return {
            p.name: list(p.default) if isinstance(p.default, tuple) else p.default
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("softmax", "softmax regression, 784 -> 10", "Deep MNIST", "zeros", Softmax),
        ModelEntry(
            "deep-cnn",
            "two 5x5 SAME convs + pools, fc 1024, dropout",
            "Deep MNIST",
            "truncated-normal",
            DeepCNN,
            {"dropout": DROPOUT},
        ),
        ModelEntry(
            "strided-cnn",
            "two 5x5 stride-2 convs without bias or activation + pools, fc 1024, dropout",
            "strided CNN",
            "truncated-normal-xavier",
            StridedCNN,
            {"dropout": DROPOUT},
        ),
        ModelEntry(
            "keras-cnn",
            "three 3x3 VALID convs, two pools, dense 64, dense 10 (93,322 parameters)",
            "Keras CNN",
            "glorot-uniform",
            KerasCNN,
        ),
        ModelEntry(
            "mnistlab-cnn",
            "three conv-BN-pool-ReLU blocks, dropout, linear (ours, fast)",
            None,
            "pytorch",
            MnistlabCNN,
            {"widths": _widths(3, 3), "dropout": DROPOUT, "convs": Arg(int, 1, 4)},
        ),
        ModelEntry(
            "fast-cnn",
            "4x4 stride-2 stem, conv-pool-BN-ReLU blocks at 7x7 and below (6x6 with crop = 2), linear (ours, fastest)",
            None,
            "pytorch",
            FastCNN,
            {"widths": _widths(2, 4), "dropout": DROPOUT,
             "crop": Arg(int, 0, 4, note="pixels from each side"), "stem_padding": Arg(int, choices=(0, 1)),
             "hidden": Arg(int, 0, MAX_HIDDEN, note="units; 0: none")},
        ),
        ModelEntry(
            "valid-cnn",
            "unpadded 3x3, 5x5 or 7x7 conv-BN-ReLU layers down to 8x8 (4x4), no pooling, linear, BN (An et al. 2020)",
            None,
            "pytorch",
            ValidCNN,
            {"kernel": Arg(int, choices=tuple(ValidCNN.WIDTHS))},
        ),
    ]
}

# build_model's own keywords: no model may take an argument so named
RESERVED = ("name", "init")


def model_names() -> list[str]:
    return list(MODELS)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name`, or a MnistlabError listing the known models."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(MODELS)
        raise MnistlabError(f"unknown model {name!r}{did_you_mean(name, MODELS)}; "
                            f"known models: {known}") from None


def check_model_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Model `name`'s arguments `args` checked, as the model takes them (a float where an
    integer was written, lists for tuples), or one MnistlabError naming the argument and what
    it should be. Where arguments come in from outside (a recipe, a checkpoint's metadata), this
    is their one check: `build_model` trusts them."""
    entry = get_entry(name)
    checked = {}
    for key, value in args.items():
        if key not in entry.args:
            takes = f"it takes: {', '.join(entry.args)}" if entry.args else "it takes no arguments"
            if key in RESERVED:
                raise MnistlabError(f"model {name!r} takes no argument {key!r}: the model's {key} is "
                                    f"given beside its arguments, not among them; {takes}")
            hint = did_you_mean(key, entry.args) if isinstance(key, str) else ""
            raise MnistlabError(f"model {name!r} takes no argument {key!r}{hint}; {takes}")
        checked[key] = entry.args[key].check(key, value)
    _check_size(entry, checked)
    return checked


def _check_size(entry: ModelEntry, args: dict[str, Any]) -> None:
    """Refuse a model larger than MAX_PARAMETERS or MAX_ACTIVATION_BYTES per image, built on
    PyTorch's meta device, which allocates nothing, to count."""
    with torch.device("meta"):
        model = entry.builder(**args)
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > MAX_PARAMETERS:
        raise MnistlabError(f"the model would have {parameters:,} parameters, more than the "
                            f"{MAX_PARAMETERS:,} mnistlab builds")
    activations = activation_bytes(model)
    if activations > MAX_ACTIVATION_BYTES:
        raise MnistlabError(f"the model would keep {activations / 2**20:,.1f} MiB of activations "
                            f"per image, more than the {MAX_ACTIVATION_BYTES / 2**20:,.0f} MiB "
                            "mnistlab builds")


def activation_bytes(model: nn.Module) -> int:
    """The bytes (float32) of the outputs of `model`'s layers for one 28x28 image: about what
    training keeps per image for the backward pass. Worked out from the layers' sizes, taken in
    the order the model registers them, which is the order every model here runs them in
    (tests/test_hostile_recipes.py compares it with a real forward pass): nothing is computed
    or allocated, and PyTorch's meta kernels, a second to load, are not needed."""
    side = 28 - 2 * getattr(model, "crop", 0)  # a model that crops its input says by how much
    shape: tuple[int, ...] = (1, side, side)  # channels, height, width; (features,) once flat
    total = 0
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # empty ones too
    for layer in model.modules():
        if next(layer.children(), None) is None and not isinstance(layer, containers):
            shape = _output_shape(layer, shape)
            total += 4 * math.prod(shape)
    return total


def _output_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(layer, nn.Linear):
        return (layer.out_features,)
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)) and len(shape) == 3:
        channels = layer.out_channels if isinstance(layer, nn.Conv2d) else shape[0]
        return (channels, _side(layer, shape[1], 0), _side(layer, shape[2], 1))
    return shape  # batch norm, activations, dropout, flatten: as many values as they are given


def _side(layer: nn.Conv2d | nn.MaxPool2d, size: int, axis: int) -> int:
    """The output's length along `axis` of a convolution or max-pooling of an input `size` long,
    by PyTorch's formula (and TensorFlow's SAME for Conv2dTFSame)."""
    def along(value: int | tuple[int, ...]) -> int:
        return value[axis] if isinstance(value, tuple) else value

    stride = along(layer.stride)
    if isinstance(layer, Conv2dTFSame):
        return -(-size // stride)
    padding = along(layer.padding)
    span = size + 2 * padding - along(layer.dilation) * (along(layer.kernel_size) - 1) - 1
    if not getattr(layer, "ceil_mode", False):
        return span // stride + 1
    out = -(-span // stride) + 1
    # as PyTorch does, a last window that would start past the input (and its padding) is dropped
    return out - 1 if (out - 1) * stride >= size + padding else out


def build_model(name: str, *, init: str | None = None, **kwargs: Any) -> nn.Module:
    """Build model `name` from `kwargs`, then initialise it (default: the tutorial's scheme).

    The arguments are trusted, not checked again: they come from code, or from a recipe or a
    checkpoint whose loader checked them (`check_model_args`).
    Initialisation draws from torch's global RNG: seed it first for reproducible weights.
    """
    entry = get_entry(name)
    model = entry.builder(**kwargs)
    init_weights(model, entry.default_init if init is None else init)
    return model


def classifier_names(name: str, args: dict[str, Any]) -> set[str]:
    """The state-dict entries of model `name` whose shape depends on its number of classes:
    its classifier's. Found by building it for two class counts on the meta device."""
    entry = get_entry(name)
    with torch.device("meta"):
        two = entry.builder(**{**args, "classes": 2}).state_dict()
        three = entry.builder(**{**args, "classes": 3}).state_dict()
    return {key for key in two if two[key].shape != three[key].shape}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""The models layer: architectures against the seeds' arithmetic, init schemes, registry, summary."""

import json
import math
import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.models import (
    INIT_SCHEMES,
    MODELS,
    build_model,
    check_model_args,
    classifier_names,
    count_parameters,
    format_summary,
    init_weights,
    model_names,
    summarize,
)
from mnistlab.models.init import glorot_bound
from mnistlab.models.layers import (
    Conv2dTFSame,
    Dropout,
    Linear,
    PatchConv2d,
    patch_product,
    stock_pytorch,
    tf_same_padding,
    to_onednn_layout,
    to_plain_layout,
    weights_layout,
)

EXPECTED_PARAMS = {
    "softmax": 784 * 10 + 10,
    "deep-cnn": 832 + 51_264 + 3_212_288 + 10_250,
    "strided-cnn": 800 + 51_200 + 263_168 + 10_250,
    "keras-cnn": 320 + 18_496 + 36_928 + 36_928 + 650,
    "mnistlab-cnn": 288 + 64 + 18_432 + 128 + 73_728 + 256 + 128 * 4 * 4 * 10 + 10,
    # 4x4 stem, BN, 3x3 conv, BN, linear from 4x4x32
    "fast-cnn": 16 * 32 + 64 + 9 * 32 * 32 + 64 + 32 * 4 * 4 * 10 + 10,
    # five 5x5 convs (no bias) with BN, then a linear layer from 8x8x160 (no bias) and BN
    "valid-cnn": 25 * (32 + 32 * 64 + 64 * 96 + 96 * 128 + 128 * 160) + 2 * (32 + 64 + 96 + 128 + 160)
    + 160 * 8 * 8 * 10 + 2 * 10,
}


def shapes(name: str, **kwargs) -> dict[str, tuple]:
    return {r.name: r.output_shape for r in summarize(build_model(name, **kwargs))}


# -- architectures ---------------------------------------------------------------------------


def test_registry_lists_every_model():
    assert model_names() == list(EXPECTED_PARAMS)
    for entry in MODELS.values():
        assert entry.default_init in INIT_SCHEMES
        json.dumps(entry.arguments())  # checkpoints record them


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_counts(name):
    assert count_parameters(build_model(name)) == EXPECTED_PARAMS[name]


def test_parameter_count_literals():
    assert EXPECTED_PARAMS["softmax"] == 7_850
    assert EXPECTED_PARAMS["deep-cnn"] == 3_274_634
    assert EXPECTED_PARAMS["strided-cnn"] == 325_418
    assert EXPECTED_PARAMS["keras-cnn"] == 93_322


def test_keras_cnn_matches_keras_summary():
    rows = summarize(build_model("keras-cnn"))
    with_params = [(r.name, r.params) for r in rows if r.params]
    assert with_params == [
        ("conv1", 320),
        ("conv2", 18_496),
        ("conv3", 36_928),
        ("fc1", 36_928),
        ("fc2", 650),
    ]
    assert sum(r.params for r in rows) == 93_322
    assert shapes("keras-cnn") == {
        "conv1": (None, 32, 26, 26),
        "pool1": (None, 32, 13, 13),
        "conv2": (None, 64, 11, 11),
        "pool2": (None, 64, 5, 5),
        "conv3": (None, 64, 3, 3),
        "flatten": (None, 576),
        "fc1": (None, 64),
        "fc2": (None, 10),
    }


def test_strided_cnn_shapes_follow_tf_same():
    assert shapes("strided-cnn") == {
        "conv1": (None, 32, 14, 14),
        "pool1": (None, 32, 7, 7),
        "conv2": (None, 64, 4, 4),
        "pool2": (None, 64, 2, 2),
        "flatten": (None, 256),
        "fc1": (None, 1024),
        "dropout": (None, 1024),
        "fc2": (None, 10),
    }
    model = build_model("strided-cnn")
    assert model.conv1.bias is None and model.conv2.bias is None


def test_deep_cnn_shapes():
    assert shapes("deep-cnn") == {
        "conv1": (None, 32, 28, 28),
        "pool1": (None, 32, 14, 14),
        "conv2": (None, 64, 14, 14),
        "pool2": (None, 64, 7, 7),
        "flatten": (None, 3136),
        "fc1": (None, 1024),
        "dropout": (None, 1024),
        "fc2": (None, 10),
    }


def test_deep_cnn_as_seed_000():
    model = build_model("deep-cnn", init="normal", dropout=0.2)
    assert model.dropout.p == 0.2
    assert build_model("deep-cnn").dropout.p == 0.5


def test_mnistlab_cnn_is_parametric():
    model = build_model("mnistlab-cnn", widths=[8, 16, 24], dropout=0.0)
    assert model.fc.in_features == 24 * 4 * 4
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    rows = shapes("mnistlab-cnn")
    assert rows["block3.conv"] == (None, 128, 7, 7) and rows["block3.pool"] == (None, 128, 4, 4)


def test_valid_cnn_follows_an_et_al():
    # M3, M5 and M7 of An et al. (2020): no padding, no pooling, down to 8x8 (4x4 for M7)
    for kernel, layers, last in [(3, 10, (None, 176, 8, 8)), (5, 5, (None, 160, 8, 8)),
                                 (7, 4, (None, 192, 4, 4))]:
        rows = shapes("valid-cnn", kernel=kernel)
        assert [name for name in rows if ".conv" in name] == [f"convs.conv{i}" for i in range(1, layers + 1)]
        assert rows[f"convs.conv{layers}"] == last and rows["bn"] == (None, 10)
    for kernel in (4, "5", True):
        with pytest.raises(MnistlabError, match="kernel must be 3, 5 or 7"):
            check_model_args("valid-cnn", {"kernel": kernel})


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_logits_shape_and_channels_last(name):
    torch.manual_seed(0)
    model = build_model(name, init="pytorch").eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (5, 10) and y.dtype == torch.float32
        model_cl = model.to(memory_format=torch.channels_last)
        y_cl = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_compiles_without_graph_breaks(name):
    torch._dynamo.reset()
    model = build_model(name, init="pytorch").eval()
    x = torch.rand(3, 1, 28, 28)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


# -- TensorFlow SAME padding -----------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, pads",
    [
        (28, 5, 2, 1, (1, 2)),  # out 14: (14-1)*2+5-28 = 3, the extra one after
        (7, 5, 2, 1, (2, 2)),  # out 4: (4-1)*2+5-7 = 4
        (28, 5, 1, 1, (2, 2)),  # stride 1, odd kernel: symmetric
        (28, 3, 1, 1, (1, 1)),
        (5, 2, 2, 1, (0, 1)),  # out 3: (3-1)*2+2-5 = 1
        (28, 2, 2, 1, (0, 0)),  # 2x2 pool on an even size pads nothing
        (4, 1, 2, 1, (0, 0)),  # negative total is clamped to 0
        (10, 3, 1, 2, (2, 2)),  # dilation 2: effective kernel 5
        (14, 4, 3, 1, (1, 1)),  # out 5: (5-1)*3+4-14 = 2
        (16, 4, 3, 1, (1, 2)),  # out 6: (6-1)*3+4-16 = 3, the extra one after
    ],
)
def test_tf_same_padding(size, kernel, stride, dilation, pads):
    assert tf_same_padding(size, kernel, stride, dilation) == pads


def test_conv2d_tf_same_pads_bottom_right():
    torch.manual_seed(0)
    conv = Conv2dTFSame(1, 4, 5, stride=2, bias=False)
    x = torch.rand(2, 1, 28, 28)
    expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (2, 4, 14, 14)
    with pytest.raises(ValueError):
        Conv2dTFSame(1, 4, 5, padding=2)


def test_conv2d_tf_same_with_even_padding_lets_the_convolution_pad():
    torch.manual_seed(0)
    conv = Conv2dTFSame(3, 4, 5, stride=2)  # 7 -> 4 pads 2 on every side: no copy needed
    x = torch.rand(2, 3, 7, 7).requires_grad_()
    y = conv(x)
    torch.testing.assert_close(y, F.conv2d(F.pad(x, (2, 2, 2, 2)), conv.weight, conv.bias, stride=2))
    assert y.shape == (2, 4, 4, 4) and "ConstantPad" not in str(y.grad_fn.next_functions)


X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gives_nn_linears_values_and_gradients(bias):
    torch.manual_seed(0)
    layer = Linear(3136, 1024, bias=bias)
    x = torch.randn(50, 3136, requires_grad=True)
    grad = torch.randn(50, 1024)
    y = layer(x)
    # on x86 the products are oneDNN's (the reason for the layer), elsewhere PyTorch's own
    assert ("OneDnnLinear" in type(y.grad_fn).__name__) == X86
    y.backward(grad)
    ours = [x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    x_ref = x.detach().clone().requires_grad_()
    reference = nn.Linear(3136, 1024, bias=bias)
    reference.load_state_dict(layer.state_dict())
    y_ref = reference(x_ref)
    y_ref.backward(grad)
    theirs = [x_ref.grad, reference.weight.grad] + ([reference.bias.grad] if bias else [])
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_linear_leaves_bf16_autocast_small_products_and_other_shapes_to_nn_linear():
    layer = Linear(3136, 1024)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(50, 3136))
    assert y.dtype == torch.bfloat16 and "OneDnn" not in type(y.grad_fn).__name__
    y = layer(torch.randn(2, 3, 3136))  # not a batch of vectors
    assert y.shape == (2, 3, 1024) and "OneDnn" not in type(y.grad_fn).__name__
    y = Linear(784, 10)(torch.randn(50, 784))  # too small to gain: oneDNN's overhead would cost
    assert "OneDnn" not in type(y.grad_fn).__name__
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]


def test_dropout_keeps_each_unit_with_probability_one_minus_p_and_scales_it():
    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.ones(400, 1000, requires_grad=True)
    y = layer(x)
    kept_units = y.detach()[y != 0]
    torch.testing.assert_close(kept_units, torch.full_like(kept_units, 1 / 0.7))
    kept = len(kept_units) / y.numel()
    assert abs(kept - 0.7) < 0.005  # 400,000 draws: 5 standard deviations is 0.0036
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # the gradient passes where the unit was kept
    torch.manual_seed(0)
    torch.testing.assert_close(layer(x), y)  # the seed fixes the mask
    layer.eval()
    assert torch.equal(layer(x), x)
    assert isinstance(layer, nn.Dropout)
    # the mask is drawn to 16 bits: a p too small for them keeps every unit
    assert torch.equal(Dropout(1e-6)(x), x * (1 / (1 - 1e-6)))
    assert (Dropout(0.999)(x) != 0).float().mean() < 0.002


@pytest.mark.parametrize("name", ["deep-cnn", "keras-cnn"])
def test_training_in_onednn_layout_gives_the_plain_layouts_values_and_gradients(name, monkeypatch):
    torch.manual_seed(0)
    model = build_model(name, **({"dropout": 0.0} if name == "deep-cnn" else {}))
    model = model.to(memory_format=torch.channels_last).train()
    for layer in model.modules():  # no bias of 0: an output of exactly 0 would make ReLU's
        if isinstance(layer, nn.Conv2d):  # gradient hang on the last bit of a sum
            nn.init.uniform_(layer.bias, 0.1, 0.2)
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (16,))
    assert to_onednn_layout(x, training=True).is_mkldnn == X86  # the layout these models use

    def logits_and_gradients():
        model.zero_grad(set_to_none=True)
        logits = model(x)
        F.cross_entropy(logits, labels).backward()
        return [logits] + [p.grad for p in model.parameters()]

    ours = logits_and_gradients()
    monkeypatch.setattr("mnistlab.models.layers._onednn_layout_works", lambda: False)
    assert not to_onednn_layout(x, training=True).is_mkldnn
    for a, b in zip(ours, logits_and_gradients()):
        assert not a.is_mkldnn
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
@pytest.mark.parametrize("name", ["deep-cnn", "keras-cnn", "strided-cnn", "mnistlab-cnn"])
def test_a_training_step_leaves_each_weight_gradient_in_its_weights_layout(name, bf16):
    """Weights are laid out as their convolutions give their gradients: contiguous where the
    model trains on oneDNN's tensors (float32), channels-last elsewhere (bfloat16 autocast
    keeps PyTorch's tensors); autograd then copies none."""
    model = build_model(name).train()
    model = model.to(memory_format=weights_layout(model, torch.device("cpu"), bf16=bf16))
    onednn = X86 and getattr(model, "trains_on_onednn_layout", False) and not bf16
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    given = []  # the gradients as the convolutions give them, before autograd stores them
    for weight in weights:
        weight.register_hook(lambda grad: given.append(grad.stride()))
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    F.cross_entropy(logits.float(), torch.randint(0, 10, (8,))).backward()
    assert weights and len(given) == len(weights)
    for weight in weights:
        assert weight.is_contiguous(memory_format=torch.contiguous_format if onednn
                                    else torch.channels_last)
    assert sorted(given) == sorted(weight.stride() for weight in weights)
    assert weights_layout(model, torch.device("meta")) == torch.channels_last  # not the CPU


def test_onednn_layout_only_for_float32_training_batches_on_the_cpu():
    x = torch.randn(4, 1, 28, 28)
    assert not to_onednn_layout(x, training=False).is_mkldnn  # evaluation, prediction
    assert not to_onednn_layout(x.double(), training=True).is_mkldnn
    assert not to_onednn_layout(x.flatten(1), training=True).is_mkldnn
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not to_onednn_layout(x, training=True).is_mkldnn
    assert to_plain_layout(x) is x
    batch = to_onednn_layout(x, training=True)
    torch.testing.assert_close(to_plain_layout(batch), x)
    model = build_model("deep-cnn").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (4, 10)


def test_stock_pytorch_computes_as_pytorchs_own_modules():
    """bench's baseline (PyTorch's example) runs mnistlab's models on PyTorch's own kernels."""
    x, batch = torch.randn(4, 1, 28, 28), torch.randn(64, 3136)
    linear, dropout = Linear(3136, 1024), Dropout(0.5)
    with stock_pytorch():
        assert not to_onednn_layout(x, training=True).is_mkldnn
        y = linear(batch.requires_grad_())
        assert "OneDnn" not in type(y.grad_fn).__name__
        torch.testing.assert_close(y, F.linear(batch, linear.weight, linear.bias), rtol=0, atol=0)
        torch.manual_seed(0)
        ours = dropout(batch)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, F.dropout(batch, 0.5), rtol=0, atol=0)  # bernoulli's mask
    # outside the block, mnistlab's kernels again (where this machine has them)
    assert to_onednn_layout(x, training=True).is_mkldnn == X86
    assert ("OneDnn" in type(linear(batch).grad_fn).__name__) == X86


# -- init schemes ----------------------------------------------------------------------------


def weights_and_biases(model):
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers, [m.weight for m in layers], [m.bias for m in layers if m.bias is not None]


def test_zeros():
    model = build_model("softmax")
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    assert torch.equal(model(torch.rand(3, 1, 28, 28)), torch.zeros(3, 10))


def test_truncated_normal():
    torch.manual_seed(0)
    model = build_model("deep-cnn")
    _, weights, biases = weights_and_biases(model)
    for w in weights:
        assert w.abs().max() <= 0.2
    # Normal std 0.1 truncated at 2 sigma has std 0.1 * 0.8796.
    assert model.fc1.weight.std().item() == pytest.approx(0.08796, abs=0.001)
    for b in biases:
        assert torch.all(b == 0.1)


def test_normal():
    torch.manual_seed(0)
    model = build_model("deep-cnn", init="normal")
    assert model.fc1.weight.std().item() == pytest.approx(1.0, abs=0.01)
    assert model.fc1.weight.mean().item() == pytest.approx(0.0, abs=0.01)
    assert model.fc1.bias.std().item() == pytest.approx(1.0, abs=0.1)
    assert model.conv1.bias.abs().max() > 0


def test_glorot_uniform():
    torch.manual_seed(0)
    model = build_model("keras-cnn")
    layers, _, biases = weights_and_biases(model)
    assert len(layers) == 5
    for layer in layers:
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert glorot_bound(layer.weight) == pytest.approx(bound)
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound  # uniform fills its range
    assert model.conv2.weight.abs().max() <= math.sqrt(6 / (9 * 32 + 9 * 64))
    for b in biases:
        assert torch.count_nonzero(b) == 0


def test_seed_002():
    torch.manual_seed(0)
    model = build_model("strided-cnn")
    for conv in (model.conv1, model.conv2):
        assert conv.weight.abs().max() <= 0.2
    assert model.conv2.weight.std().item() == pytest.approx(0.08796, abs=0.003)
    for fc in (model.fc1, model.fc2):
        assert fc.weight.abs().max() <= glorot_bound(fc.weight)
        assert torch.count_nonzero(fc.bias) == 0


def test_pytorch_scheme_leaves_defaults():
    torch.manual_seed(1)
    a = build_model("keras-cnn", init="pytorch")
    torch.manual_seed(1)
    b = type(a)()  # PyTorch's own init, untouched
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_batchnorm_keeps_identity_start():
    model = build_model("mnistlab-cnn", init="normal")
    assert torch.all(model.block1.bn.weight == 1) and torch.all(model.block1.bn.bias == 0)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_same_seed_same_weights(name):
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, init="normal" if name == "softmax" else None).state_dict()

    a, b, c = weights(7), weights(7), weights(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_init_weights_in_place():
    torch.manual_seed(0)
    model = build_model("keras-cnn")
    init_weights(model, "zeros")
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())


# -- errors ----------------------------------------------------------------------------------


def test_unknown_model():
    with pytest.raises(MnistlabError, match="unknown model 'resnet'; known models: softmax"):
        build_model("resnet")


def test_unknown_argument():
    with pytest.raises(MnistlabError) as err:
        check_model_args("deep-cnn", {"widht": 3})
    assert str(err.value) == "model 'deep-cnn' takes no argument 'widht'; it takes: dropout, classes"
    with pytest.raises(MnistlabError, match="'keras-cnn' takes no argument 'dropout'; it takes: classes$"):
        check_model_args("keras-cnn", {"dropout": 0.5})
    with pytest.raises(MnistlabError, match=r"'hiden' \(did you mean 'hidden'\?\); it takes: widths, "):
        check_model_args("fast-cnn", {"hiden": 128})
    with pytest.raises(MnistlabError, match="unknown model 'resnet'"):
        check_model_args("resnet", {})


def test_invalid_arguments():
    with pytest.raises(MnistlabError, match=r"dropout must be a drop probability in \[0, 1\), got 1.5"):
        check_model_args("deep-cnn", {"dropout": 1.5})
    with pytest.raises(MnistlabError, match="dropout must be"):
        check_model_args("strided-cnn", {"dropout": "0.5"})
    with pytest.raises(MnistlabError, match="dropout must be"):
        check_model_args("strided-cnn", {"dropout": math.nan})
    with pytest.raises(MnistlabError, match=r"widths must be a list of 3 integers from 1 to 1024 \(channels\)"):
        check_model_args("mnistlab-cnn", {"widths": [32, 64]})
    with pytest.raises(MnistlabError, match="widths"):
        check_model_args("mnistlab-cnn", {"widths": [32, 64, 0]})
    with pytest.raises(MnistlabError, match="convs must be an integer from 1 to 4, got 5"):
        check_model_args("mnistlab-cnn", {"convs": 5})


def test_sizes_are_bounded():
    # sizes far beyond any MNIST model are refused before anything is built or allocated
    with pytest.raises(MnistlabError, match=r"widths must be a list of 2 to 4 integers from 1 to 1024 "
                                            r"\(channels\), got \[100000, 64\]"):
        check_model_args("fast-cnn", {"widths": [100_000, 64]})
    with pytest.raises(MnistlabError, match="widths"):
        check_model_args("mnistlab-cnn", {"widths": [2**40] * 3})
    with pytest.raises(MnistlabError, match=r"got \[1, 2, 3, .*\.\.\.\]$"):  # a long value is cut short
        check_model_args("fast-cnn", {"widths": list(range(1, 1000))})
    assert check_model_args("fast-cnn", {"widths": [1024] * 4, "hidden": 4096}) == {
        "widths": [1024] * 4, "hidden": 4096}


def test_arguments_named_like_build_models_keywords_are_refused():
    for key in ("init", "name"):
        with pytest.raises(MnistlabError) as err:
            check_model_args("fast-cnn", {key: "zeros"})
        assert str(err.value).startswith(f"model 'fast-cnn' takes no argument '{key}': the model's {key} "
                                         "is given beside its arguments")


def test_every_model_declares_each_argument():
    # the declarations (what an argument may be) and the builder's signature (its default) agree
    for name, entry in MODELS.items():
        assert list(entry.args) == list(entry.arguments()), name
        assert check_model_args(name, entry.arguments()) == entry.arguments(), name
        assert not {"name", "init"} & set(entry.args), name  # build_model's own keywords


def test_checked_arguments_are_as_the_models_take_them():
    assert check_model_args("deep-cnn", {"dropout": 0}) == {"dropout": 0.0}
    assert type(check_model_args("deep-cnn", {"dropout": 0})["dropout"]) is float
    assert check_model_args("mnistlab-cnn", {"widths": (8, 16, 24)}) == {"widths": [8, 16, 24]}
    assert check_model_args("fast-cnn", {}) == {}


def test_every_declared_shape_builds_and_runs():
    # what the declarations let through, the constructors build: every depth, crop and padding
    for convs in range(1, 5):
        model = build_model("mnistlab-cnn", **check_model_args("mnistlab-cnn", {"widths": [1] * 3,
                                                                                "convs": convs}))
        assert model.eval()(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    for crop in range(5):
        for stem_padding in (0, 1):
            for depth in (2, 3, 4):
                args = check_model_args("fast-cnn", {"widths": [1] * depth, "crop": crop,
                                                     "stem_padding": stem_padding, "hidden": 1})
                model = build_model("fast-cnn", **args).eval()
                with torch.no_grad():
                    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10), args


def test_unknown_init():
    with pytest.raises(MnistlabError, match="unknown init scheme 'he'; known schemes: zeros, "):
        build_model("softmax", init="he")
    with pytest.raises(MnistlabError, match="glorot-uniform"):
        init_weights(build_model("softmax"), "xavier")


def test_errors_are_one_line():
    for call in (
        lambda: build_model("nope"),
        lambda: check_model_args("deep-cnn", {"widht": 1}),
        lambda: check_model_args("fast-cnn", {"widths": [[1] * 100, 1]}),
        lambda: build_model("softmax", init="he"),
    ):
        with pytest.raises(MnistlabError) as err:
            call()
        assert "\n" not in str(err.value)


# -- summary ---------------------------------------------------------------------------------


def test_format_summary_keras_cnn():
    text = format_summary(build_model("keras-cnn"), "keras-cnn")
    assert 'Model: "keras-cnn"' in text
    for expected in (
        "Layer (type)",
        "Output Shape",
        "Param #",
        "Total params: 93,322",
        "Trainable params: 93,322",
        "Non-trainable params: 0",
        "channels",
    ):
        assert expected in text
    conv1 = next(line for line in text.splitlines() if "conv1" in line)
    assert conv1.split() == ["conv1", "(Conv2d)", "(None,", "32,", "26,", "26)", "320"]


def test_summary_counts_frozen_params_and_not_buffers():
    model = build_model("mnistlab-cnn")
    model.fc.weight.requires_grad_(False)
    text = format_summary(model)
    assert "Total params: 113,386" in text  # BatchNorm running stats are buffers, not counted
    assert "Trainable params: 92,906" in text
    assert "Non-trainable params: 20,480" in text


def test_summarize_restores_training_mode():
    model = build_model("mnistlab-cnn").train()
    model.block1.bn.eval()
    summarize(model)
    assert model.training and model.dropout.training and not model.block1.bn.training
    assert model.block2.bn.num_batches_tracked == 0  # ran in eval mode: no stats updated
    model.eval()
    summarize(model)
    assert not model.training and not model.dropout.training


@pytest.mark.parametrize(
    "widths, crop, side",
    [([32, 32], 0, 4), ([32, 64, 64], 0, 2), ([32, 32, 32, 32], 0, 1), ([32, 32], 2, 3), ([32, 32], 3, 3),
     ([32, 64], 4, 3)],
)
def test_fast_cnn_shrinks_to_the_linear_layer(widths, crop, side):
    model = build_model("fast-cnn", widths=widths, crop=crop)
    assert model.fc.in_features == widths[-1] * side * side
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_fast_cnn_hidden_layer_sits_before_the_classifier():
    model = build_model("fast-cnn", widths=[32, 64], crop=4, hidden=128)  # blocks at 5x5, 3x3
    assert (model.hidden.in_features, model.hidden.out_features) == (64 * 3 * 3, 128)
    assert model.fc.in_features == 128
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert build_model("fast-cnn").hidden is None


def test_fast_cnn_crop_ignores_the_border():
    # a cropped network must not see the pixels it drops, and must see the ones it keeps
    torch.manual_seed(0)
    model = build_model("fast-cnn", widths=[32, 64, 64], crop=2).eval()
    x = torch.rand(3, 1, 28, 28)
    border = x.clone()
    border[:, :, :2] = border[:, :, -2:] = border[:, :, :, :2] = border[:, :, :, -2:] = 0
    inside = x.clone()
    inside[:, :, 2:-2, 2:-2] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(border), model(x))
        assert not torch.allclose(model(inside), model(x))


def test_fast_cnn_without_stem_padding_sees_the_middle_22_pixels():
    torch.manual_seed(0)
    model = build_model("fast-cnn", widths=[32, 64], crop=3, stem_padding=0, hidden=128).eval()
    assert model.hidden.in_features == 64 * 3 * 3  # blocks at 5x5, then 3x3
    x = torch.rand(3, 1, 28, 28)
    outside, edge = x.clone(), x.clone()
    outside[:, :, :3] = outside[:, :, -3:] = outside[:, :, :, :3] = outside[:, :, :, -3:] = 0
    edge[:, :, 3] = 0  # the first row it keeps
    with torch.no_grad():
        torch.testing.assert_close(model(outside), model(x))
        assert not torch.allclose(model(edge), model(x))


@pytest.mark.parametrize("argument, values", [("crop", [-1, 5, 1.5, True, "2"]),
                                              ("stem_padding", [2, -1, True, 0.5]),
                                              ("hidden", [-1, 5000, 1.5, True, "128"])])
def test_fast_cnn_refuses_bad_arguments(argument, values):
    for value in values:
        with pytest.raises(MnistlabError, match=argument):
            check_model_args("fast-cnn", {argument: value})


def test_fast_cnn_gives_the_same_logits_in_either_memory_format():
    # its flatten is a view in channels-last; the ordinary layout must reach the same features
    torch.manual_seed(0)
    model = build_model("fast-cnn").eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(plain, fast)


@pytest.mark.parametrize("widths", [[32], [32, 32, 32, 32, 32], [32, 0], "32", [32, 2.5]])
def test_fast_cnn_refuses_bad_widths(widths):
    with pytest.raises(MnistlabError, match="widths"):
        check_model_args("fast-cnn", {"widths": widths})


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_takes_its_number_of_classes(name):
    """A folder of one's own images sets the outputs: 2 to 1,000 classes, the classifier alone
    changing shape (what fine-tuning replaces)."""
    model = build_model(name, init="pytorch", classes=3)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    names = classifier_names(name, {})
    assert names and all(n in model.state_dict() for n in names)
    ten = build_model(name, init="pytorch").state_dict()
    assert {k for k, v in model.state_dict().items() if v.shape != ten[k].shape} == names
    with pytest.raises(MnistlabError, match="classes must be an integer from 2 to 1000"):
        check_model_args(name, {"classes": 1})


def test_patch_product_is_the_convolution_it_replaces_on_a_gpu():
    """PatchConv2d's product (fast-cnn's stem on a GPU): the output, its channels-last layout
    and the weight gradient of F.conv2d, on a cropped view such as the network passes it."""
    torch.manual_seed(0)
    weight = torch.randn(32, 1, 4, 4, requires_grad=True)
    x = torch.rand(8, 1, 28, 28)[:, :, 3:-3, 3:-3]
    ours = patch_product(x, weight, None, (2, 2))
    theirs = F.conv2d(x, weight, stride=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(theirs)
    (ours_grad,) = torch.autograd.grad(ours, weight, grad)
    (theirs_grad,) = torch.autograd.grad(theirs, weight, grad)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-4, atol=1e-4)
    bias = torch.randn(32)
    torch.testing.assert_close(patch_product(x, weight, bias, (2, 2)),
                               F.conv2d(x, weight, bias, stride=2), rtol=1e-5, atol=1e-5)
    # on the CPU the module is nn.Conv2d
    conv = PatchConv2d(1, 32, 4, stride=2, bias=False)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, stride=2))

"""ONNX export: every model, a free batch size, the same probabilities as PyTorch."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mnistlab.checkpoint import load_model, save_model
from mnistlab.data.registry import load_arrays
from mnistlab.errors import MnistlabError
from mnistlab.inference import Predictor
from mnistlab.inference.export import export_onnx, format_report
from mnistlab.models import MODELS, build_model


@pytest.fixture(scope="module")
def images():
    return load_arrays("mnist").test_images[:7]


def untrained_checkpoint(folder, name):
    torch.manual_seed(0)
    model = build_model(name, init="pytorch")
    save_model(folder, model, {"model": {"name": name, "args": {}}})
    return folder


def test_default_model_exports_and_matches(tmp_path):
    out = tmp_path / "sub" / "digits.onnx"
    report = export_onnx("default", out, verify_images=500)
    assert report.path == out and out.stat().st_size == report.size_bytes
    assert report.images == 500 and report.model == load_model("default")[1]["model"]["name"]
    assert report.max_abs_diff < 1e-4 and report.agreement == 1.0
    assert report.onnx_accuracy >= 0.98
    text = format_report(report)
    assert str(out) in text and "labels agree on 100.00%" in text
    # the file alone says what it is
    info = Predictor.load(str(out), backend="onnx").info
    torch_info = Predictor.load("default").info
    for key in ("model", "args", "parameters", "test_accuracy", "class_names"):
        assert info[key] == torch_info[key]
    assert info["backend"] == "onnx" and info["checkpoint"] == str(out)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_exports_with_a_free_batch(tmp_path, images, name):
    run = untrained_checkpoint(tmp_path / "run", name)
    out = tmp_path / f"{name}.onnx"
    report = export_onnx(run, out, verify_images=20)
    assert report.max_abs_diff < 1e-4 and report.agreement == 1.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    torch_side = Predictor.load(str(run))
    for n in (1, 7):
        x = images[:n]
        got = session.run(None, {"image": x[:, None].astype(np.float32) / 255})[0]
        assert got.shape == (n, 10)
        assert np.abs(got - torch_side.probabilities(x)).max() < 1e-4


def test_onnx_backend_exports_a_checkpoint_in_memory(images):
    onnx_side = Predictor.load("default", backend="onnx")
    torch_side = Predictor.load("default")
    assert onnx_side.info["backend"] == "onnx"
    assert np.abs(onnx_side.probabilities(images) - torch_side.probabilities(images)).max() < 1e-4


def test_onnx_backend_with_the_threads_of_a_server(images, tmp_path):
    # what `mnistlab serve --backend onnx --threads N` loads: N intra-op threads, no spinning
    torch_side = Predictor.load("default").probabilities(images)
    for threads in (1, 2):
        onnx_side = Predictor.load("default", backend="onnx", threads=threads)
        assert np.abs(onnx_side.probabilities(images) - torch_side).max() < 1e-4
    out = tmp_path / "model.onnx"
    export_onnx("default", out)
    from_file = Predictor.load(str(out), backend="onnx", threads=1)
    assert np.abs(from_file.probabilities(images) - torch_side).max() < 1e-4
    with pytest.raises(MnistlabError, match="threads: expected a whole number from 1 to 1,024, got 0"):
        Predictor.load(str(out), backend="onnx", threads=0)


def test_export_errors(tmp_path):
    with pytest.raises(MnistlabError, match="must end in .onnx"):
        export_onnx("default", tmp_path / "model.bin")
    with pytest.raises(MnistlabError, match="no such checkpoint"):
        export_onnx(tmp_path / "missing", tmp_path / "x.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(MnistlabError, match="is a folder"):
        export_onnx("default", tmp_path / "dir.onnx")


def test_export_command(tmp_path, capsys):
    from mnistlab.cli import main

    out = tmp_path / "digits.onnx"
    assert main(["export", "default", "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"written: {out}" in text and "verified on 1,000 MNIST test images" in text
    assert "labels agree on 100.00%" in text and out.is_file()
    assert main(["export", str(tmp_path / "missing")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err

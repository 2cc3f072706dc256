"""The shipped models: `default` and the tutorials' models small enough to ship, by name
everywhere a model is taken."""

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mnistlab
from mnistlab.checkpoint import (
    MODEL_FILE,
    PRETRAINED_DIR,
    SHIPPED_MODELS,
    load_model,
    resolve_checkpoint,
)
from mnistlab.data.registry import load_arrays
from mnistlab.inference.predictor import Predictor
from mnistlab.recipebook import load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parent.parent
# each tutorial model: its architecture, and the test accuracy its faithful recipe reached
# (seed 0, CPU), measured by `mnistlab evaluate NAME` (README.md, docs/SERVING.md)
TUTORIALS = {"softmax-regression": ("softmax", 0.90), "keras-cnn": ("keras-cnn", 0.985)}


def test_every_shipped_model_is_in_the_package_data():
    assert set(TUTORIALS) < set(SHIPPED_MODELS)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pretrained/*/*" in pyproject["tool"]["setuptools"]["package-data"]["mnistlab"]
    for name in SHIPPED_MODELS:
        assert (PRETRAINED_DIR / name / MODEL_FILE).is_file()
        assert (PRETRAINED_DIR / name / "model.json").is_file()


@pytest.mark.parametrize("name", list(TUTORIALS))
def test_a_tutorial_model_by_name_is_its_recipe_s_model(name):
    architecture, at_least = TUTORIALS[name]
    assert resolve_checkpoint(name) == PRETRAINED_DIR / name / MODEL_FILE
    _, meta = load_model(name)
    assert meta["model"]["name"] == architecture and meta["recipe"]["name"] == name
    assert meta["seed"] == 0 and meta["complete"]
    assert meta["metrics"]["test"]["accuracy"] >= at_least
    model = mnistlab.load(name, device="cpu")
    test = load_arrays("mnist")
    predicted = model.predict_proba(test.test_images[:500]).argmax(axis=1)
    assert np.mean(predicted == test.test_labels[:500]) >= at_least - 0.03
    onnx = Predictor.load(name, backend="onnx")  # exported in memory, as serve does
    assert onnx.info["model"] == architecture


@pytest.mark.parametrize("name, recipe", [("default", "compact"), *((t, t) for t in TUTORIALS)])
def test_each_shipped_model_records_the_recipe_that_ships_under_its_name(name, recipe):
    """`default` recorded the recipe `best`, the name compact's settings had when it was
    trained; report and compare said so, though `best` has since grown wider and longer."""
    _, meta = load_model(name)
    recorded = recipe_from_dict(meta["recipe"], name)
    assert recorded == load_recipe(recipe) and meta["seed"] == 0


def test_a_folder_of_a_shipped_model_s_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keras-cnn").mkdir()
    with pytest.raises(mnistlab.MnistlabError, match="no model.safetensors in this folder"):
        resolve_checkpoint("keras-cnn")


def mnistlab_command(*args):
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True,
                          text=True, timeout=300)


def test_predict_and_summary_by_name(tmp_path):
    seven = tmp_path / "seven.png"
    Image.fromarray(load_arrays("mnist").test_images[0]).save(seven)  # MNIST test digit 0, a 7
    for name in TUTORIALS:
        done = mnistlab_command("predict", "--model", name, str(seven))
        assert done.returncode == 0 and ": 7 (" in done.stdout, done.stdout + done.stderr
    done = mnistlab_command("summary", "keras-cnn")  # the architecture, not the shipped model
    assert done.returncode == 0 and 'Model: "keras-cnn"' in done.stdout
    done = mnistlab_command("summary", "softmax-regression")  # the recipe's model
    assert done.returncode == 0 and "softmax (recipe softmax-regression)" in done.stdout

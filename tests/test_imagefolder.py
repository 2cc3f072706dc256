"""Folders of one's own images as datasets, any number of classes, and fine-tuning (--init)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import mnistlab
from mnistlab.checkpoint import load_model
from mnistlab.cli import main
from mnistlab.data import imagefolder
from mnistlab.data.imagefolder import load_image_folder
from mnistlab.inference.export import format_report
from mnistlab.inference.images import load_image
from mnistlab.inference.predictor import Predictor
from mnistlab.inference.preprocess import to_mnist
from mnistlab.models import build_model
from mnistlab.report.build import write_report
from mnistlab.serve.server import served_top_k
from mnistlab.training.start import plan_start, start_from

DIGITS, LABELS = mnistlab.datasets.load("mnist", split="train")


def write_folder(root, classes, per_class, split="train", first=0):
    """MNIST training digits as dark-on-white PNGs, 56x56, `per_class` per class: class k is
    digit k, named `classes[k]`."""
    for digit, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        picked = np.flatnonzero(LABELS == digit)[first:first + per_class]
        for i, index in enumerate(picked):
            page = 255 - np.kron(DIGITS[index], np.ones((2, 2), dtype=np.uint8))
            Image.fromarray(page).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    imagefolder._LOADED.clear()


def test_a_folder_is_classes_made_ready_as_predict_makes_them(tmp_path):
    root = write_folder(tmp_path / "d", ["0", "1", "2"], 14)
    write_folder(root, ["0", "1", "2"], 2, split="test", first=100)
    arrays = load_image_folder(root)
    assert arrays.classes == ("0", "1", "2") and arrays.skipped == []
    assert arrays.train_images.shape == (42, 28, 28) and arrays.train_images.dtype == np.uint8
    assert sorted(arrays.train_labels.tolist()) == [0] * 14 + [1] * 14 + [2] * 14
    assert arrays.train_labels[:12].tolist() != sorted(arrays.train_labels[:12].tolist())  # shuffled
    first = to_mnist(load_image(root / "test" / "0" / "0000.png"))
    assert np.array_equal(arrays.test_images[0], first) and arrays.test_labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_classes_are_the_folder_names_in_a_natural_order(tmp_path):
    root = write_folder(tmp_path / "n", ["2", "10", "1"], 7)
    assert load_image_folder(root).classes == ("1", "2", "10")
    root = write_folder(tmp_path / "w", ["beta", "alpha", "Gamma"], 7)
    assert load_image_folder(root).classes == ("Gamma", "alpha", "beta")


def test_without_a_test_folder_one_in_seven_is_held_out_the_same_way_each_time(tmp_path):
    root = write_folder(tmp_path / "d", ["a", "b"], 21)
    arrays = load_image_folder(root)
    assert sorted(arrays.test_labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert len(arrays.train_labels) == 36
    imagefolder._LOADED.clear()
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # made again, not read back
    again = load_image_folder(root)
    assert np.array_equal(again.test_images, arrays.test_images)
    assert np.array_equal(again.train_labels, arrays.train_labels)


def test_bad_images_are_left_out_and_named_in_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "d", ["a", "b"], 7)
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("L", (30, 30), 255).save(root / "train" / "b" / "blank.png")
    (root / "train" / "b" / "notes.txt").write_text("not an image: ignored, not an error")
    arrays = load_image_folder(root)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "left out 2 of 16 images" in warning[0]
    assert "broken.png" in warning[0] and "blank.png (no digit found (empty image))" in warning[0]
    assert len(arrays.train_labels) + len(arrays.test_labels) == 14


@pytest.mark.parametrize("make, words", [
    (lambda r: write_folder(r, ["only"], 7), "1 class folder; a dataset needs at least 2"),
    (lambda r: (write_folder(r, ["a"], 7), (r / "train" / "b").mkdir()), "class 'b' has no images"),
    (lambda r: (write_folder(r, ["a", "b"], 7), write_folder(r, ["c"], 1, split="test")),
     "classes with no folder in"),
    (lambda r: write_folder(r, ["a", "x" * 101], 7), "a class name of 101 characters"),
    (lambda r: write_folder(r, ["a", os.fsdecode(b"b\xff")], 7),  # Latin-1 bytes, say
     "a class folder's name must be UTF-8 text; rename it"),
    (lambda r: (write_folder(r, ["a", "b"], 7),
                [p.write_bytes(b"junk") for p in (r / "train" / "b").iterdir()]),
     "class 'b' has no image that could be read"),
])
def test_a_folder_that_cannot_be_a_dataset_is_one_clear_error(tmp_path, make, words):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(mnistlab.MnistlabError, match=words):
        load_image_folder(root)


def test_the_cache_is_read_back_until_a_file_changes(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", ["a", "b"], 8)
    first = load_image_folder(root)
    assert imagefolder.cache_file(root).is_file()
    imagefolder._LOADED.clear()
    monkeypatch.setattr(imagefolder, "_prepare", lambda folder: pytest.fail("not cached"))
    assert np.array_equal(load_image_folder(root).train_images, first.train_images)
    monkeypatch.undo()
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(root / "train" / "a" / "0000.png")
    (root / "train" / "b" / "0001.png").unlink()
    changed = load_image_folder(root)  # the blank image is left out, the removed one gone
    assert len(changed.train_labels) + len(changed.test_labels) == 14


def test_datasets_verify_checks_an_image_folder(tmp_path):
    root = write_folder(tmp_path / "d", ["a", "b"], 7)
    (root / "train" / "a" / "broken.png").write_bytes(b"junk")
    done = subprocess.run([sys.executable, "-m", "mnistlab", "datasets", "verify", str(root)],
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 1 and lines[0].split() == ["ok", "train/a", "7", "images", "ready,", "1", "left", "out"]
    assert lines[2].startswith("FAIL") and "broken.png" in lines[2]
    (root / "train" / "a" / "broken.png").unlink()
    assert subprocess.run([sys.executable, "-m", "mnistlab", "datasets", "verify", str(root)],
                          capture_output=True, timeout=120).returncode == 0


def test_letters_train_and_their_names_come_out_everywhere(tmp_path):
    root = write_folder(tmp_path / "letters", ["a", "b", "c"], 35)
    recipe = mnistlab.recipe("fast", steps=40, train={"batch_size": 32})
    run = mnistlab.train(recipe, seed=0, device="cpu", out=tmp_path / "run", data_dir=root,
                         quiet=True, report=False)
    model = run.model
    assert model.class_names == ["a", "b", "c"] and run.test_accuracy > 0.6
    assert model.predict_proba(np.zeros((1, 28, 28), np.uint8)).shape == (1, 3)
    [reading] = model.predict(root / "train" / "b" / "0003.png")
    assert reading.text in {"a", "b", "c"} and len(reading.digits[0].top) == 3
    exported = model.export(tmp_path / "letters.onnx")  # verified on its own letters
    assert (exported.dataset, exported.agreement) == ("letters", 1.0)
    assert exported.onnx_accuracy == exported.torch_accuracy == run.test_accuracy
    onnx = mnistlab.load(exported.path)
    assert onnx.class_names == ["a", "b", "c"]
    evaluation = model.evaluate()  # on the folder it was trained on, as recorded
    assert len(evaluation.metrics.confusion) == 3 and evaluation.accuracy == run.test_accuracy
    together = mnistlab.ensemble([run.run_dir], device="cpu")  # so too an ensemble (not MNIST)
    assert (together.dataset, together.data_dir, together.accuracy) == ("letters", str(root),
                                                                       run.test_accuracy)
    assert f"on the images in {root} (the folder this model was trained on)" in str(together)
    report = write_report(run.run_dir, device="cpu")  # its figures name the three classes
    assert len(report.analysis.metrics.confusion) == 3
    # the letters moved away: MNIST's digits still prove ONNX agrees, and give no accuracy
    root.rename(tmp_path / "moved")
    exported = model.export(tmp_path / "again.onnx")
    assert (exported.dataset, exported.agreement, exported.onnx_accuracy) == ("mnist", 1.0, None)
    assert format_report(exported).endswith("labels agree on 100.00% (not the images this model "
                                            "was trained on, which are not at hand: no accuracy)")


def test_a_model_of_two_classes_lists_two_candidates_by_default(tmp_path, capsys):
    """The default of 3 candidates made `predict`, `serve` and Model.predict refuse such a
    model, each image blamed for it."""
    root = write_folder(tmp_path / "two", ["a", "b"], 20)
    recipe = mnistlab.recipe("fast", steps=3, train={"batch_size": 16})
    model = mnistlab.train(recipe, device="cpu", out=tmp_path / "run", data_dir=root,
                           quiet=True, report=False).model
    picture = root / "train" / "b" / "0003.png"
    [reading] = model.predict(picture)
    assert len(reading.digits[0].top) == 2
    assert main(["predict", str(picture), "--model", str(tmp_path / "run"), "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)["images"]
    assert len(answer["top"]) == 2
    assert main(["predict", str(picture), str(picture), "--model", str(tmp_path / "run"),
                 "--top-k", "3"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "mnistlab: error: --top-k must be from 1 to 2, the classes the "
                              "model reads, got 3\n")
    served = {"two": Predictor.load(str(tmp_path / "run"))}  # as `mnistlab serve` loads it
    assert served_top_k(None, served) == 2
    with pytest.raises(mnistlab.MnistlabError, match="top_k must be from 1 to 2"):
        served_top_k(3, served)


def test_a_number_of_word_classes_is_read_word_by_word(tmp_path, capsys):
    """Names longer than a character were joined into one word: "zeroone"."""
    root = write_folder(tmp_path / "words", ["zero", "one"], 20)
    recipe = mnistlab.recipe("fast", steps=3, train={"batch_size": 16})
    model = mnistlab.train(recipe, device="cpu", out=tmp_path / "run", data_dir=root,
                           quiet=True, report=False).model
    pages = [np.asarray(Image.open(root / "train" / name / "0001.png")) for name in ("zero", "one")]
    [reading] = model.predict(np.hstack(pages))
    first, second = (d.digit for d in reading.digits)
    assert reading.is_number and reading.text == f"{first} {second}"
    assert main(["predict", str(root / "train" / "one" / "0002.png"), "--model",
                 str(tmp_path / "run"), "--number", "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)["images"]
    assert answer["number"] == answer["digits"][0]["digit"]  # one name: nothing to join
    letters = write_folder(tmp_path / "letters", ["a", "b"], 20)  # one character each: joined
    model = mnistlab.train(recipe, device="cpu", out=tmp_path / "ab", data_dir=letters,
                           quiet=True, report=False).model
    [reading] = model.predict(np.hstack(pages))
    assert reading.text == "".join(d.digit for d in reading.digits) and len(reading.text) == 2


def test_init_keeps_every_weight_but_a_classifier_for_other_classes(tmp_path):
    recipe = mnistlab.recipe("finetune")
    default, _ = load_model("default")
    letters = write_folder(tmp_path / "letters", ["a", "b", "c"], 7)
    start = plan_start(recipe, str(letters), "default")
    assert start.record["new"] == ["fc.bias", "fc.weight"] and start.recipe.model.args["classes"] == 3
    torch.manual_seed(0)
    model = build_model(start.recipe.model.name, **start.recipe.model.args)
    start_from(model, start)
    theirs = default.state_dict()
    for name, tensor in model.state_dict().items():
        assert (name in start.record["new"]) != torch.equal(tensor, theirs[name]), name
    digits = write_folder(tmp_path / "digits", [str(d) for d in range(10)], 7)
    same = plan_start(recipe, str(digits), "default")
    assert same.record["new"] == [] and "classes" not in same.recipe.model.args


def test_fine_tuning_from_the_command_line(tmp_path):
    root = write_folder(tmp_path / "mine", [str(d) for d in range(10)], 7)
    done = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--recipe", "finetune",
                           "--init", "default", "--data-dir", str(root), "--steps", "3",
                           "--device", "cpu", "--out", str(tmp_path / "run"), "--no-report"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "starting from the weights of" in done.stdout and "new classifier" not in done.stdout
    resumed = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume",
                              str(tmp_path / "run"), "--init", "default"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1 and "--init" in resumed.stderr


def test_fine_tuning_on_some_of_a_models_classes_keeps_them_all(tmp_path):
    """The page's corrections may hold only the digits a person corrected: the fine-tuned
    model still reads all ten, and its labels index them."""
    root = tmp_path / "corrected"
    for digit in (3, 7):
        folder = root / "train" / str(digit)
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(LABELS == digit)[:20]):
            Image.fromarray(255 - DIGITS[index]).save(folder / f"{i}.png")
    recipe = mnistlab.recipe("finetune", steps=4)
    run = mnistlab.train(recipe, init="default", seed=0, device="cpu", out=tmp_path / "run",
                         data_dir=root, quiet=True, report=False)
    model = run.model
    assert model.class_names == [str(d) for d in range(10)]
    evaluation = model.evaluate()
    confusion = np.array(evaluation.metrics.confusion)
    assert confusion.shape == (10, 10) and confusion[[3, 7]].sum() == confusion.sum() == 4
    assert evaluation.accuracy == run.test_accuracy > 0.7

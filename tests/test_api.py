"""mnistlab from Python: the public API, and that the command is built on it."""

import importlib
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mnistlab
from mnistlab.cli import main
from mnistlab.training.engine import Trainer


def test_import_is_cheap_and_every_public_name_resolves():
    code = ("import sys, mnistlab; print('torch' in sys.modules); "
            "print(all(getattr(mnistlab, n) is not None for n in mnistlab.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_the_verbs_stay_callable_whatever_was_imported_first():
    """A submodule imported by name becomes an attribute of its package: no module may be
    named like a verb of the API, or `mnistlab.ensemble` would turn into a module."""
    for name in ("mnistlab.cli", "mnistlab.api", "mnistlab.model", "mnistlab.evaluate",
                 "mnistlab.committee", "mnistlab.reproduction", "mnistlab.recipebook"):
        importlib.import_module(name)
    for verb in ("recipes", "recipe", "train", "resume", "compare", "ensemble", "reproduce",
                 "load"):
        assert callable(getattr(mnistlab, verb)), verb
        assert not isinstance(getattr(mnistlab, verb), type(mnistlab)), verb


def test_recipes_are_keys_equal_ones_alike():
    best, again = mnistlab.recipe("best"), mnistlab.recipe("best")  # lists and dicts inside
    shorter = best.with_length(steps=5)
    assert hash(best) == hash(again) and {best: 1}[again] == 1
    assert len({best, again, shorter}) == 2
    # equal numbers of two types are equal recipes, so they hash alike too
    integral = best.updated(optimizer={"lr": 1}, augment={"translate": 2})
    assert integral == best.updated(optimizer={"lr": 1.0}, augment={"translate": 2.0})
    assert len({integral, best.updated(optimizer={"lr": 1.0}, augment={"translate": 2.0})}) == 1


def test_a_recipe_changed_is_a_new_recipe_checked_like_a_file():
    fast = mnistlab.recipe("fast")
    mine = mnistlab.recipe("fast", epochs=2, optimizer={"lr": 0.01}, name="mine")
    assert (mine.name, mine.train.epochs, mine.train.steps, mine.optimizer.lr) == ("mine", 2, None, 0.01)
    assert (fast.name, fast.train.steps) == ("fast", 237)  # unchanged
    assert mine.updated(train={"steps": 5}).train.epochs is None  # one length replaces the other
    with pytest.raises(mnistlab.RecipeError, match=r"\[train\] batch_size: expected a whole number"):
        fast.updated(train={"batch_size": 0})
    with pytest.raises(mnistlab.MnistlabError, match="unknown recipe section 'trian'"):
        fast.updated(trian={})
    with pytest.raises(mnistlab.MnistlabError, match="epochs: expected a whole number of at least 1"):
        mnistlab.recipe("fast", epochs=0)


def _records(run_dir):
    """metrics.jsonl without what depends on the clock."""
    timed = {"time", "seconds", "train_seconds", "images_per_s", "elapsed", "wall"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timed} for r in records]


def test_a_run_from_python_is_the_run_the_command_makes(tmp_path, small_mnist):
    """Same recipe, seed and data: the same files, weights and log, from either door; and
    `mnistlab.load` reads the folder the command wrote."""
    recipe = mnistlab.recipe("softmax-regression", steps=40)
    run = mnistlab.train(recipe, seed=3, device="cpu", out=tmp_path / "api",
                         data_dir=small_mnist, quiet=True)
    assert main(["train", "--recipe", "softmax-regression", "--steps", "40", "--seed", "3",
                 "--device", "cpu", "--out", str(tmp_path / "cli"), "--data-dir",
                 str(small_mnist), "--quiet"]) == 0
    api_files = sorted(p.relative_to(tmp_path / "api") for p in (tmp_path / "api").rglob("*"))
    cli_files = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*"))
    assert api_files == cli_files and run.report == tmp_path / "api" / "report.html"
    api_weights = load_file(tmp_path / "api" / "model.safetensors")
    cli_weights = load_file(tmp_path / "cli" / "model.safetensors")
    assert all(torch.equal(api_weights[k], cli_weights[k]) for k in api_weights)
    assert _records(tmp_path / "api") == _records(tmp_path / "cli")
    from_cli = mnistlab.load(tmp_path / "cli", device="cpu")
    assert from_cli.evaluate(data_dir=small_mnist).accuracy == run.test_accuracy
    assert repr(run).startswith(f"Run('{tmp_path / 'api'}': softmax-regression, test accuracy ")


def test_resume_from_python_ends_where_an_unbroken_run_ends(tmp_path, small_mnist):
    recipe = mnistlab.recipe("softmax-regression", steps=60)
    whole = mnistlab.train(recipe, seed=1, device="cpu", out=tmp_path / "whole",
                           data_dir=small_mnist, quiet=True, report=False)

    def stop_at_25(trainer, step):
        if step == 25:
            trainer.request_stop()

    stopped = Trainer(recipe, tmp_path / "broken", seed=1, device="cpu",
                      data_dir=str(small_mnist), on_step=stop_at_25).run()
    assert stopped.interrupted
    with pytest.raises(mnistlab.MnistlabError, match="device: expected a name such as 'auto'"):
        mnistlab.resume(tmp_path / "broken", device=None, quiet=True, report=False)
    resumed = mnistlab.resume(tmp_path / "broken", device="cpu", quiet=True, report=False)
    assert not resumed.interrupted and resumed.result.steps_done == 60
    a = load_file(whole.run_dir / "model.safetensors")
    b = load_file(resumed.run_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_arguments_are_checked_with_the_commands_words(tmp_path):
    with pytest.raises(mnistlab.MnistlabError, match="seed: expected a whole number from 0 to"):
        mnistlab.train("fast", seed=-1, out=tmp_path / "x")
    with pytest.raises(mnistlab.MnistlabError, match="--device cuda:abc: a GPU is cuda"):
        mnistlab.train("fast", device="cuda:abc", out=tmp_path / "x")
    with pytest.raises(mnistlab.MnistlabError, match="unknown recipe 'fsat' \\(did you mean 'fast'"):
        mnistlab.train("fsat")
    assert not (tmp_path / "x").exists()
    with pytest.raises(mnistlab.CheckpointError) as missing:
        mnistlab.load(tmp_path / "nothing")
    printed = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=120)
    assert printed.stderr == f"mnistlab: error: {missing.value}\n"


@pytest.fixture(scope="module")
def model():
    return mnistlab.load("default", device="cpu")


def refusal(call, *args, **kwargs) -> str:
    """The one line of the MnistlabError `call(*args, **kwargs)` raises (a TypeError, an
    AttributeError... fails the test)."""
    with pytest.raises(mnistlab.MnistlabError) as refused:
        call(*args, **kwargs)
    line = str(refused.value)
    assert "\n" not in line and len(line) < 300, line
    return line


def test_onnx_runtime_refuses_other_devices_a_misspelt_one_as_such(tmp_path, model):
    """They blamed the backend for a misspelt name, and for a checkpoint the machine's GPUs."""
    onnx_file = model.export(tmp_path / "m.onnx").path
    for target in ("default", onnx_file):
        assert refusal(mnistlab.load, target, backend="onnx", device="gpu") == (
            "--device gpu: expected auto, cpu, cuda, mps, xpu, hpu or mtia")
        assert refusal(mnistlab.load, target, backend="onnx", device="mps") == (
            "--device mps: the onnx backend runs on the CPU only: use --device cpu")


def test_arguments_of_the_wrong_type_are_one_line_naming_the_argument(tmp_path, model):
    """Not os.fspath's TypeError nor an AttributeError from deep inside: the argument's name,
    what it takes, and what it got."""
    checkpoint = "target: expected a run folder, a model file or 'default' (a str or os.PathLike)"
    for target, got in [(123, "123"), (None, "None"), (["default"], "['default']"),
                        (b"default", "b'default'")]:
        assert refusal(mnistlab.load, target) == f"{checkpoint}, got {got}"
    for device in (None, 0):
        expected = f"device: expected a name such as 'auto', 'cpu' or 'cuda:0', got {device}"
        assert refusal(mnistlab.load, "default", device=device) == expected
        assert refusal(mnistlab.load, "default", backend="onnx", device=device) == expected
        assert refusal(mnistlab.train, "quick", device=device, out=tmp_path / "x") == expected
        assert refusal(mnistlab.ensemble, ["default"], device=device) == expected
    recipe = "recipe: expected a recipe's name or a TOML file (a str or os.PathLike), got"
    folder = "expected a folder (a str or os.PathLike), got 5"
    calls = [(lambda: mnistlab.recipe(123), f"{recipe} 123"),
             (lambda: mnistlab.recipe(None), f"{recipe} None"),
             (lambda: mnistlab.train(123), f"{recipe} 123"),
             (lambda: mnistlab.train("quick", out=5), f"out: {folder}"),
             (lambda: mnistlab.train("quick", out=tmp_path / "x", data_dir=5), f"data_dir: {folder}"),
             (lambda: mnistlab.train("quick", out=tmp_path / "x", init=5), "init: expected a run "
              "folder, a model file or 'default' (a str or os.PathLike), got 5"),
             (lambda: model.evaluate(data_dir=5), f"data_dir: {folder}"),
             (lambda: model.export(5), "path: expected the .onnx file's path (a str or "
              "os.PathLike), got 5"),
             (lambda: mnistlab.datasets.load("mnist", data_dir=5), f"data_dir: {folder}"),
             (lambda: mnistlab.datasets.load(["mnist"]), "name: expected a dataset's name, such "
              "as 'mnist', got ['mnist']"),
             (lambda: mnistlab.resume(5), "run_dir: expected a run folder (a str or os.PathLike), "
              "got 5"),
             (lambda: mnistlab.compare([tmp_path], out=5), f"out: {folder}"),
             (lambda: mnistlab.compare(None), "runs: expected a list, each a run folder, got None"),
             (lambda: mnistlab.ensemble(None), "models: expected a list, each a run folder or a "
              "checkpoint, got None"),
             (lambda: mnistlab.ensemble([5]), "models[0]: expected a run folder or a checkpoint "
              "(a str or os.PathLike), got 5"),
             (lambda: mnistlab.reproduce(["softmax-regression"], out=5), f"out: {folder}"),
             (lambda: mnistlab.reproduce(["softmax-regression"], seeds=None), "seeds: expected a "
              "whole number of at least 1, got None"),
             (lambda: mnistlab.train("quick", seed=-10**5000), "seed: expected a whole number "
              "from 0 to 4,294,967,295, got a negative whole number of 5,001 digits"),
             (lambda: model.predict(np.eye(28) * 255, top_k="3"), "top_k must be from 1 to 10, "
              "got '3'"),
             # an audit's finds: each was a hang, a traceback, or a silent wrong choice
             (lambda: mnistlab.reproduce("softmax-regression", seeds=10**9, out=tmp_path / "r"),
              "seeds: expected at most 1,000, got 1,000,000,000"),
             (lambda: mnistlab.reproduce(["keras-cnn", "keras-cnn"], out=tmp_path / "r"),
              "recipes: keras-cnn named twice: give each recipe once"),
             (lambda: mnistlab.train("quick", out=tmp_path / "x", report="no"),
              "report: expected True or False, got 'no'"),
             (lambda: mnistlab.resume(tmp_path / "x", quiet=None),
              "quiet: expected True or False, got None"),
             (lambda: mnistlab.reproduce("keras-cnn", out=tmp_path / "r", report=0),
              "report: expected True or False, got 0"),
             (lambda: model.predict(np.eye(28) * 255, number="no"),
              "number: expected True or False, got 'no'"),
             (lambda: mnistlab.recipe("fast").with_length(steps=5.5),
              "steps: expected a whole number of at least 1, at most 10,000,000, got 5.5"),
             (lambda: mnistlab.recipe("fast").with_length(epochs=True),
              "epochs: expected a whole number of at least 1, at most 10,000, got True"),
             # a length out of range is the argument's error, not the command line's
             (lambda: mnistlab.train("quick", steps=10**8, out=tmp_path / "x"),
              "steps: expected a whole number of at least 1, at most 10,000,000, got 100,000,000"),
             (lambda: mnistlab.reproduce("keras-cnn", steps=10**8, out=tmp_path / "r"),
              "steps: expected a whole number of at least 1, at most 10,000,000, got 100,000,000"),
             (lambda: mnistlab.recipe("fast", optimizer={1: 2, "x": 3}), "recipe.updated(...): "
              "[optimizer]: unknown key '1'; expected one of: name, lr, momentum, nesterov, "
              "weight_decay, betas, eps, rho"),
             (lambda: mnistlab.recipe("fast", train={"freeze_after": {3: 0.5}}),
              "recipe.updated(...): [train] freeze_after: fast-cnn has no part '3' with weights; "
              "its parts: stem, blocks, hidden, fc")]
    for call, expected in calls:
        assert refusal(call) == expected
    assert list(tmp_path.iterdir()) == []  # each refused before anything was written


def test_an_empty_data_dir_is_the_current_folder_not_the_recipes_dataset(tmp_path, model,
                                                                         monkeypatch):
    """Model.evaluate(data_dir="") measured MNIST's test set, where every other call reads
    "" as the current folder."""
    monkeypatch.chdir(tmp_path)
    for call in (lambda: model.evaluate(data_dir=""), lambda: mnistlab.datasets.load(data_dir="")):
        assert refusal(call).startswith(".: missing IDX files")


def test_a_path_holding_a_nul_byte_is_one_line_naming_it(tmp_path, model):
    """No file's name holds one; Python's own ValueError ("embedded null byte") it was."""
    nul = str(tmp_path / "a\0b")
    calls = [(model.predict, nul + ".png"), (model.predict, [nul + ".png"]),
             (mnistlab.recipe, nul + ".toml"), (model.export, nul + ".onnx"),
             (mnistlab.load, nul + ".onnx")]
    for call, path in calls:
        assert "embedded null byte" in refusal(call, path)
    line = refusal(mnistlab.train, "softmax-regression", out=nul, steps=1, device="cpu", quiet=True)
    assert line.startswith("cannot create the run folder") and "embedded null byte" in line
    assert list(tmp_path.iterdir()) == []


def test_threads_are_checked_alike_on_both_backends():
    """ONNX Runtime's threads: the torch backend took 0, '2' or 10**9 without a word, and the
    onnx one raised a TypeError or blamed the checkpoint for a failed allocation."""
    for backend in ("torch", "onnx"):
        for threads, got in [(0, "0"), (-1, "-1"), ("2", "'2'"), (1.5, "1.5"), (True, "True"),
                             (10**9, "1,000,000,000"), (1025, "1,025")]:
            line = refusal(mnistlab.load, "default", backend=backend, device="cpu", threads=threads)
            assert line == f"threads: expected a whole number from 1 to 1,024, got {got}"
        assert mnistlab.load("default", backend=backend, device="cpu", threads=2).backend == backend


def test_one_path_where_a_list_is_expected_is_a_list_of_one(tmp_path, small_mnist):
    """A str is iterable: 'r1' was read as the checkpoints 'r' and '1'. One path alone is the
    list of one that `serve` also takes."""
    assert refusal(lambda: mnistlab.ensemble("r1")).startswith("r1: no such checkpoint")
    assert refusal(lambda: mnistlab.ensemble(tmp_path / "r1")).startswith(f"{tmp_path / 'r1'}: ")
    assert refusal(lambda: mnistlab.compare("r1", tmp_path / "c")).startswith("r1: no such run")
    assert refusal(lambda: mnistlab.reproduce("nope")).startswith("unknown recipe 'nope'")
    one = mnistlab.ensemble("default", device="cpu", data_dir=small_mnist)
    assert [path.parent.name for path, _ in one.members] == ["default"]


@pytest.fixture(scope="module")
def test_split():
    return mnistlab.datasets.load("mnist", split="test")


def test_datasets_load_gives_each_split_as_numpy():
    sizes = {"train": 55_000, "validation": 5_000, "train-full": 60_000, "test": 10_000}
    for split, size in sizes.items():
        images, labels = mnistlab.datasets.load("mnist", split=split)
        assert images.shape == (size, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (size,) and labels.dtype == np.int64
    with pytest.raises(mnistlab.MnistlabError, match="unknown split 'tset'"):
        mnistlab.datasets.load("mnist", split="tset")


def test_predict_reads_every_kind_of_picture_as_the_command_does(model, test_split, tmp_path):
    images, labels = test_split
    paper = 255 - np.kron(images[:3], np.ones((4, 4), dtype=np.uint8))  # dark ink, 112x112
    path = tmp_path / "seven.png"
    Image.fromarray(paper[0]).save(path)
    command = subprocess.run([sys.executable, "-m", "mnistlab", "predict", str(path), "--json"],
                             capture_output=True, text=True, timeout=120)
    said = json.loads(command.stdout)["images"][0]
    [from_path] = model.predict(path)
    assert from_path.to_dict() == {k: v for k, v in said.items() if k != "image"}
    kinds = [str(path), Image.open(path), paper[0], torch.from_numpy(paper[0]),
             np.stack([paper[0]] * 3, axis=-1), torch.from_numpy(paper[0])[None],
             np.stack([paper[0], np.full_like(paper[0], 255)], axis=-1)]  # grey, opaque alpha
    for kind in kinds:
        [reading] = model.predict(kind)
        assert reading.text == "7" and reading.confidence == pytest.approx(from_path.confidence, abs=1e-6)
    assert [r.text for r in model.predict(paper)] == [str(d) for d in labels[:3]]  # a stack
    assert [r.text for r in model.predict([paper[1], path])] == [str(labels[1]), "7"]
    assert model.predict(paper[0] / 255.0)[0].text == "7"  # floats in 0-1
    [number] = model.predict(np.hstack(list(paper)))
    assert number.is_number and number.text == "".join(map(str, labels[:3]))
    assert model.predict([]) == []


def test_predict_refuses_what_is_not_a_picture_with_one_line(model):
    bad = [(np.full((28, 28), np.nan), "NaN"), (np.full((28, 28), 300.0), "0-255"),
           (np.zeros((2, 2, 28, 28, 1)), "H x W"), (object(), "cannot read a object"),
           (np.array([["a"]]), "must be numbers"), (np.zeros((28, 28)), "empty image"),
           ("missing.png", "missing.png"), (3, "cannot read a int"),
           ((np.eye(28) * 255).tolist(), "a list of numbers is not a picture")]
    for value, words in bad:
        with pytest.raises(mnistlab.ImageError, match=words):
            model.predict(value)
    with pytest.raises(mnistlab.MnistlabError, match="top_k must be from 1 to 10"):
        model.predict(np.eye(28) * 255, top_k=11)


def test_predict_refuses_degenerate_pictures_with_one_line(model, tmp_path):
    """Each was a KeyError, an IndexError, a ValueError, a NotImplementedError, or a picture
    read with a ComplexWarning after its imaginary part was dropped."""
    path = tmp_path / "one.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(path)
    closed = Image.open(path)
    closed.close()
    with Image.open(path) as unread:  # the file closes here, before its pixels are read
        pass
    shape = "a picture's array must be H x W or H x W x 2, 3 or 4, got shape"
    bad = [(np.zeros((5, 5, 5, 5)), f"{shape} (5, 5, 5) (one of a stack of shape (5, 5, 5, 5))"),
           (np.zeros((2, 5, 28, 28)), f"{shape} (5, 28, 28) (one of a stack of shape (2, 5, 28, 28))"),
           (Image.new("L", (0, 0)), "the image has no pixels (0x0)"),
           (Image.new("RGBA", (5, 0)), "the image has no pixels (5x0)"),
           (closed, "the image cannot be read (Operation on closed image)"),
           (unread, "the image's file was closed before its pixels were read"),
           (torch.empty((28, 28), device="meta"), "a tensor on the meta device has no pixel values"),
           (np.eye(28, dtype=np.complex64), "pixels must be real numbers, got complex64"),
           (torch.eye(28, dtype=torch.complex64) * 255, "pixels must be real numbers, got complex64"),
           (Image.fromarray(np.full((28, 28), np.nan, np.float32), "F"), "pixels hold NaN"),
           (Image.new("L", (4001, 4000)), "the image is too large: 4001x4000 pixels")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning or ComplexWarning on the way
        for value, words in bad:
            with pytest.raises(mnistlab.ImageError) as refused:
                model.predict(value)
            assert str(refused.value).startswith(words), (words, str(refused.value))
        with pytest.raises(mnistlab.ImageError, match="meta device"):
            model.predict_proba(torch.empty((1, 28, 28), device="meta"))


def test_predict_reads_tensors_numpy_has_no_type_for(model, test_split):
    images, _ = test_split
    [plain] = model.predict(images[0])
    seven = torch.from_numpy(images[0])
    with warnings.catch_warnings():  # PyTorch's: quantized tensors deprecated, nested ones new
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_tensor(seven.float(), 1.0, 0, torch.quint8)  # 0-255 exactly
        nested = torch.nested.nested_tensor([seven, torch.eye(40) * 255])
        ragged = torch.nested.nested_tensor([seven, torch.zeros(27, 28, dtype=torch.uint8)])
    for kind in (seven.to(torch.bfloat16), seven.to_sparse(), seven.float().to(torch.bfloat16),
                 quantized):
        [reading] = model.predict(kind)  # 0-255 in bfloat16 is exact: the same picture
        assert (reading.text, reading.confidence) == (plain.text, plain.confidence)
    # a nested tensor holds pictures of several sizes: each is read, as from a list
    [first, second] = model.predict(nested)
    [alone] = model.predict(torch.eye(40) * 255)
    assert [(r.text, r.confidence) for r in (first, second)] == [(plain.text, plain.confidence),
                                                                 (alone.text, alone.confidence)]
    with pytest.raises(mnistlab.ImageError, match="pictures differ in size"):
        model.predict_proba(ragged)
    # one of a size is a batch: it was refused as pictures that "differ in size"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        batch = torch.nested.nested_tensor([seven, torch.from_numpy(images[1])])
    assert np.array_equal(model.predict_proba(batch), model.predict_proba(images[:2]))


def test_predict_proba_takes_mnist_form_only(model, test_split):
    images, labels = test_split
    p = model.predict_proba(images[:500])
    assert p.shape == (500, 10) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert (p.argmax(axis=1) == labels[:500]).mean() > 0.99
    assert np.allclose(model.predict_proba(images[7]), p[7:8], atol=1e-6)  # batch of one
    assert np.allclose(model.predict_proba(torch.from_numpy(images[:4])), p[:4], atol=1e-6)
    with pytest.raises(mnistlab.ImageError, match="uint8 images of shape \\(N, 28, 28\\)"):
        model.predict_proba(images[:4] / 255.0)
    for ragged in ([[0] * 28, [0] * 27], [images[0], images[1][:27]]):
        with pytest.raises(mnistlab.ImageError, match="uint8 images of shape \\(N, 28, 28\\)"):
            model.predict_proba(ragged)


def test_evaluate_agrees_with_the_command_and_with_onnx(model, tmp_path):
    ours = model.evaluate()
    printed = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", "default", "--json",
                              "--device", "cpu"], capture_output=True, text=True, timeout=300)
    theirs = json.loads(printed.stdout)
    assert (ours.accuracy, ours.metrics.confusion) == (theirs["accuracy"], theirs["confusion"])
    assert repr(ours) == f"Evaluation(test: accuracy {100 * ours.accuracy:.2f}%, loss {ours.loss:.4f}, 10,000 images)"
    report = model.export(tmp_path / "m.onnx")
    assert report.path.is_file() and report.agreement == 1.0
    onnx = mnistlab.load(tmp_path / "m.onnx")
    assert (onnx.backend, onnx.module) == ("onnx", None)
    measured = onnx.evaluate(split="validation")
    assert measured.accuracy == model.evaluate(split="validation").accuracy
    with pytest.raises(mnistlab.MnistlabError, match="an ONNX file has no PyTorch layers"):
        onnx.summary()


def test_summary_prints_the_keras_table(model, capsys):
    model.summary()
    table = capsys.readouterr().out
    assert 'Model: "mnistlab-cnn (default)"' in table and "Total params: 307,370" in table


def test_ensemble_takes_runs_and_folders(tmp_path, small_mnist):
    recipe = mnistlab.recipe("softmax-regression", steps=30)
    runs = [mnistlab.train(recipe, seed=s, device="cpu", out=tmp_path / f"s{s}",
                           data_dir=small_mnist, quiet=True, report=False) for s in (0, 1)]
    together = mnistlab.ensemble([runs[0], tmp_path / "s1"], device="cpu", data_dir=small_mnist)
    assert [m.accuracy for _, m in together.members] == [r.test_accuracy for r in runs]
    assert repr(together).startswith("Ensemble(2 models on test: accuracy ")
    comparison = mnistlab.compare(runs, tmp_path / "both")
    assert comparison.page.is_file() and len(comparison.rows) == 2


def test_resuming_a_finished_run_tests_it_again_and_keeps_its_record(tmp_path):
    run = mnistlab.train("softmax-regression", steps=60, device="cpu", quiet=True, report=False,
                         out=tmp_path / "run")
    meta, log = tmp_path / "run" / "model.json", tmp_path / "run" / "metrics.jsonl"
    recorded = json.loads(meta.read_text())["metrics"]
    assert set(recorded) == {"train_seconds", "validation", "test"}
    again = mnistlab.resume(run.run_dir, device="cpu", quiet=True, report=False)
    assert (again.test_accuracy, again.validation_accuracy, again.train_seconds) == (
        run.test_accuracy, run.validation_accuracy, run.train_seconds)
    # the model file rewritten with the same figures, and one test in the log, not two
    assert json.loads(meta.read_text())["metrics"] == recorded
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()].count("test") == 1


def test_a_model_exports_after_the_working_folder_changes(tmp_path, monkeypatch):
    """export, and a Run's model, read the checkpoint again by the relative path it was
    loaded from."""
    monkeypatch.chdir(tmp_path)
    run = mnistlab.train("softmax-regression", steps=3, device="cpu", quiet=True, report=False,
                         out="run")
    model = mnistlab.load("run", device="cpu")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run.model.path == tmp_path / "run" / "model.safetensors"  # run.model too
    report = model.export("run.onnx")
    assert report.path.resolve() == tmp_path / "elsewhere" / "run.onnx" and report.agreement == 1.0

import re
from pathlib import Path

import pytest

from mnistlab.recipebook import RecipeError, load_recipe, recipe_names

VALID = """
name = "tiny"
description = "a test recipe"
[model]
name = "keras-cnn"
[optimizer]
name = "adam"
lr = 1e-3
[train]
batch_size = 32
steps = 10
"""


def test_every_shipped_recipe_loads():
    names = recipe_names()
    assert {"quick", "softmax-regression", "deep-mnist", "deep-mnist-as-printed",
            "opengenus-cnn", "strided-cnn", "keras-cnn"} <= set(names)
    for name in names:
        assert load_recipe(name).name == name


def test_every_recipe_the_docs_run_loads():
    # docs/experiments holds the recipes that the benchmarks and results pages were measured with
    root = Path(__file__).parent.parent
    files = sorted((root / "docs" / "experiments").rglob("*.toml"))
    for path in files:
        assert load_recipe(path).name == path.stem
    pages = [root / "README.md", *(root / "docs").glob("*.md")]
    named = {m for page in pages for m in re.findall(r"docs/experiments/[\w./-]+\.toml", page.read_text())}
    assert named, "the docs name no experiment recipe: is this test still looking in the right place?"
    assert {root / name for name in named} <= set(files)


def test_tutorial_recipes_follow_their_tutorials():
    softmax = load_recipe("softmax-regression")
    assert (softmax.model.name, softmax.model.init) == ("softmax", "zeros")
    assert (softmax.optimizer.name, softmax.optimizer.lr) == ("sgd", 0.01)
    assert (softmax.train.batch_size, softmax.train.steps, softmax.train.loss_reduction) == (50, 1000, "sum")
    assert softmax.claim.accuracy == 0.91

    deep = load_recipe("deep-mnist")
    printed = load_recipe("deep-mnist-as-printed")
    for r in (deep, printed):
        assert (r.model.name, r.model.init, r.model.args) == ("deep-cnn", "truncated-normal", {"dropout": 0.5})
        assert (r.optimizer.name, r.optimizer.lr, r.train.batch_size, r.train.steps) == ("adam", 1e-4, 50, 20000)
        assert r.train.loss_reduction == "sum" and r.train.split == "train"
    assert (deep.quirks.update_every, printed.quirks.update_every) == (1, 100)

    opengenus = load_recipe("opengenus-cnn")
    assert (opengenus.model.init, opengenus.model.args) == ("normal", {"dropout": 0.2})
    assert (opengenus.optimizer.lr, opengenus.train.batch_size, opengenus.train.steps) == (1e-3, 128, 10 * 429)
    assert opengenus.quirks.dropout_at_test and opengenus.train.loss_reduction == "mean"

    strided = load_recipe("strided-cnn")
    assert (strided.model.name, strided.train.steps, strided.train.batch_size) == ("strided-cnn", 18 * 1100, 50)
    assert strided.train.loss_reduction == "mean" and strided.claim.accuracy == 0.992

    keras = load_recipe("keras-cnn")
    opt = keras.optimizer
    assert (opt.name, opt.lr, opt.rho, opt.eps) == ("keras-rmsprop", 1e-3, 0.9, 1e-7)
    assert (keras.train.batch_size, keras.train.epochs, keras.train.split) == (64, 5, "train-full")
    assert keras.claim.accuracy == 0.9891


def test_user_recipe_by_path(recipe_file):
    recipe = load_recipe(recipe_file(VALID))
    assert recipe.name == "tiny" and recipe.train.steps == 10
    assert recipe.with_length(epochs=2).train.epochs == 2
    assert recipe.with_length(epochs=2).train.steps is None


def test_a_folder_named_like_a_shipped_recipe_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").mkdir()  # a run folder, say
    assert load_recipe("fast").name == "fast"
    (tmp_path / "mine").mkdir()  # a folder that is no recipe at all
    with pytest.raises(RecipeError, match=r"mine: not a regular file \(a folder\)"):
        load_recipe("mine")


@pytest.mark.parametrize("change, message", [
    (("batch_size = 32", "batch_sise = 32"), "[train]: unknown key 'batch_sise'"),
    (("batch_size = 32", 'batch_size = "32"'), "'train.batch_size': expected a whole number, got str '32'"),
    (("batch_size = 32", "batch_size = 0"), "[train] batch_size: expected a whole number of at least 1"),
    (("lr = 1e-3", "lr = -1.0"), "[optimizer] lr: expected a learning rate above 0"),
    (('name = "adam"', 'name = "adamax"'), "[optimizer] name: expected one of sgd, adam, adamw, keras-rmsprop"),
    (("lr = 1e-3", "lr = 1e-3\nrho = 0.5"), "[optimizer] rho does not apply to 'adam'"),
    (("steps = 10", "steps = 10\nepochs = 2"), "[train] epochs/steps: expected exactly one of them"),
    (('name = "keras-cnn"', 'name = "keras-cnn"\nwidth = 3'), "[model] model 'keras-cnn'"),
    (('name = "keras-cnn"', 'name = "resnet"'), "[model] unknown model 'resnet'"),
    (('name = "keras-cnn"', 'name = "keras-cnn"\ninit = "he"'), "[model] unknown init scheme 'he'"),
    (('name = "keras-cnn"', 'name = "keras-cnn"\nargs = { init = "zeros" }'),
     "[model] model 'keras-cnn' takes no argument 'init': the model's init is given beside its arguments"),
    (('name = "keras-cnn"', 'name = "fast-cnn"\nwidths = [100000, 64]'),
     "[model] widths must be a list of 2 to 4 integers from 1 to 1024 (channels), got [100000, 64]"),
    (('name = "keras-cnn"', 'name = "fast-cnn"\nhidden = 1e9'),
     "[model] hidden must be an integer from 0 to 4096 (units; 0: none), got 1000000000.0"),
    (("[train]", "[training]"), "unknown key 'training'"),
    (("[train]", "[augment]\nrotate = 400\n[train]"), "[augment] expected rotate in [0, 180]"),
    (("[train]", "[augment]\nflip = true\n[train]"), "[augment]: unknown key 'flip'"),
    (("[train]", "[augment]\nelastic_alpha = 34\n[train]"),
     "[augment] elastic_alpha needs elastic_sigma of at least 1 pixel"),
    (("[train]", "[augment]\nelastic_alpha = 340\nelastic_sigma = 4\n[train]"),
     "[augment] expected elastic_alpha in [0, 100]"),
    (("steps = 10", "steps = 10 ]"), "not valid TOML"),
    (("steps = 10", "steps = 10\nfreeze_after = { stem = 0.5 }"),
     "[train] freeze_after: keras-cnn has no part 'stem' with weights; its parts: conv1, conv2, conv3, fc1, fc2"),
    (("steps = 10", "steps = 10\nfreeze_after = { cnv1 = 0.5 }"),
     "[train] freeze_after: keras-cnn has no part 'cnv1' with weights (did you mean 'conv1'?)"),
    (("steps = 10", "steps = 10\nfreeze_after = { conv1 = 2 }"),
     "[train] freeze_after.conv1: expected a fraction of the run in [0, 1], got 2"),
    (("steps = 10", 'steps = 10\nfreeze_after = { conv1 = "half" }'),
     "[train] freeze_after.conv1: expected a fraction of the run in [0, 1], got 'half'"),
])
def test_mistakes_name_the_file_and_key(recipe_file, change, message):
    path = recipe_file(VALID.replace(*change, 1))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_section_and_unknown_name(recipe_file, tmp_path):
    with pytest.raises(RecipeError, match="missing key 'optimizer'"):
        load_recipe(recipe_file(VALID.split("[optimizer]")[0] + "[train]\nbatch_size = 1\nsteps = 1\n"))
    with pytest.raises(RecipeError, match="unknown recipe 'nope'; shipped recipes: .*quick"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.toml")


def test_model_arguments_are_checked_where_the_recipe_comes_in(recipe_file):
    path = recipe_file(VALID.replace('name = "keras-cnn"', 'name = "deep-cnn"\ndropout = 0', 1))
    args = load_recipe(path).model.args
    assert args == {"dropout": 0.0} and type(args["dropout"]) is float  # as the model takes it


def test_a_recipe_with_huge_sizes_is_one_line_and_allocates_nothing(recipe_file, capsys):
    """Before: the meta-device check let widths of 100,000 through, and `mnistlab summary` then
    died allocating gigabytes with a DefaultCPUAllocator traceback."""
    from mnistlab.cli import main

    path = recipe_file(VALID.replace('name = "keras-cnn"', 'name = "fast-cnn"\nwidths = [100000, 64]', 1))
    assert main(["summary", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (f"mnistlab: error: {path}: [model] widths must be a list of 2 to 4 integers from 1 "
                   "to 1024 (channels), got [100000, 64]\n")

"""Hostile and careless recipes, model sizes and small command-line values: each class of
problem is one `mnistlab: error:` line and exit status 1 (argparse's own usage line and status
2 for an option's value), no traceback, and nothing written, before anything is trained."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mnistlab.checkpoint import MAX_META_CHARS
from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.models import build_model, check_model_args
from mnistlab.models.zoo import MAX_ACTIVATION_BYTES, MAX_PARAMETERS, activation_bytes
from mnistlab.recipebook import load_recipe, recipe_names
from mnistlab.recipebook.recipe import (
    MAX_CLAIM_TEXT,
    MAX_DESCRIPTION,
    MAX_RECIPE_BYTES,
    MAX_RECIPE_JSON_CHARS,
    MAX_TITLE,
)
from mnistlab.training.engine import new_run_dir

TINY = """
name = "tiny"
description = "fast-cnn, a few steps"
[model]
name = "fast-cnn"
widths = [8, 8]
[optimizer]
name = "adam"
lr = 3e-3
[train]
batch_size = 100
steps = 4
"""


def refused(capsys, args: list[str], message: str) -> None:
    """`mnistlab ARGS` ends in one error line that holds `message`, with status 1."""
    assert main(args) == 1, args
    out, err = capsys.readouterr()
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, (args, err)
    assert message in err, (args, err)
    assert "Traceback" not in err and out == "", (args, out)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The working directory of the commands: a run without --out would go into its runs/."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train(recipe: Path, *more: str) -> list[str]:
    return ["train", "--recipe", str(recipe), "--device", "cpu", "--no-report", *more]


def test_recipe_files_are_bounded_by_what_is_read_and_special_files_by_type(workdir, capsys):
    fifo = workdir / "fifo.toml"
    os.mkfifo(fifo)  # with no writer: reading it would wait forever
    big = workdir / "big.toml"
    big.write_text(TINY + "# " + "x" * MAX_RECIPE_BYTES + "\n")
    latin = workdir / "latin.toml"
    latin.write_bytes(TINY.replace("a few steps", "caf\xe9").encode("latin-1"))
    cases = [("/dev/zero", "not a regular file (a character device)"),
             (fifo, "not a regular file (a FIFO)"),
             (big, f"larger than the {MAX_RECIPE_BYTES:,} bytes allowed"),
             (latin, "not UTF-8 text")]
    for path, message in cases:
        refused(capsys, train(path), message)
        if str(path).endswith(".toml"):  # what `summary` reads as a recipe
            refused(capsys, ["summary", str(path)], message)
    assert sorted(p.name for p in workdir.iterdir()) == ["big.toml", "fifo.toml", "latin.toml"]


@pytest.fixture
def default_recursion_limit():
    """Python's own limit: another test's library (Hypothesis) may have raised it, and a
    900-deep list then loads without recursing past it."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(before)


def test_a_recipe_nested_deeper_than_python_recurses_is_one_line(workdir, capsys, default_recursion_limit):
    deep = workdir / "deep.toml"
    deep.write_text("x = " + "[" * 30_000 + "]" * 30_000 + "\n")  # within the file's bound
    deep_argument = workdir / "deep-argument.toml"
    deep_argument.write_text(TINY.replace("widths = [8, 8]", "widths = " + "[" * 900 + "]" * 900))
    for path in (deep, deep_argument):
        refused(capsys, train(path), "nested too deeply to be a recipe")
        refused(capsys, ["summary", str(path)], "nested too deeply to be a recipe")
    assert not (workdir / "runs").exists()


def test_settings_pytorch_would_refuse_are_refused_when_the_recipe_loads(workdir, capsys):
    nesterov = workdir / "nesterov.toml"
    nesterov.write_text(TINY.replace('name = "adam"', 'name = "sgd"\nnesterov = true')
                        .replace("lr = 3e-3", "lr = 0.1"))
    # every part frozen before the end: the steps after it have nothing to train
    frozen = workdir / "frozen.toml"
    frozen.write_text(TINY + "freeze_after = { stem = 0.5, blocks = 0.5, fc = 0.25 }\n")
    out = workdir / "run"
    refused(capsys, train(nesterov, "--out", str(out)), "nesterov = true needs momentum above 0")
    refused(capsys, train(frozen, "--out", str(out)), "freeze_after freezes every part")
    assert not out.exists()  # no empty run folder left behind


def test_absurd_lengths_are_refused_before_any_run_folder(workdir, capsys, small_mnist):
    lengths = [("steps = 4", "steps = 1000000000000", "[train] steps: expected a whole number"),
               ("steps = 4", "epochs = 1000000", "[train] epochs: expected"),
               ("batch_size = 100", "batch_size = 1000000000", "[train] batch_size: expected"),
               ("steps = 4", "steps = 4\nlog_every = 100000000", "[train] log_every: expected"),
               ("[train]", "[quirks]\nupdate_every = 100000000\n[train]", "update_every: expected")]
    out = workdir / "run"
    data = ["--data-dir", str(small_mnist), "--out", str(out)]
    for old, new, message in lengths:
        recipe = workdir / "long.toml"
        recipe.write_text(TINY.replace(old, new))
        refused(capsys, train(recipe, *data), message)
    recipe = workdir / "tiny.toml"
    recipe.write_text(TINY)
    with pytest.raises(SystemExit) as done:  # refused as an option's value, by argparse
        main(train(recipe, "--steps", str(10**12), *data))
    assert done.value.code == 2
    assert "argument --steps: expected a whole number of at least 1, at most 10,000,000" in (
        capsys.readouterr().err)
    # within each bound, too long together: 10,000 epochs of 2,200 one-image batches
    recipe.write_text(TINY.replace("steps = 4", "epochs = 10000").replace("batch_size = 100",
                                                                          "batch_size = 1"))
    refused(capsys, train(recipe, *data), "the run would take 22,000,000 steps")
    # a log longer than a resume reads back
    recipe.write_text(TINY.replace("steps = 4", "steps = 5000000\nlog_every = 1"))
    refused(capsys, train(recipe, *data), "records to metrics.jsonl, more than the")
    assert not out.exists()


def test_what_a_recipe_puts_in_a_checkpoint_fits_what_the_checkpoint_reader_takes(
        workdir, capsys, small_mnist):
    assert 2 * MAX_RECIPE_JSON_CHARS < MAX_META_CHARS  # the recipe's copy leaves the header room
    recipe = workdir / "texts.toml"
    claim = '[claim]\ntutorial = "{}"\ndocument = "d"\ntext = "{}"\n'
    too_long = [(f'description = "{"d" * (MAX_DESCRIPTION + 1)}"', "", "description: expected at most"),
                ("", claim.format("t" * (MAX_TITLE + 1), ""), "tutorial: expected at most"),
                ("", claim.format("t", "c" * (MAX_CLAIM_TEXT + 1)), "text: expected at most")]
    for description, more, message in too_long:
        recipe.write_text(TINY.replace('description = "fast-cnn, a few steps"', description or
                                       'description = ""') + more)
        refused(capsys, train(recipe, "--data-dir", str(small_mnist)), message)
    assert not (workdir / "runs").exists()
    # at every limit, and beyond ASCII (JSON writes each such character as six): it trains, and
    # what it wrote reads back
    recipe.write_text(TINY.replace("fast-cnn, a few steps", "\u00e9" * MAX_DESCRIPTION)
                      + claim.format("t" * MAX_TITLE, "\u00e9" * MAX_CLAIM_TEXT))
    run = workdir / "run"
    assert main(train(recipe, "--data-dir", str(small_mnist), "--out", str(run), "--quiet")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-dir", str(small_mnist), "--device", "cpu",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 600
    assert main(["train", "--resume", str(run), "--device", "cpu", "--quiet", "--no-report"]) == 0


def test_a_recipe_name_never_becomes_a_path(workdir, capsys):
    before = set(Path("/tmp").iterdir())
    recipe = workdir / "named.toml"
    for name in ("../../x", "/tmp/mnistlab-escape", "a/b", ".hidden", "..", "", "x" * 65,
                 "tab\tname"):
        recipe.write_text(TINY.replace('name = "tiny"', f"name = {json.dumps(name)}"))
        refused(capsys, train(recipe), "name: expected letters, digits, '.', '-' and '_'")
    assert sorted(p.name for p in workdir.iterdir()) == ["named.toml"]
    assert set(Path("/tmp").iterdir()) <= before | {workdir}
    # the engine's own guarantee, whatever gave it the name
    for name in ("../x", "/tmp/x", "a/b", ".."):
        with pytest.raises(MnistlabError, match="cannot name a run folder"):
            new_run_dir(name, workdir / "runs")
    assert new_run_dir("fast-99.2", workdir / "runs").parent == workdir / "runs"


def test_a_models_size_is_bounded_before_it_is_built(workdir, capsys):
    # each argument within its bounds; the model too large as a whole
    too_many = TINY.replace('name = "fast-cnn"\nwidths = [8, 8]',
                            'name = "mnistlab-cnn"\nwidths = [1024, 1024, 1024]\nconvs = 4')
    too_wide = TINY.replace('name = "fast-cnn"\nwidths = [8, 8]',
                            'name = "mnistlab-cnn"\nwidths = [1024, 16, 16]\nconvs = 4')
    for text, message in [(too_many, "the model would have 104,006,666 parameters, more than "
                                     "the 100,000,000 mnistlab builds"),
                          (too_wide, "MiB of activations per image, more than the 32 MiB")]:
        recipe = workdir / "big-model.toml"
        recipe.write_text(text)
        refused(capsys, train(recipe), message)
        refused(capsys, ["summary", str(recipe)], message)
    assert not (workdir / "runs").exists()
    # far beyond every shipped recipe's model, ten times at least; the activations worked out
    # from the layers' sizes are those a real forward pass gives
    models = [(load_recipe(name).model.name, load_recipe(name).model.args) for name in recipe_names()]
    models += [("valid-cnn", {"kernel": kernel}) for kernel in (3, 5, 7)]
    models += [("fast-cnn", {"widths": [8, 8, 8, 8], "crop": 3, "stem_padding": 0, "hidden": 8}),
               ("mnistlab-cnn", {"widths": [8, 8, 8], "convs": 3})]
    for name, args in models:
        model = build_model(name, **check_model_args(name, args))
        assert sum(p.numel() for p in model.parameters()) * 10 < MAX_PARAMETERS, name
        assert activation_bytes(model) * 10 < MAX_ACTIVATION_BYTES, name
        assert activation_bytes(model) == layer_outputs_bytes(model), (name, args)


def layer_outputs_bytes(model) -> int:
    """The bytes of every layer's output in a real forward pass of one image."""
    sizes = []
    layers = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out.nbytes)) for m in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    return sum(sizes)


def test_small_command_line_values_out_of_range_are_one_line(workdir, capsys):
    # an option's value out of its range: argparse's usage and one error line, status 2
    for args, message in [(["train", "--seed", "18014398509481984"], "argument --seed: expected a "
                                                                     "seed from 0 to 4,294,967,295"),
                          (["train", "--seed", "-1"], "argument --seed: expected a seed"),
                          (["bench", "--seeds", "1000000000"], "argument --seeds: expected at most")]:
        with pytest.raises(SystemExit) as done:
            main(args)
        err = capsys.readouterr().err
        assert done.value.code == 2 and "Traceback" not in err
        assert err.splitlines()[-1].startswith(f"mnistlab {args[0]}: error: {message}"), err
    refused(capsys, ["train", "--seed", "4294967295", "--seeds", "2"], "goes past the largest seed")
    for device in ("cuda:abc", "cuda:-1", "cuda:99999", "cpu:0"):
        refused(capsys, ["train", "--recipe", "quick", "--device", device], f"--device {device}:")
    for url, message in [("http://127.0.0.1:99999", "with a port from 1 to 65535"),
                         ("http://127.0.0.1:0", "with a port from 1 to 65535"),
                         ("http://127.0.0.1:8000/a b", "not a URL"),
                         ("http://127.0.0.1:8000/\r\nX-Injected: 1", "not a URL"),
                         ("https://127.0.0.1:8000", "only plain http:// URLs"),
                         ("http://10.1.2.3:8000", "only targets this machine")]:
        refused(capsys, ["loadtest", url, "--seconds", "1"], message)
    refused(capsys, ["loadtest", "--image", "/dev/zero", "--seconds", "1"], "not a regular file")
    # a results file that could not be written is refused before the minutes of work
    (workdir / "results.json").mkdir()
    refused(capsys, ["loadtest", "--json", "results.json"],
            "cannot write results.json: a folder is in its place, not a file")
    refused(capsys, ["bench", "fast", "--json", "no/such.json"],
            "cannot write no/such.json: no folder no")
    (workdir / "results.json").rmdir()
    # nor over a file that is no JSON (a model, say): the name must end in .json
    for command in (["bench", "fast"], ["loadtest"]):
        with pytest.raises(SystemExit) as stopped:  # argparse's refusal, status 2
            main([*command, "--json", "model.safetensors"])
        assert stopped.value.code == 2
        assert "expected a file name ending in .json, got model.safetensors" in capsys.readouterr().err
    assert list(workdir.iterdir()) == []


def test_numbers_too_large_for_a_float_or_a_message_are_refused_in_words():
    # from Python a recipe's number can be any int: past 1.8e308 it is no float (float() raised
    # OverflowError), and its digits are counted, not printed (past 4,300 Python refuses them)
    fast = load_recipe("fast")
    for sections, words in [({"optimizer": {"lr": 10**400}}, "'optimizer.lr': expected a finite number, "
                                                              "got a whole number of 401 digits"),
                            ({"augment": {"rotate": -10**400}}, "got a negative whole number of 401 digits"),
                            ({"train": {"batch_size": 10**400}}, "batch_size: expected a whole number of at "
                                                                 "least 1, at most 65,536, got a whole "
                                                                 "number of 401 digits"),
                            ({"train": {"steps": 10**5000}}, "got a whole number of 5,001 digits"),
                            ({"name": 10**5000}, "name': expected a string, got a whole number of 5,001")]:
        with pytest.raises(MnistlabError) as refusal:
            fast.updated(**sections)
        assert words in str(refusal.value) and len(str(refusal.value)) < 200, sections
    with pytest.raises(MnistlabError, match=r"hidden must be an integer from 0 to 4096 \(units; 0: none\), "
                                            r"got a whole number of 5,001 digits$"):
        check_model_args("fast-cnn", {"hidden": 10**5000})
    with pytest.raises(MnistlabError, match=r"got \[a whole number of 401 digits, 64\]$"):
        check_model_args("fast-cnn", {"widths": [10**400, 64]})


def test_a_name_longer_than_the_system_allows_is_one_line(capsys, tmp_path):
    """Python's Path.exists raises on such a name (ENAMETOOLONG), where it answers False for
    most: a traceback it was, from every command that takes a path."""
    long = str(tmp_path / ("x" * 300))
    for args in (["evaluate", long, "--device", "cpu"], ["summary", long],
                 ["train", "--recipe", "fast", "--device", "cpu", "--out", long]):
        refused(capsys, args, "File name too long")
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_that_names_parts_of_another_model_says_so_for_init(capsys, tmp_path):
    """`fast` freezes its model's stem; the shipped model has none. The error named
    recipe.updated(...), a call the user never made."""
    refused(capsys, ["train", "--recipe", "fast", "--steps", "2", "--init", "default",
                     "--device", "cpu", "--out", str(tmp_path / "run")],
            "recipe 'fast' cannot train the model of default (mnistlab-cnn): [train] "
            "freeze_after: mnistlab-cnn has no part 'stem'")
    assert list(tmp_path.iterdir()) == []

"""`mnistlab train --seeds` and `mnistlab ensemble`: members trained for real, then voted."""

import json
import subprocess
import sys

import pytest
import torch

from mnistlab.checkpoint import MODEL_FILE, shipped_dir
from mnistlab.committee import Committee, evaluate_ensemble
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import evaluate_checkpoint
from mnistlab.models import build_model


def mnistlab(*args):
    return subprocess.run([sys.executable, "-m", "mnistlab", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def members(tmp_path_factory, small_mnist):
    out = tmp_path_factory.mktemp("members")
    done = mnistlab("train", "--recipe", "fast", "--seeds", "3", "--seed", "5", "--epochs", "2",
                    "--out", out, "--data-dir", small_mnist, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_seeds_trains_one_folder_per_seed_and_sums_up(members):
    out, stdout = members
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["seed-5", "seed-6", "seed-7"]
    assert (out / "compare.html").is_file()  # the seeds' curves on one page
    assert stdout.count("test accuracy") == 4  # three runs and the summary
    assert "3 seeds: test accuracy mean" in stdout
    assert f"mnistlab ensemble {out / 'seed-5'} {out / 'seed-6'} {out / 'seed-7'}" in stdout
    weights = [json.loads((out / f"seed-{s}" / "model.json").read_text())["seed"] for s in (5, 6, 7)]
    assert weights == [5, 6, 7]


def test_ensemble_votes_with_averaged_probabilities(members, small_mnist):
    out, _ = members
    folders = [out / f"seed-{s}" for s in (5, 6, 7)]
    result = evaluate_ensemble(folders, device="cpu", data_dir=str(small_mnist))
    singles = [evaluate_checkpoint(f, device="cpu", data_dir=str(small_mnist)).metrics for f in folders]
    assert [m.accuracy for _, m in result.members] == [m.accuracy for m in singles]
    assert result.metrics.count == 600
    assert result.metrics.accuracy > 0.8
    # averaging probabilities rarely does worse than the weakest member
    assert result.metrics.accuracy >= min(m.accuracy for m in singles)

    printed = mnistlab("ensemble", *folders, "--data-dir", small_mnist, "--device", "cpu", "--json")
    assert printed.returncode == 0, printed.stderr
    report = json.loads(printed.stdout)
    assert report["ensemble"]["accuracy"] == result.metrics.accuracy
    assert len(report["members"]) == 3


def test_a_committee_of_one_is_that_model():
    torch.manual_seed(0)
    model = build_model("fast-cnn").eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(Committee([model])(x).exp(), model(x).softmax(1))


def test_ensemble_errors_are_clear(tmp_path):
    with pytest.raises(MnistlabError, match="no such checkpoint"):
        evaluate_ensemble([tmp_path / "missing"], device="cpu")
    with pytest.raises(MnistlabError, match="at least one"):
        evaluate_ensemble([], device="cpu")
    bad = mnistlab("ensemble", tmp_path / "missing")
    assert bad.returncode == 1 and bad.stderr.startswith("mnistlab: error:")


def test_one_checkpoint_named_twice_is_refused_not_weighed_twice():
    model_file = shipped_dir("keras-cnn") / MODEL_FILE
    for twice in (["default", "default"], ["keras-cnn", model_file]):
        with pytest.raises(MnistlabError, match=r"^\S+ and \S+ are the same checkpoint, which "
                           r"would count twice in the average: give each model once$"):
            evaluate_ensemble(twice, device="cpu")

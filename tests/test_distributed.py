"""Data-parallel training through torchrun: two CPU processes over gloo."""

import json
import subprocess
import sys

import pytest

from mnistlab.training.engine import METRICS_FILE

RECIPE = """
name = "ddp"
description = "keras-cnn, 3 short epochs, for the data-parallel test"
[model]
name = "keras-cnn"
[optimizer]
name = "adam"
lr = 2e-3
[train]
batch_size = 64
epochs = 3
log_every = 10
"""


BATCH_NORM = 'name = "fast-cnn"\nwidths = [32, 32]'
# the stem stops training after the first epoch: DDP is rebuilt for the weights still training
FREEZING = "freeze_after = { stem = 0.34 }\n"


@pytest.mark.parametrize("model, train, options", [('name = "keras-cnn"', "", []), (BATCH_NORM, FREEZING, []),
                                                   (BATCH_NORM, FREEZING, ["--compile"])],
                         ids=["keras-cnn", "batch-norm-frozen-stem", "compiled"])
def test_two_processes_train_identical_replicas(tmp_path, small_mnist, recipe_file, model, train,
                                                options):
    out = tmp_path / "run"
    recipe = RECIPE.replace('name = "keras-cnn"', model) + train
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mnistlab", "train", "--recipe", str(recipe_file(recipe)), "--data-dir",
               str(small_mnist), "--out", str(out), "--device", "cpu", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # one process reports for both
    assert "x 2 processes" in done.stdout
    # compiled for each process's shard of a batch, not for the whole batch
    assert ("not counted above: torch.compile" in done.stdout) == ("--compile" in options)
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    replicas = [r for r in records if r["event"] == "replicas"]
    assert replicas == [{**replicas[0], "processes": 2, "max_difference": 0.0}]
    test = [r for r in records if r["event"] == "test"][0]
    assert test["accuracy"] > 0.85  # 3 epochs of 2,200 images, tested on 600
    model = json.loads((out / "model.json").read_text())
    assert model["processes"] == 2 and model["complete"]

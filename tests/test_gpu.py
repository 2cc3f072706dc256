"""The engine on a CUDA GPU: steps replayed from a CUDA graph train the model as eager steps do.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_gpu.py`.
"""

import json

import pytest
import safetensors.torch
import torch

from mnistlab.checkpoint import MODEL_FILE
from mnistlab.recipebook import load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress
from mnistlab.training.state import read_training_state

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

QUIET = dict(progress=Progress(1, quiet=True))

# fp32, so that graph and eager steps can be compared closely; the 2,300 training images
# (2,400 less the validation images) in batches of 128 leave a short last batch in each epoch, which runs outside the graph
FAST = """
name = "fast-small"
description = "fast-cnn on a slice of MNIST"
[model]
name = "fast-cnn"
widths = [32, 64, 64]
[optimizer]
name = "adamw"
lr = 1e-2
weight_decay = 5e-4
[schedule]
name = "onecycle"
warmup = 0.25
[train]
batch_size = 128
epochs = 3
label_smoothing = 0.1
precision = "fp32"
log_every = 5
"""


@pytest.fixture(autouse=True)
def deterministic_cudnn():
    # cuDNN may pick a different (atomics-based) algorithm from one run to the next; pinning
    # deterministic ones lets two runs of the same steps be compared closely
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = before


def weights(run_dir):
    return safetensors.torch.load_file(str(run_dir / MODEL_FILE))


def close(a, b):
    """The same kernels in the same order: equal weights, up to floating-point reassociation."""
    for key in a:
        if a[key].is_floating_point():
            difference = (a[key] - b[key]).abs().max().item()
            assert difference <= 1e-3 * max(1.0, a[key].abs().max().item()), (key, difference)


# frozen halfway: the graph keeps the stem's backward and its learning rate goes to 0, where
# eager steps stop the backward before the stem; the weights must agree all the same
@pytest.mark.parametrize("extra", ["", "ema = 0.9\n", "freeze_after = { stem = 0.5 }\n"],
                         ids=["plain", "weight-average", "frozen-stem"])
def test_graph_steps_match_eager_steps(tmp_path, small_mnist, recipe_file, extra):
    recipe = load_recipe(recipe_file(FAST + extra))
    data = dict(seed=0, device="cuda", data_dir=str(small_mnist), **QUIET)
    graphed = Trainer(recipe, tmp_path / "graph", cuda_graphs=True, **data).run()
    eager = Trainer(recipe, tmp_path / "eager", cuda_graphs=False, **data).run()
    assert graphed.cuda_graph and graphed.capture_seconds > 0 and not eager.cuda_graph
    assert graphed.steps_done == eager.steps_done == 54
    close(weights(tmp_path / "graph"), weights(tmp_path / "eager"))
    assert graphed.test.accuracy > 0.85
    assert abs(graphed.test.accuracy - eager.test.accuracy) <= 0.01


def test_graphed_run_resumes(tmp_path, small_mnist, recipe_file):
    recipe = load_recipe(recipe_file(FAST))
    data = dict(device="cuda", data_dir=str(small_mnist), **QUIET)
    straight = Trainer(recipe, tmp_path / "straight", seed=5, **data).run()
    assert straight.cuda_graph

    def stop_at_step_25(trainer, done):
        if done == 25:
            trainer.request_stop()

    first = Trainer(recipe, tmp_path / "resumed", seed=5, on_step=stop_at_step_25, **data).run()
    assert first.interrupted and read_training_state(tmp_path / "resumed")[1]["step"] == 25
    second = Trainer.resuming(tmp_path / "resumed", device="cuda", **QUIET).run()
    assert second.steps_done == 54 and second.cuda_graph
    close(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    assert abs(second.test.accuracy - straight.test.accuracy) <= 0.01


def test_fast_recipe_on_the_gpu_reaches_99_percent(tmp_path):
    result = Trainer(load_recipe("fast"), tmp_path / "run", seed=0, device="cuda", **QUIET).run()
    assert result.cuda_graph and result.test.accuracy >= 0.985


def train_losses(run_dir):
    """The training loss of each log window, in order, from the run's metrics.jsonl."""
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r.get("event") == "train"]


def test_compiled_graph_steps_train_as_eager_steps_do(tmp_path, small_mnist, recipe_file):
    """torch.compile's kernels round differently, and Adam's first update, about lr times the
    sign of each gradient, turns a rounding difference in a near-zero gradient into an
    lr-sized weight difference (6e-3 on an H100): weights cannot be compared after a step.
    The losses can: the first step's, on the same initial weights and batch, checks the
    forward pass and the loss closely, and those of the next 19 steps (one a log window)
    check that the updates go where eager ones go; whole runs are compared by accuracy."""
    recipe = load_recipe(recipe_file(FAST))
    data = dict(seed=0, device="cuda", data_dir=str(small_mnist), **QUIET)
    stepwise = recipe.updated(train={"log_every": 1, "steps": 20})
    Trainer(stepwise, tmp_path / "compiled-steps", compile=True, **data).run()
    Trainer(stepwise, tmp_path / "eager-steps", cuda_graphs=False, **data).run()
    compiled_losses = train_losses(tmp_path / "compiled-steps")
    eager_losses = train_losses(tmp_path / "eager-steps")
    assert len(compiled_losses) == len(eager_losses) == 20
    assert abs(compiled_losses[0] - eager_losses[0]) <= 1e-3 * eager_losses[0]
    gaps = [abs(c - e) / e for c, e in zip(compiled_losses, eager_losses)]
    assert sum(gaps) / len(gaps) <= 0.05, gaps
    compiled = Trainer(recipe, tmp_path / "compiled", compile=True, **data).run()
    eager = Trainer(recipe, tmp_path / "eager", cuda_graphs=False, **data).run()
    assert compiled.compiled and compiled.cuda_graph and compiled.capture_seconds > 0
    assert compiled.steps_done == eager.steps_done == 54
    assert compiled.test.accuracy > 0.85
    assert abs(compiled.test.accuracy - eager.test.accuracy) <= 0.02


def test_every_distortion_trains_under_the_graph(tmp_path, small_mnist, recipe_file):
    """Every [augment] option inside a captured step: a copy from the host there (as elastic
    distortions once made) fails the capture, so a graphed run that trains is the check."""
    every = FAST + ("[augment]\nrotate = 10\nscale = 0.1\nshear = 10\ntranslate = 2\n"
                    "elastic_alpha = 34\nelastic_sigma = 4\n")
    recipe = load_recipe(recipe_file(every))
    data = dict(seed=0, device="cuda", data_dir=str(small_mnist), **QUIET)
    graphed = Trainer(recipe, tmp_path / "graph", **data).run()
    eager = Trainer(recipe, tmp_path / "eager", cuda_graphs=False, **data).run()
    assert graphed.cuda_graph and graphed.capture_seconds > 0 and graphed.steps_done == 54
    assert graphed.test.accuracy > 0.8
    assert abs(graphed.test.accuracy - eager.test.accuracy) <= 0.03

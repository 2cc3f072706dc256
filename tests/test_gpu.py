"""The engine on a CUDA GPU: steps replayed from a CUDA graph train the model as eager steps do.

Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_gpu.py`.
"""

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


def test_compiled_graph_steps_train_as_eager_steps_do(tmp_path, small_mnist, recipe_file):
    # torch.compile's kernels round differently, and a rounding difference can flip a near-tie
    # (see tests/test_train.py): weights are compared after one step, whole runs by accuracy
    recipe = load_recipe(recipe_file(FAST))
    data = dict(seed=0, device="cuda", data_dir=str(small_mnist), **QUIET)
    Trainer(recipe.with_length(steps=1), tmp_path / "compiled-step", compile=True, **data).run()
    Trainer(recipe.with_length(steps=1), tmp_path / "eager-step", cuda_graphs=False, **data).run()
    close(weights(tmp_path / "compiled-step"), weights(tmp_path / "eager-step"))
    compiled = Trainer(recipe, tmp_path / "compiled", compile=True, **data).run()
    eager = Trainer(recipe, tmp_path / "eager", cuda_graphs=False, **data).run()
    assert compiled.compiled and compiled.cuda_graph and compiled.capture_seconds > 0
    assert compiled.steps_done == eager.steps_done == 54
    assert compiled.test.accuracy > 0.85
    assert abs(compiled.test.accuracy - eager.test.accuracy) <= 0.02

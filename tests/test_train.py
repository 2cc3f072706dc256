"""The engine on real MNIST data (a small slice of it where whole epochs are needed)."""

import io
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from mnistlab.checkpoint import MODEL_FILE, load_model
from mnistlab.data.splits import load_split
from mnistlab.errors import MnistlabError
from mnistlab.metrics import compute_metrics
from mnistlab.models import build_model
from mnistlab.recipebook import load_recipe
from mnistlab.report.run import read_metrics
from mnistlab.training.batches import BatchPlan
from mnistlab.training.engine import METRICS_FILE, Trainer, TrainingDiverged, _epochs, train_summary
from mnistlab.training.freeze import Freezer
from mnistlab.training.progress import Progress
from mnistlab.training.state import STATE_FILE, read_training_state

QUIET = dict(progress=Progress(1, quiet=True))

SMALL = """
name = "small"
description = "strided CNN with dropout, two short epochs"
[model]
name = "strided-cnn"
dropout = 0.5
[optimizer]
name = "adam"
lr = 2e-3
[schedule]
name = "onecycle"
warmup = 0.2
[train]
batch_size = 100
epochs = 3
log_every = 5
"""


def weights(run_dir):
    return safetensors.torch.load_file(str(run_dir / MODEL_FILE))


def test_short_training_on_real_mnist_reaches_a_real_accuracy(tmp_path):
    recipe = load_recipe("keras-cnn").with_length(steps=400)
    result = Trainer(recipe, tmp_path / "run", seed=0, device="cpu", **QUIET).run()
    assert result.test.count == 10_000
    assert result.test.accuracy > 0.95  # 400 steps of 64 images: about 97% in practice
    assert result.steps_done == 400 and result.train_seconds > 0
    model, meta = load_model(tmp_path / "run")
    assert meta["metrics"]["test"]["accuracy"] == result.test.accuracy
    assert meta["model"] == {"name": "keras-cnn", "args": {}} and meta["complete"]
    events = [line for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert '"event": "test"' in events[-1] and len(events) >= 5


def test_same_seed_same_weights_on_cpu(tmp_path, small_mnist, recipe_file):
    recipe = load_recipe(recipe_file(SMALL)).with_length(steps=30)
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        Trainer(recipe, tmp_path / name, seed=seed, device="cpu", data_dir=str(small_mnist), **QUIET).run()
        runs.append(weights(tmp_path / name))
    a, b, c = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


FIRST_AND_SECOND_RUN = """
import sys, safetensors.torch, torch
from mnistlab.recipebook import load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress
recipe, data, out = load_recipe(sys.argv[1]).with_length(steps=3), sys.argv[2], sys.argv[3]
for name in ("first", "second"):
    Trainer(recipe, f"{out}/{name}", seed=7, device="cpu", data_dir=data,
            progress=Progress(1, quiet=True)).run()
first, second = (safetensors.torch.load_file(f"{out}/{n}/model.safetensors") for n in ("first", "second"))
print(all(torch.equal(first[k], second[k]) for k in first))
"""


def test_a_process_first_run_is_the_same_as_its_later_ones(tmp_path, small_mnist, recipe_file):
    """A check of oneDNN, run lazily inside the first step, drew from the global generator:
    the first run of a seed in a process (every `mnistlab train`) drew other dropout masks
    than the next ones (`reproduce`, a notebook's second run). In a process of its own, as
    the tests before it have made those checks in this one."""
    done = subprocess.run([sys.executable, "-c", FIRST_AND_SECOND_RUN, str(recipe_file(SMALL)),
                           str(small_mnist), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize("average", ["", "ema = 0.9\n", "freeze_after = { conv1 = 0.25 }\n"],
                         ids=["last-weights", "weight-average", "frozen-before-the-stop"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, small_mnist, recipe_file,
                                                                average):
    # 3 epochs of 22 steps (2,200 images), dropout, a schedule; and the same with a weight average
    recipe = load_recipe(recipe_file(SMALL + average))
    data = dict(device="cpu", data_dir=str(small_mnist), **QUIET)
    straight = Trainer(recipe, tmp_path / "straight", seed=7, **data).run()

    def stop_at_step_31(trainer, done):  # mid-epoch, as Ctrl-C would
        if done == 31:
            trainer.request_stop()

    first = Trainer(recipe, tmp_path / "resumed", seed=7, on_step=stop_at_step_31, **data).run()
    assert first.interrupted and first.steps_done == 31
    assert read_training_state(tmp_path / "resumed")[1]["step"] == 31
    second = Trainer.resuming(tmp_path / "resumed", device="cpu", **QUIET).run()
    assert second.steps_done == straight.steps_done == 66
    # its rate is the 35 steps trained since the resume, and the summary says so
    assert (first.resumed_at, second.resumed_at) == (0, 31)
    assert "images/s from step 31) on cpu" in train_summary(second)
    assert "images/s) on cpu" in train_summary(straight)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.test.accuracy == straight.test.accuracy > 0.6
    steps = [line for line in (tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()
             if '"train"' in line]
    assert len(steps) == len(set(steps))  # no step logged twice after the resume


def test_a_frozen_part_stops_training_and_the_rest_goes_on(tmp_path, small_mnist, recipe_file):
    # 2 epochs of 22 steps (2,200 images); the stem stops training after 22 (FreezeOut)
    recipe = load_recipe(recipe_file(
        'name = "frozen"\ndescription = ""\n[model]\nname = "fast-cnn"\nwidths = [32, 32]\n'
        '[optimizer]\nname = "adamw"\nlr = 1e-2\n[train]\nbatch_size = 100\nepochs = 2\n'
        'freeze_after = { stem = 0.5 }\n'))
    data = dict(device="cpu", data_dir=str(small_mnist), **QUIET)

    def stop_at_step_22(trainer, done):
        if done == 22:
            trainer.request_stop()

    Trainer(recipe, tmp_path / "half", seed=3, on_step=stop_at_step_22, **data).run()
    said = io.StringIO()
    whole = Trainer(recipe, tmp_path / "whole", seed=3, device="cpu", data_dir=str(small_mnist),
                    progress=Progress(1, live=False, out=said)).run()
    assert "the weights of stem stop training at step 22/44 (freeze_after)" in said.getvalue()
    half, end = weights(tmp_path / "half"), weights(tmp_path / "whole")
    weight_names = [name for name, _ in build_model("fast-cnn", widths=[32, 32]).named_parameters()]
    stem = [name for name in weight_names if name.startswith("stem.")]
    rest = [name for name in weight_names if not name.startswith("stem.")]
    assert len(stem) == 3 and all(torch.equal(half[k], end[k]) for k in stem)
    assert not any(torch.equal(half[k], end[k]) for k in rest)
    assert not torch.equal(half["stem.bn.running_mean"], end["stem.bn.running_mean"])  # still in use
    assert whole.test.accuracy > 0.8


def test_a_run_of_steps_counts_its_part_of_an_epoch(tmp_path, small_mnist, recipe_file):
    # 2,200 images in batches of 100: 33 steps are an epoch and a half
    recipe = load_recipe(recipe_file(
        'name = "by-steps"\ndescription = ""\n[model]\nname = "fast-cnn"\nwidths = [32, 32]\n'
        '[optimizer]\nname = "adamw"\nlr = 1e-2\n[train]\nbatch_size = 100\nsteps = 33\n'))
    said = io.StringIO()
    Trainer(recipe, tmp_path / "run", device="cpu", data_dir=str(small_mnist),
            progress=Progress(1, live=False, out=said)).run()
    assert "epoch 1/1.5  step 22/33" in said.getvalue()
    assert "epoch 1.5/1.5  step 33/33" in said.getvalue()
    # its log counts the epochs as it says them: the last validation at 1.5, not at 2, where
    # `compare --x epoch` drew it, half an epoch past the training curve's end
    records, _ = read_metrics(tmp_path / "run" / METRICS_FILE)
    validations = [(r["step"], r["epoch"]) for r in records
                   if r["event"] == "validation"]
    assert validations == [(22, 1.0), (33, 1.5)]


def test_weights_are_grouped_by_the_step_they_freeze_at():
    # an optimiser group per freezing time lets a CUDA graph stop a group by its learning rate
    model = build_model("fast-cnn", widths=[32, 64, 64])
    name_of = {id(p): name for name, p in model.named_parameters()}
    freezer = Freezer(model, {"blocks": 0.6, "stem": 0.3, "blocks.0": 0.2}, 100)
    groups = [[name_of[id(p)].rsplit(".", 1)[0] for p in group] for group in freezer.weight_groups()]
    assert groups == [["fc", "fc"],  # never frozen
                      ["blocks.0.conv", "blocks.0.bn", "blocks.0.bn"],  # at step 20, not 60
                      ["stem.conv", "stem.bn", "stem.bn"],  # 30
                      ["blocks.1.conv", "blocks.1.bn", "blocks.1.bn"]]  # 60
    assert [len(g) for g in Freezer(model, {}, 100).weight_groups()] == [11]


def test_a_diverging_loss_stops_the_run(tmp_path, small_mnist, recipe_file):
    text = SMALL.replace("lr = 2e-3", "lr = 1e6").replace('name = "adam"', 'name = "sgd"')
    with pytest.raises(TrainingDiverged, match="loss became (nan|inf)") as stopped:
        Trainer(load_recipe(recipe_file(text)), tmp_path / "run", device="cpu",
                data_dir=str(small_mnist), **QUIET).run()
    # it diverged before its first checkpoint: none is promised
    assert str(stopped.value).endswith(f"no checkpoint was saved before it (its log is in "
                                       f"{tmp_path / 'run'})")


def test_deep_mnist_as_printed_updates_only_every_hundredth_iteration(tmp_path):
    recipe = load_recipe("deep-mnist-as-printed").with_length(steps=300)
    Trainer(recipe, tmp_path / "run", device="cpu", **QUIET).run()
    tensors, _ = read_training_state(tmp_path / "run")
    adam_steps = {float(v) for k, v in tensors.items() if k.endswith(".step")}
    assert adam_steps == {3.0}  # iterations 0, 100 and 200


def test_a_run_folder_is_not_overwritten(tmp_path, small_mnist, recipe_file):
    recipe = load_recipe(recipe_file(SMALL)).with_length(steps=2)
    Trainer(recipe, tmp_path / "run", device="cpu", data_dir=str(small_mnist), **QUIET).run()
    assert (tmp_path / "run" / STATE_FILE).exists()
    with pytest.raises(MnistlabError, match="already holds a run"):
        Trainer(recipe, tmp_path / "run", device="cpu", data_dir=str(small_mnist), **QUIET).run()


def test_dropout_at_test_keeps_dropout_on_for_evaluation():
    torch.manual_seed(0)
    from mnistlab.models import build_model

    model = build_model("deep-cnn", dropout=0.5)
    data = load_split("test")
    images, labels = data.images[:200], data.labels[:200]
    plain = [compute_metrics(model, images, labels).loss for _ in range(2)]
    noisy = [compute_metrics(model, images, labels, dropout_at_test=True).loss for _ in range(2)]
    assert plain[0] == plain[1] and noisy[0] != noisy[1]
    assert model.training  # evaluation leaves the mode as it found it


def test_weight_average_is_what_gets_evaluated_and_saved(tmp_path, small_mnist, recipe_file):
    recipe = load_recipe(recipe_file(SMALL + "ema = 0.9\n")).with_length(steps=40)
    result = Trainer(recipe, tmp_path / "run", seed=3, device="cpu", data_dir=str(small_mnist),
                     **QUIET).run()
    saved = weights(tmp_path / "run")
    state, _ = read_training_state(tmp_path / "run")
    key = "conv1.weight" if "conv1.weight" in saved else next(k for k in saved if k.endswith("weight"))
    # the saved model is the average, which lags behind the last (live) weights
    assert torch.equal(saved[key], state[f"ema.{key}"])
    assert not torch.equal(saved[key], state[f"model.{key}"])
    model, _ = load_model(tmp_path / "run")
    test = load_split("test", data_dir=str(small_mnist))
    assert compute_metrics(model, test.images, test.labels).accuracy == result.test.accuracy


def test_a_run_too_short_for_its_weight_average_says_so(tmp_path, small_mnist, recipe_file):
    lines = []

    class Capture(Progress):
        def line(self, text):
            lines.append(text)

    recipe = load_recipe(recipe_file(SMALL + "ema = 0.999\n")).with_length(steps=5)
    Trainer(recipe, tmp_path / "run", device="cpu", data_dir=str(small_mnist),
            progress=Capture(1, quiet=True)).run()
    assert any("needs about 4,603 steps" in line and "has 5" in line for line in lines)


FAST_FP32 = """
name = "fast-fp32"
description = "fast-cnn in fp32, three epochs of a slice of MNIST"
[model]
name = "fast-cnn"
widths = [32, 64, 64]
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
batch_size = 128
epochs = 3
precision = "fp32"
log_every = 5
"""


def test_compiled_steps_train_as_eager_steps_do(tmp_path, small_mnist, recipe_file):
    # fp32 and SGD, so that the two can be compared closely (Adam's first steps are as large
    # for a gradient of 1e-9 as for one of 1, and a rounding difference can flip their sign)
    recipe = load_recipe(recipe_file(FAST_FP32))
    data = dict(seed=0, device="cpu", data_dir=str(small_mnist), **QUIET)
    runs = {}
    for name, steps in [("compiled-step", 1), ("eager-step", 1), ("compiled", None), ("eager", None)]:
        runs[name] = Trainer(recipe.with_length(steps=steps) if steps else recipe,
                             tmp_path / name, compile=name.startswith("compiled"), **data).run()
    compiled, eager = runs["compiled"], runs["eager"]
    assert compiled.compiled and compiled.compile_seconds > 0
    assert not eager.compiled and eager.compile_seconds == 0
    # One step gives the same weights, up to rounding. Later steps drift apart: a rounding
    # difference can flip a near-tie (say, which of two almost equal values a max-pool keeps),
    # which changes a gradient by 1e-3 at once (in float64 the two agree to 1e-8 there), and
    # training amplifies any difference (two eager runs whose initial weights differ by 1e-7
    # differ by 1e-2 after 18 steps). So whole runs are compared by their accuracy.
    a, b = weights(tmp_path / "compiled-step"), weights(tmp_path / "eager-step")
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # the compiled step sums its loss and right answers for the log itself
    logged = [train_records(tmp_path / name)[0] for name in ("compiled-step", "eager-step")]
    assert logged[0]["loss"] == pytest.approx(logged[1]["loss"], rel=1e-5) and logged[0]["loss"] > 1
    assert logged[0]["accuracy"] == logged[1]["accuracy"]
    # 2,300 training images in batches of 128: each epoch ends with a short batch, which runs
    # the uncompiled network (a compiled one would compile again for the new shape)
    assert compiled.steps_done == eager.steps_done == 54
    assert compiled.test.accuracy > 0.9
    assert abs(compiled.test.accuracy - eager.test.accuracy) <= 0.01


def train_records(run_dir) -> list[dict]:
    records, _ = read_metrics(run_dir / METRICS_FILE)
    return [record for record in records if record["event"] == "train"]


def test_epochs_are_said_whole_or_to_a_tenth_and_a_few_steps_not_as_none():
    plan = BatchPlan(55000, 128, seed=0, epochs=None, steps=5)  # 429 steps an epoch
    assert [_epochs(n, plan) for n in (429, 858, 215, 5)] == ["1", "2", "0.5", "0.01"]

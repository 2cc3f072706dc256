"""Knowledge distillation: the loss, the teachers, and a run taught by trained models."""

import pytest
import torch
import torch.nn.functional as F

import mnistlab
from mnistlab.recipebook.recipe import DistillSection
from mnistlab.training.distill import Teachers, distilled_loss

TAUGHT = """
name = "taught"
description = "a softmax regression taught by two others"
[model]
name = "softmax"
[optimizer]
name = "sgd"
lr = 0.5
[train]
batch_size = 50
steps = 60
[distill]
teachers = {teachers}
temperature = 2.0
weight = 0.5
"""


def test_the_loss_mixes_the_labels_with_the_teachers_kl_divergence():
    torch.manual_seed(0)
    logits = torch.randn(8, 10, requires_grad=True)
    taught = torch.randn(8, 10).softmax(1)
    labels = torch.randint(0, 10, (8,))
    plain = F.cross_entropy(logits, labels)
    spec = DistillSection(teachers=["t"], temperature=1.0, weight=0.0)
    assert torch.equal(distilled_loss(plain, logits, taught, spec, "mean"), plain)
    spec = DistillSection(teachers=["t"], temperature=1.0, weight=1.0)
    loss = distilled_loss(plain, logits, taught, spec, "mean")
    (gradient,) = torch.autograd.grad(loss, logits)
    # at T = 1 the divergence's gradient is the student's probabilities less the teachers', per image
    assert torch.allclose(gradient, (logits.softmax(1) - taught).detach() / 8, atol=1e-6)
    agreed = distilled_loss(plain, logits, logits.detach().softmax(1), spec, "mean")
    assert abs(agreed.item()) < 1e-6  # nothing to learn from teachers that agree
    hot = DistillSection(teachers=["t"], temperature=4.0, weight=1.0)
    summed = distilled_loss(plain * 8, logits, taught, hot, "sum")
    assert torch.allclose(summed, 8 * distilled_loss(plain, logits, taught, hot, "mean"))


def test_teachers_average_their_softened_probabilities():
    one, two = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    teachers = Teachers([one, two], temperature=3.0)
    expected = ((one(x) / 3).softmax(1) + (two(x) / 3).softmax(1)) / 2
    assert torch.allclose(teachers(x), expected) and not teachers(x).requires_grad
    assert not any(p.requires_grad for p in teachers.parameters())


def test_a_run_taught_by_two_trained_models(tmp_path, small_mnist, recipe_file):
    runs = [mnistlab.train("softmax-regression", steps=60, seed=s, device="cpu",
                           out=tmp_path / f"t{s}", data_dir=small_mnist, quiet=True, report=False)
            for s in (0, 1)]
    recipe = recipe_file(TAUGHT.format(teachers=[str(r.run_dir) for r in runs]))
    taught = mnistlab.train(recipe, seed=2, device="cpu", out=tmp_path / "taught",
                            data_dir=small_mnist, quiet=True, report=False)
    untaught = mnistlab.train(mnistlab.recipe(recipe, distill={"teachers": []}), seed=2,
                              device="cpu", out=tmp_path / "untaught", data_dir=small_mnist,
                              quiet=True, report=False)
    assert taught.test_accuracy > 0.7
    a, b = taught.model.module.state_dict(), untaught.model.module.state_dict()
    assert not torch.equal(a["fc.weight"], b["fc.weight"])  # the teachers changed what it learnt
    assert taught.model._meta["recipe"]["distill"]["teachers"] == [str(r.run_dir) for r in runs]


def test_teachers_that_cannot_teach_are_refused_before_anything_is_written(tmp_path, small_mnist,
                                                                           recipe_file):
    recipe = recipe_file(TAUGHT.format(teachers=[str(tmp_path / "missing")]))
    with pytest.raises(mnistlab.CheckpointError, match="no such checkpoint"):
        mnistlab.train(recipe, out=tmp_path / "run", data_dir=small_mnist, quiet=True)
    assert not (tmp_path / "run").exists()
    for section, words in [({"temperature": 0}, "temperature: expected a number above 0"),
                           ({"weight": 1.5}, "weight: expected a number from 0 to 1"),
                           ({"teachers": ["x"] * 33}, "at most 32 checkpoints")]:
        with pytest.raises(mnistlab.RecipeError, match=words):
            mnistlab.recipe("quick", distill=section)

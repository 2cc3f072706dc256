"""How long a recipe's run will take on this machine, from a few of its steps timed here.

The estimate runs the recipe's real training step (model, optimiser, batch size, precision) on
random images, and its evaluation on a batch of them, so it knows this machine's speed and
the recipe's cost without any table of figures that another machine would make wrong. What it
leaves out: loading the data (a second or so) and the reports written after training.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mnistlab.data.splits import validation_size
from mnistlab.device import resolve_device, wait_for
from mnistlab.metrics import compute_metrics
from mnistlab.models import build_model, weights_layout
from mnistlab.recipebook import Recipe
from mnistlab.training.batches import BatchPlan
from mnistlab.training.engine import use_bf16
from mnistlab.training.optim import make_optimizer
from mnistlab.training.step import Totals, TrainStep

WARMUP_STEPS = 3  # oneDNN builds its kernels and the allocator its pools on the first steps
TIMED_STEPS = 8
EVAL_IMAGES = 1024
MNIST_TRAIN, MNIST_TEST = 60_000, 10_000  # the images in MNIST's two files


@dataclass(frozen=True)
class Estimate:
    recipe: str
    steps: int  # the updates the run makes
    step_seconds: float  # one update, timed
    eval_images: int  # the images of the validations at each epoch's end and of the test
    image_seconds: float  # evaluating one image, timed on a batch

    @property
    def seconds(self) -> float:
        return self.steps * self.step_seconds + self.eval_images * self.image_seconds


def estimate(recipe: Recipe, device: str = "auto") -> Estimate:
    """Time a few of `recipe`'s training steps and an evaluation on random images on `device`,
    and scale them to the recipe's whole run (MNIST's split sizes; 10 classes)."""
    where = resolve_device(device)
    train = recipe.train
    validation = validation_size(MNIST_TRAIN)
    images = MNIST_TRAIN if train.split == "train-full" else MNIST_TRAIN - validation
    plan = BatchPlan(images, train.batch_size, seed=0, epochs=train.epochs, steps=train.steps)
    updates = math.ceil(plan.total_steps / recipe.quirks.update_every)
    model = build_model(recipe.model.name, init=recipe.model.init, **recipe.model.args)
    bf16 = use_bf16(train.precision, where)
    model = model.to(where, memory_format=weights_layout(model, where, bf16=bf16))
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (max(train.batch_size, EVAL_IMAGES), 28, 28), dtype=torch.uint8,
                         generator=generator).to(where)
    labels = torch.randint(0, 10, (len(data),), generator=generator).to(where)
    batch = torch.arange(train.batch_size, device=where)
    step = TrainStep(model, make_optimizer(model, recipe.optimizer), data, labels, recipe,
                     Totals(where), lambda _: (batch, recipe.optimizer.lr),
                     steps=plan.total_steps, batch_size=train.batch_size,
                     bf16=bf16)
    step_seconds = _timed(lambda: step(0), where, TIMED_STEPS)
    validations = math.ceil(plan.total_steps / plan.steps_per_epoch) if train.split == "train" else 0
    image_seconds = _timed(lambda: compute_metrics(model, data[:EVAL_IMAGES], labels[:EVAL_IMAGES]),
                           where, 2) / EVAL_IMAGES
    return Estimate(recipe.name, updates, step_seconds, validations * validation + MNIST_TEST,
                    image_seconds)


def _timed(work, device: torch.device, times: int) -> float:
    """Seconds one call of `work` takes: the median of `times` calls after a warm-up."""
    for _ in range(WARMUP_STEPS):
        work()
    seconds = []
    for _ in range(times):
        wait_for(device)
        start = time.perf_counter()
        work()
        wait_for(device)
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]

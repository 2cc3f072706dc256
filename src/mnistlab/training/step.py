"""One optimisation step: a batch's images and labels in, the model's weights updated.

On the CPU, and wherever a graph cannot be used, the step runs eagerly from Python. On a CUDA
GPU it is captured once into a CUDA graph and replayed for every later step: a small network's
step is about a hundred kernels of a few microseconds each, and launching them one by one from
Python leaves the GPU idle most of the time, while one replay launches them all at once.

A graph replays the exact memory addresses it was captured with. So the batches and learning
rates of the next steps wait on the device in fixed tensors, uploaded a chunk of steps at a
time (`DeviceFeed`), and the replayed step reads its own and moves a counter on: between two
replays the host launches nothing else. The optimiser reads each group's rate on the device,
and the training loss and accuracy are summed into fixed tensors. A batch of another size (an
epoch's last, smaller one) runs eagerly.

With `compile`, the batch's gather, the forward pass and the loss go through torch.compile
(training/compiling.py), which fuses their elementwise kernels (and the backward's) into fewer,
larger ones; inside a CUDA graph that leaves fewer kernels to replay, and there the optimiser's
update is compiled too (optim.compiled_adam_step). Compiling takes seconds, on the first step:
that step's time is set apart as compile time. A batch of another size runs the uncompiled
network, which would otherwise compile a second time for the new shape.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.data.splits import as_input
from mnistlab.device import sum_dtype, wait_for
from mnistlab.errors import MnistlabError
from mnistlab.recipebook import Recipe
from mnistlab.training.augment import random_distortion
from mnistlab.training.compiling import compile_step_part
from mnistlab.training.distill import Teachers, distilled_loss
from mnistlab.training.ema import WeightAverage
from mnistlab.training.optim import compiled_adam_step

# eager steps before the capture: they create the optimiser's state and let cuDNN and cuBLAS
# initialise lazily, which a capture cannot do. One does it all; each costs 5 to 10 ms on an
# H200 where a replayed `fast` step costs 0.14 ms, and `fast --compile` trained in 0.046 s
# with one, 0.061 s with two and 0.065 s with three (docs/BENCHMARKS.md)
WARMUP_STEPS = 1


class Totals:
    """The training loss and correct answers summed on the device since the last read, so
    that no step waits for the host."""

    def __init__(self, device: torch.device):
        dtype = sum_dtype(device)
        # one-element, not 0-d: PyTorch 2.13's torch.compile drops an in-place add into a 0-d
        # float64 tensor on the CPU, which step_loss makes when compiled
        self.loss = torch.zeros(1, dtype=dtype, device=device)  # summed over images
        self.correct = torch.zeros(1, dtype=dtype, device=device)

    def add(self, loss: torch.Tensor, images: int, correct: torch.Tensor) -> None:
        """A batch's loss (its sum, or its mean over `images` images) and its right answers."""
        self.loss.add_(loss, alpha=images)  # one operator where loss * images, then += took two
        self.correct += correct

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two sums (copies), then zero, in place: a captured graph keeps adding to them."""
        values = self.loss.clone(), self.correct.clone()
        self.loss.zero_(), self.correct.zero_()
        return values


Feed = Callable[[int], tuple[torch.Tensor, float]]  # a step's batch indices and learning rate


class DeviceFeed:
    """The batch indices and learning rates of the next steps, uploaded together, and which
    step is next, all on the device.

    A step replayed from a CUDA graph reads its batch and rate here and moves the counter on,
    so the host launches nothing between two replays, where it launched a fill of each
    parameter group's rate and a copy of the batch's indices: on an H200 the median `fast
    --compile` replay went from 140-144 us to 137-139 us. Each group's rate is the step's rate
    times its gate, 0 once the group froze."""

    CHUNK = 64  # steps uploaded at once: few enough that the first steps start at once

    def __init__(self, feed: Feed, *, steps: int, batch_size: int, groups: int,
                 device: torch.device):
        self.feed, self.steps, self.batch_size = feed, steps, batch_size
        self.rows = torch.zeros(self.CHUNK, batch_size, dtype=torch.int64, device=device)
        self.rates = torch.zeros(self.CHUNK, dtype=torch.float32, device=device)
        self.slot = torch.zeros(1, dtype=torch.int64, device=device)  # the next step's row
        self.gates = torch.ones(groups, dtype=torch.float32, device=device)
        self.lrs = torch.zeros(groups, dtype=torch.float32, device=device)  # this step's, per group
        self._first, self._batches = 0, []  # the chunk's first step, and (indices, lr) of each

    def batch(self, step: int) -> tuple[torch.Tensor, float]:
        """`feed(step)`, once its chunk is on the device (uploaded now if it is not)."""
        if not self._first <= step < self._first + len(self._batches):
            self._upload(step)
        return self._batches[step - self._first]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What `fed_batch` reads and writes."""
        return self.rows, self.rates, self.gates, self.lrs, self.slot

    def skip(self, lr: float) -> None:
        """A step trained outside the graph (a short batch): its rate, and the counter past it."""
        torch.mul(self.gates, lr, out=self.lrs)
        self.slot += 1

    def _upload(self, step: int) -> None:
        self._first = step
        self._batches = [self.feed(s) for s in range(step, min(step + self.CHUNK, self.steps))]
        full = [i if len(i) == self.batch_size else self.rows[0] for i, _ in self._batches]
        count = len(full)
        self.rows[:count].copy_(torch.stack(full))
        # from pinned memory, so that the host goes on without waiting for the queued steps
        rates = torch.tensor([lr for _, lr in self._batches], pin_memory=self.rates.is_cuda)
        self.rates[:count].copy_(rates, non_blocking=True)
        self.slot.zero_()


def fed_batch(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, rates: torch.Tensor,
              gates: torch.Tensor, lrs: torch.Tensor,
              slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch a DeviceFeed's counter points at, its groups' rates written into `lrs`, and the
    counter moved on: all on the device, with no value read back to the host."""
    lrs.copy_(rates.index_select(0, slot) * gates)
    indices = rows.index_select(0, slot).view(-1)
    slot.add_(1)
    return training_batch(images, labels, indices)


class TrainStep:
    """`step(n)` trains step `n` (0-based) on the images of the training split at its batch's
    indices, with its learning rate: `feed(n)` gives both. It returns them, for the log.

    `batch_size` is the number of images a full batch gives this process (its shard, under
    torchrun): the shape that the graph is captured for and torch.compile compiles for."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 labels: torch.Tensor, recipe: Recipe, totals: Totals, feed: Feed, *, steps: int,
                 batch_size: int, bf16: bool, loss_scale: float = 1, cuda_graph: bool = False,
                 compile: bool = False, ema: WeightAverage | None = None,
                 teachers: Teachers | None = None):
        self.net, self.optimizer = net, optimizer
        self.teachers = teachers  # where the recipe distils: the loss learns their answers too
        self.batch_size = batch_size
        self.images, self.labels = images, labels
        self.recipe, self.totals, self.feed = recipe, totals, feed
        self.bf16, self.loss_scale = bf16, loss_scale
        self.cuda_graph = cuda_graph
        self.ema = ema
        self.capture_seconds = 0.0  # spent capturing the graph (or graphs), not training
        self.compile_seconds = 0.0  # with torch.compile, the steps that compiled (the first, and the
        # first after a part of the model froze): mostly compiling
        self.compile = compile
        self._compiled = False  # whether a compiled step has run since the network last changed
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_steps = 0
        self._device_feed: DeviceFeed | None = None
        self._side_stream: torch.cuda.Stream | None = None  # where the warm-up steps run
        if cuda_graph:
            groups = optimizer.param_groups
            self._device_feed = DeviceFeed(feed, steps=steps, batch_size=batch_size,
                                           groups=len(groups), device=images.device)
            # each group's rate, read on the device by the capturable update: a group whose
            # weights froze gets a rate of 0 (weights_frozen)
            for group, lr in zip(groups, self._device_feed.lrs):
                group["lr"] = lr

    def __call__(self, step: int) -> tuple[torch.Tensor, float]:
        if not self.cuda_graph:
            indices, lr = self.feed(step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._compute(indices)
            return indices, lr
        indices, lr = self._device_feed.batch(step)
        if len(indices) != self.batch_size:  # a short last batch: not the captured shape
            self._device_feed.skip(lr)
            with _outside_graph():
                self._compute(indices)
        elif self._graph is not None:
            self._graph.replay()
        elif self._eager_steps < WARMUP_STEPS:
            self._eager_steps += 1
            self._warm_up()
        else:
            self._capture()
            self._graph.replay()  # capturing records the step; it does not run it
        return indices, lr

    def weights_frozen(self, net: nn.Module) -> None:
        """Some weights no longer train (training/freeze.py); run `net`, which knows it, from the
        next step on.

        A captured graph is kept, backward and all: the frozen weights' groups get a learning
        rate of 0, which leaves them as they are (AdamW's weight decay is scaled by it too), and
        their gradients, still computed, go unused. Capturing anew would cost eager warm-up steps,
        on a GPU more than the backward saved. Otherwise what was compiled for the old backward
        is dropped: the next steps compile again, timed apart as the first ones were."""
        if self.cuda_graph:
            for gate, group in zip(self._device_feed.gates, self.optimizer.param_groups):
                if not _trains(group):
                    gate.zero_()
            if self._graph is not None:
                return
        self.net = net
        self._graph, self._graph_grads, self._eager_steps = None, None, 0
        self._compiled = False

    def _compute(self, indices: torch.Tensor | None) -> None:
        """One step on the batch at `indices`, or (None) on the one the device feed holds."""
        compiled = self.compile and (indices is None or len(indices) == self.batch_size)
        if not compiled or self._compiled:
            self._train_on(indices, compiled)
            return
        # the first compiled step compiles the forward pass, then the backward at its first
        # call: timed as compile time, and a failure explained
        device = self.images.device
        wait_for(device)
        start = time.perf_counter()
        with _compile_failures():
            self._train_on(indices, compiled)
        wait_for(device)
        self.compile_seconds += time.perf_counter() - start
        self._compiled = True

    def _train_on(self, indices: torch.Tensor | None, compiled: bool) -> None:
        recipe, train = self.recipe, self.recipe.train
        if indices is None:
            x, y = (compiled_fed_batch() if compiled else fed_batch)(
                self.images, self.labels, *self._device_feed.tensors())
        else:
            x, y = (compiled_training_batch() if compiled else training_batch)(
                self.images, self.labels, indices)
        if recipe.augment.enabled:
            x = random_distortion(x, recipe.augment)
        # distilling, the loss summed is the one the teachers shape, after the step's loss
        totals = self.totals if self.teachers is None else None
        # a graph cannot hold autocast's cache of bf16 weights, which outlives the step
        loss, logits, correct = (compiled_step_loss() if compiled else step_loss)(
            self.net, x, y, totals, bf16=self.bf16, autocast_cache=not self.cuda_graph,
            label_smoothing=train.label_smoothing, reduction=train.loss_reduction)
        if self.teachers is not None:
            loss = distilled_loss(loss, logits, self.teachers(x), recipe.distill,
                                  train.loss_reduction)
            self.totals.add(loss.detach(), _images_per_loss(len(y), train.loss_reduction), correct)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.loss_scale if self.loss_scale != 1 else loss).backward()
        if compiled and self.cuda_graph:  # the update compiled too (it is Adam's or AdamW's)
            compiled_adam_step(self.optimizer)
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update()

    def _warm_up(self) -> None:
        # PyTorch's rule for graphs: warm up on a side stream, as the capture will run on one;
        # the same one each time, as cuBLAS sets up its workspace once for each stream
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        side = self._side_stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _outside_graph():
            self._compute(None)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> None:
        start = time.perf_counter()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._compute(None)
        torch.cuda.synchronize()
        # The gradients the graph writes live in its private memory; keep them referenced, so
        # that an eager step (which replaces .grad) never hands their memory back.
        self._graph_grads = [p.grad for p in self.net.parameters()]
        self._graph = graph
        self.capture_seconds += time.perf_counter() - start


def _images_per_loss(images: int, reduction: str) -> int:
    """What a batch's loss is multiplied by to be a sum over its images."""
    return 1 if reduction == "sum" else images


def _trains(group: dict) -> bool:
    """Whether an optimiser's parameter group has a weight that still trains."""
    return any(p.requires_grad for p in group["params"])


def loss_and_logits(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bf16: bool,
                    autocast_cache: bool, label_smoothing: float,
                    reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    # no autocast at all in float32: PyTorch refuses even a disabled one for a device type it
    # has no autocast for
    with (torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=autocast_cache)
          if bf16 else contextlib.nullcontext()):
        logits = net(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction=reduction)
    return loss, logits


def training_batch(images: torch.Tensor, labels: torch.Tensor,
                   indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (as the network takes them) and labels at `indices`."""
    # index_select copies whole rows, where indexing (images[indices]) gathers element by element:
    # 128 MNIST images took 0.14 ms a step that way in the OpenGenus CNN's training on 2 CPU cores
    return (as_input(images.index_select(0, indices), channels_last=True),
            labels.index_select(0, indices))


@functools.cache
def compiled_training_batch():
    """`training_batch` compiled: the gather, the conversion to float and the scaling in one
    kernel where eager PyTorch takes three (on an H100, a few microseconds each)."""
    return compile_step_part(training_batch)


def step_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, totals: Totals | None,
              **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`loss_and_logits`, and how many of the batch the network got right, both added to
    `totals` where given (compiled, the count and the sums fuse into the loss's kernels)."""
    loss, logits = loss_and_logits(net, x, y, **options)
    correct = (logits.argmax(1) == y).sum()
    if totals is not None:
        totals.add(loss.detach(), _images_per_loss(len(y), options["reduction"]), correct)
    return loss, logits, correct


@functools.cache
def compiled_fed_batch():
    """`fed_batch` compiled: reading the feed, the gather, the conversion and the scaling in
    one or two kernels."""
    return compile_step_part(fed_batch)


@functools.cache
def compiled_step_loss():
    """`step_loss` through torch.compile, made once: every later network of the same shape
    (the next random seed's, a resumed run's) reuses what the first one compiled."""
    return compile_step_part(step_loss)


@contextlib.contextmanager
def _compile_failures():
    """torch.compile fails in many ways a user can only work around (no C++ compiler for the
    CPU, no Triton for the GPU, an unsupported operator): say so in one line."""
    try:
        yield
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        raise MnistlabError(f"torch.compile failed ({type(e).__name__}: {first_line}); "
                            "train without --compile") from e


@contextlib.contextmanager
def _outside_graph():
    # the capturable optimiser warns each time it runs outside a graph: these steps must
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        yield


def can_use_cuda_graph(device: torch.device, processes: int, recipe: Recipe) -> bool:
    """Graphs on a single CUDA GPU, for recipes that take a step every time with an optimiser
    whose learning rate can live on the device (Adam and AdamW; PyTorch's SGD and our Keras
    RMSprop read it on the host)."""
    return (device.type == "cuda" and processes == 1 and recipe.quirks.update_every == 1
            and recipe.optimizer.name in ("adam", "adamw"))

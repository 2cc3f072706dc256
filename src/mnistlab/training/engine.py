"""One training engine for every recipe.

The whole training split lives on the device as one uint8 tensor; a batch is an index into it,
turned into floats on the fly. The loop reads nothing back from the device between log points,
so a GPU is never left waiting on Python.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import checkpoint
from mnistlab.cpu_memory import keep_freed_memory
from mnistlab.data.splits import Split, load_split
from mnistlab.device import resolve_device, wait_for
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_text, read_limited
from mnistlab.metrics import Metrics, compute_metrics
from mnistlab.models import build_model, weights_layout
from mnistlab.recipebook import Recipe, recipe_from_dict
from mnistlab.recipebook.recipe import MAX_STEPS, NAME_PATTERN, NAME_RULE
from mnistlab.training import distributed, rundir, state
from mnistlab.training.batches import BatchPlan
from mnistlab.training.distill import load_teachers
from mnistlab.training.ema import WeightAverage
from mnistlab.training.freeze import Freezer
from mnistlab.training.optim import lr_factor, make_optimizer
from mnistlab.training.progress import Progress, format_duration
from mnistlab.training.start import Start, describe, plan_start, start_from
from mnistlab.training.step import Totals, TrainStep, can_use_cuda_graph

METRICS_FILE = rundir.METRICS_FILE
# What a resumed run reads back of its log. A record takes at most about 200 bytes, and a run
# writes fewer than MAX_LOG_RECORDS of them (checked before its first step), so this holds any
# log mnistlab writes; the longest shipped recipe writes about 200 records (40 kB).
MAX_METRICS_BYTES = 64 << 20
MAX_LOG_RECORDS = MAX_METRICS_BYTES // 256


class TrainingDiverged(MnistlabError):
    pass


@dataclass(kw_only=True)
class RunResult:
    run_dir: Path
    recipe: Recipe
    device: str
    steps_done: int
    total_steps: int
    train_seconds: float  # first step to last, without data loading, validation or checkpoints
    images_per_s: float  # this session's: since the resumed step where a run was resumed
    test: Metrics | None  # None when the run was interrupted
    validation: Metrics | None
    setup_seconds: float = 0.0  # data loading and model building, before the first step
    processes: int = 1  # data-parallel processes (torchrun)
    is_main: bool = True  # the process that prints and writes
    capture_seconds: float = 0.0  # capturing the CUDA graph, not counted in train_seconds
    cuda_graph: bool = False  # whether the steps were replayed from a CUDA graph
    compile_seconds: float = 0.0  # torch.compile's, with the first step, not in train_seconds
    compiled: bool = False  # whether the forward pass and loss went through torch.compile
    resumed_at: int = 0  # the step this session began at: 0, or where a resumed run had stopped

    @property
    def interrupted(self) -> bool:
        return self.test is None


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast: asked for, or "auto" on hardware that has it;
    never on a device PyTorch has no autocast for (float32 there, whatever was asked)."""
    if not _has_autocast(device.type):
        return False
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return _native_bf16(device.type)
    try:  # x86 CPUs with AVX-512 BF16 or AMX run bfloat16 natively; elsewhere it is emulated
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_autocast(device_type: str) -> bool:
    available = getattr(torch.amp, "is_autocast_available", None)  # PyTorch 2.4 has it
    return device_type in ("cpu", "cuda") if available is None else available(device_type)


def _native_bf16(device_type: str) -> bool:
    """Whether another accelerator computes bfloat16 natively, as its PyTorch module says
    (torch.xpu does; torch.mps, for one, does not say: float32 there). An emulated bfloat16
    would be slower than float32, so emulation, where the module counts it, does not count."""
    supported = getattr(getattr(torch, device_type, None), "is_bf16_supported", None)
    if supported is None:
        return False
    if "including_emulation" in inspect.signature(supported).parameters:
        return bool(supported(including_emulation=False))
    return bool(supported())


def new_run_dir(recipe_name: str, parent: Path = Path("runs")) -> Path:
    """A new folder's path inside `parent`, named after the recipe and the time. The name must
    be one plain folder name (recipes' names are checked on loading): `../x` or `/tmp/x` would
    put the run outside `parent`."""
    if not NAME_PATTERN.fullmatch(recipe_name):
        raise MnistlabError(f"{recipe_name!r} cannot name a run folder: expected {NAME_RULE}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = parent / f"{recipe_name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = parent / f"{recipe_name}-{stamp}-{n}"
    return path


@dataclass(kw_only=True)
class _Loop:
    """What the training loop carries from one step to the next."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    ema: WeightAverage | None
    freezer: Freezer
    train_step: TrainStep
    window: _Window
    progress: Progress
    validation: Split | None
    start_step: int  # where this session began: 0, or where the resumed run had stopped
    steps_done: int
    earlier_train_seconds: float  # a resumed run's, before this session
    train_seconds: float  # the run's training time, as its last checkpoint recorded it
    session_start: float = 0.0  # when this session's steps began (time.perf_counter)
    images_done: int = 0  # by this process, in this session
    paused: float = 0.0  # time spent validating and saving, which is not training time
    lr: float = 0.0  # the last update's learning rate
    last_loss: float | None = None  # the last window's training loss and accuracy
    last_acc: float | None = None
    last_validation: Metrics | None = None

    def final(self) -> torch.nn.Module:
        """What is validated, tested and saved: the weight average where the recipe keeps one."""
        return self.ema.current() if self.ema is not None else self.model


class Trainer:
    """Trains one recipe into one run folder; `request_stop` ends it cleanly at the next step."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, seed: int = 0, device: str = "auto",
                 data_dir: str | None = None, progress: Progress | None = None,
                 on_step: Callable[[Trainer, int], None] | None = None,
                 on_log: Callable[[dict[str, Any]], None] | None = None,
                 cuda_graphs: bool = True, compile: bool = False, init: str | None = None,
                 resume_from: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
                 continue_with: str | None = None):
        self.recipe = recipe
        self.init = init  # a checkpoint to start from (fine-tuning): start.py
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.world, self.device = distributed.join(resolve_device(device))
        self.data_dir = data_dir
        # one process speaks and writes for all of them
        self.progress = progress if self.world.is_main else Progress(1, quiet=True)
        self.on_step = on_step
        self.on_log = on_log  # sees every record written to metrics.jsonl (TensorBoard, say)
        self.cuda_graphs = cuda_graphs  # on a GPU, replay each step from a CUDA graph
        self.compile = compile  # torch.compile the forward pass and loss
        self._resume_from = resume_from  # a run folder's training state: (tensors, metadata)
        # the command a stopped run tells the user to continue it with: `train --resume` unless
        # a caller that owns the run says otherwise ("" for none: a bench's runs are temporary)
        self.continue_with = (f"mnistlab train --resume {shlex.quote(str(run_dir))}"
                              if continue_with is None else continue_with)
        self._stop = threading.Event()

    @classmethod
    def resuming(cls, run_dir: Path, **kwargs: Any) -> Trainer:
        saved = state.read_training_state(run_dir)
        meta = saved[1]
        recipe = recipe_from_dict(meta["recipe"], f"{run_dir}/{state.STATE_FILE}")
        return cls(recipe, run_dir, seed=meta["seed"], data_dir=meta.get("data_dir"),
                   resume_from=saved, **kwargs)

    def _split(self, name: str) -> Split:
        """A split of the run's data on its device, its labels indexing the model's classes
        (a fine-tuned model may keep classes the data lacks)."""
        return load_split(name, self.recipe.data.dataset, self.data_dir, self.device,
                          classes=self._start.class_names)

    def _plan_start(self) -> Start:
        if self._resume_from:  # its model's classes as recorded; the weights are in the state
            saved = self._resume_from[1]
            start = plan_start(self.recipe, self.data_dir, recorded=saved.get("class_names"))
            start.record = saved.get("init") if isinstance(saved.get("init"), dict) else None
            return start
        return plan_start(self.recipe, self.data_dir, self.init)

    @property
    def _classes(self) -> int:
        return len(self._start.class_names)

    def request_stop(self) -> None:
        self._stop.set()

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._started = time.perf_counter()
        # the data first (its classes set the model's), then the model it starts from and
        # the teachers: any of them that cannot be loaded leaves no run folder behind
        self._start = self._plan_start()
        self.recipe = self._start.recipe  # with the model this run trains (its classes)
        train_cfg = self.recipe.train
        train = self._split(train_cfg.split)
        validation = self._split("validation") if train_cfg.split == "train" else None
        if train_cfg.batch_size > len(train):
            raise MnistlabError(f"batch size {train_cfg.batch_size} is larger than the "
                                f"{len(train)} training images")
        self._teachers = load_teachers(self.recipe.distill, self._start.class_names, self.device)
        self._check_length(len(train))
        if self.device.type == "cpu":
            keep_freed_memory()  # each step reuses the last one's memory: no page faults
        self._prepare_run_dir()
        try:
            return self._run(train, validation)
        finally:
            if hasattr(self, "_metrics"):
                self._metrics.close()
            if self._lock is not None:
                self._lock.release()

    def _check_length(self, images: int) -> None:
        """Refuse a run longer than mnistlab trains (recipes bound epochs and steps, not their
        product), or one that would log more records than a resume reads back."""
        train_cfg = self.recipe.train
        plan = BatchPlan(images, train_cfg.batch_size, seed=self.seed, epochs=train_cfg.epochs,
                         steps=train_cfg.steps)
        total = plan.total_steps
        if total > MAX_STEPS:
            raise MnistlabError(f"the run would take {total:,} steps ({train_cfg.epochs:,} epochs "
                                f"of {plan.steps_per_epoch:,}), more than the {MAX_STEPS:,} "
                                "mnistlab trains: train fewer epochs or larger batches")
        # a record at each log point and two at each epoch's end (training, validation), a few
        # at the end
        records = total // train_cfg.log_every + 2 * math.ceil(total / plan.steps_per_epoch) + 4
        if records > MAX_LOG_RECORDS:
            raise MnistlabError(f"the run would log {records:,} records to {METRICS_FILE}, more "
                                f"than the {MAX_LOG_RECORDS:,} that --resume reads back: raise "
                                f"[train] log_every (now {train_cfg.log_every:,})")

    def _run(self, train: Split, validation: Split | None) -> RunResult:
        loop = self._set_up(train, validation)
        self._train(loop)
        return self._finish(loop)

    # ---- setup -----------------------------------------------------------------------------

    def _set_up(self, train: Split, validation: Split | None) -> _Loop:
        """The model, its optimiser and everything else the loop carries, restored from the
        saved training state when resuming."""
        recipe, train_cfg, world = self.recipe, self.recipe.train, self.world
        torch.manual_seed(self.seed)  # the model's initial weights, then dropout
        model = build_model(recipe.model.name, init=recipe.model.init, **recipe.model.args)
        start_from(model, self._start)  # where fine-tuning, the trained model's weights
        bf16 = use_bf16(train_cfg.precision, self.device)
        model = model.to(self.device, memory_format=weights_layout(model, self.device, bf16=bf16))
        cuda_graph = self.cuda_graphs and can_use_cuda_graph(self.device, world.size, recipe)
        net = _wrapped(model, world)
        plan = BatchPlan(len(train), train_cfg.batch_size, seed=self.seed, epochs=train_cfg.epochs,
                         steps=train_cfg.steps, device=self.device)
        ema = WeightAverage(model, train_cfg.ema) if train_cfg.ema else None
        freezer = Freezer(model, train_cfg.freeze_after, plan.total_steps)
        optimizer = make_optimizer(model, recipe.optimizer, capturable=cuda_graph,
                                   groups=freezer.weight_groups())
        start_step, train_seconds = self._restore(model, optimizer, ema, plan.total_steps)
        damaged = self._open_metrics(keep_until=start_step)
        progress = self.progress or Progress(plan.total_steps)
        progress.total = plan.total_steps
        if damaged:
            progress.line(f"note: dropped {damaged:,} damaged line{'s' * (damaged > 1)} of "
                          f"{self.run_dir / METRICS_FILE}")
        self._announce(progress, plan, start_step, bf16=bf16, cuda_graph=cuda_graph, ema=ema)
        # a summed loss must stay the sum over the whole batch once DDP averages the shards' gradients
        loss_scale = world.size if train_cfg.loss_reduction == "sum" else 1
        window = _Window(self.device)
        train_step = TrainStep(net, optimizer, train.images, train.labels, recipe, window.totals,
                               functools.partial(self._batch, plan), steps=plan.total_steps,
                               batch_size=len(distributed.shard(torch.arange(train_cfg.batch_size), world)),
                               bf16=bf16, loss_scale=loss_scale, cuda_graph=cuda_graph,
                               compile=self.compile, ema=ema, teachers=self._teachers)
        return _Loop(model=model, optimizer=optimizer, plan=plan, ema=ema, freezer=freezer,
                     train_step=train_step, window=window, progress=progress,
                     validation=validation, start_step=start_step, steps_done=start_step,
                     earlier_train_seconds=train_seconds, train_seconds=train_seconds)

    def _restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 ema: WeightAverage | None, total_steps: int) -> tuple[int, float]:
        """Where a resumed run stopped: its step and training seconds (0 and 0.0 for a new one)."""
        if self._resume_from is None:
            return 0, 0.0
        tensors, meta = self._resume_from
        state.restore_training_state(tensors, meta, model, optimizer, str(self.run_dir),
                                     total_steps=total_steps)
        if ema is not None:
            ema.restore(tensors, str(self.run_dir))
        return meta["step"], meta["train_seconds"]

    def _announce(self, progress: Progress, plan: BatchPlan, start_step: int, *, bf16: bool,
                  cuda_graph: bool, ema: WeightAverage | None) -> None:
        recipe, total = self.recipe, plan.total_steps
        how = [str(self.device)] + [name for name, used in
                                    [("bf16", bf16), ("CUDA graph", cuda_graph),
                                     ("torch.compile", self.compile)] if used]
        if start_step == total:  # resuming a finished run: only its test is left
            progress.line(f"{self.run_dir} has trained all {total:,} steps: testing it again")
        else:
            progress.line(f"{'resuming' if start_step else 'training'} {recipe.name} ({recipe.model.name}) "
                          f"on {', '.join(how)}, seed {self.seed}, into {self.run_dir}"
                          + (f" at step {start_step}/{total}" if start_step else ""))
        if describe(self._start) and not start_step:
            progress.line(describe(self._start))
        if ema is not None and total < ema.steps_to_forget():
            progress.line(f"note: the weight average (ema = {recipe.train.ema}) starts from the initial "
                          f"weights and needs about {ema.steps_to_forget():,} steps to forget them; "
                          f"this run has {total:,}, so the model it tests and saves will "
                          "be poor (set ema = 0 for short runs)")

    # ---- the loop --------------------------------------------------------------------------

    def _train(self, loop: _Loop) -> None:
        """The steps from where the run stands to its end, or to the step where it is asked to
        stop. Each step is cheap on purpose: a small model's step takes milliseconds on a CPU."""
        plan = loop.plan
        log_every, update_every = self.recipe.train.log_every, self.recipe.quirks.update_every
        loop.session_start = time.perf_counter()
        loop.model.train()
        with _stop_on_sigint(self):
            for step in range(loop.start_step, plan.total_steps):
                if frozen := loop.freezer.freeze_due(step):
                    self._freeze(loop, frozen)
                if step % update_every == 0:  # Deep MNIST as printed skips the others entirely
                    self._train_one(loop, step)
                done = loop.steps_done = step + 1
                epoch_end = plan.epoch_ends(step)
                log_point = done % log_every == 0 or epoch_end
                if log_point and loop.window.images:
                    self._log_window(loop)
                elapsed = time.perf_counter() - loop.session_start - loop.paused
                self._show_progress(loop, elapsed)
                if self.on_step is not None:
                    self.on_step(self, done)
                stop = self._stop_agreed(log_point)
                if epoch_end or stop:
                    self._checkpoint(loop, validate=epoch_end)
                if stop:
                    break

    def _freeze(self, loop: _Loop, frozen: list[tuple[str, int]]) -> None:
        # DDP must learn which weights still get gradients
        loop.train_step.weights_frozen(_wrapped(loop.model, self.world))
        for name, at in frozen:
            loop.progress.line(f"the weights of {name} stop training at step {at}/"
                               f"{loop.plan.total_steps} (freeze_after): they stay as they are")

    def _batch(self, plan: BatchPlan, step: int) -> tuple[torch.Tensor, float]:
        """Step `step`'s batch (this process's shard of it) and learning rate."""
        recipe = self.recipe
        return (distributed.shard(plan.indices(step), self.world),
                recipe.optimizer.lr * lr_factor(recipe.schedule, step, plan.total_steps))

    def _train_one(self, loop: _Loop, step: int) -> None:
        indices, loop.lr = loop.train_step(step)
        loop.window.images += len(indices)
        loop.images_done += len(indices)

    def _log_window(self, loop: _Loop) -> None:
        """Read the window's loss and accuracy off the device (the loop's only read between
        epochs) and log them."""
        loop.last_loss, loop.last_acc = loop.window.read(self.world)
        done = loop.steps_done
        if not math.isfinite(loop.last_loss):
            kept = (f"no checkpoint was saved before it (its log is in {self.run_dir})"
                    if self._saved_step is None else
                    f"the last good checkpoint, of step {self._saved_step}, is in {self.run_dir}")
            raise TrainingDiverged(f"the training loss became {loop.last_loss} by step {done}: the "
                                   f"run diverged (try a lower learning rate); {kept}")
        self._log({"event": "train", "step": done, "epoch": done / loop.plan.steps_per_epoch,
                   "loss": loop.last_loss, "accuracy": loop.last_acc, "lr": loop.lr})

    def _show_progress(self, loop: _Loop, elapsed: float) -> None:
        done, total = loop.steps_done, loop.plan.total_steps
        rate = loop.images_done * self.world.size / elapsed if elapsed > 0 else 0.0
        loop.progress.update(done, images_per_s=rate, loss=loop.last_loss, accuracy=loop.last_acc,
                             seconds_left=elapsed / max(1, done - loop.start_step) * (total - done))

    def _stop_agreed(self, log_point: bool) -> bool:
        if self.world.size == 1:
            return self._stop.is_set()
        # processes must agree to stop at the same step, which costs a message: ask only at log
        # points
        return log_point and distributed.any_process(self._stop.is_set(), self.world, self.device)

    def _checkpoint(self, loop: _Loop, *, validate: bool) -> None:
        """Validate (at an epoch's end) and save; the time this takes is not training time."""
        wait_for(self.device)  # the GPU's queued steps are training time
        pause_start = time.perf_counter()
        # compiling and capturing the graph are set apart: they are paid once, not per step
        loop.train_seconds = loop.earlier_train_seconds + (
            pause_start - loop.session_start - loop.paused
            - loop.train_step.capture_seconds - loop.train_step.compile_seconds)
        if validate:
            loop.last_validation = self._end_epoch(loop)
        self._save(loop, loop.train_seconds)
        loop.paused += time.perf_counter() - pause_start

    # ---- the end ---------------------------------------------------------------------------

    def _finish(self, loop: _Loop) -> RunResult:
        """After the last step: the replicas compared, then, unless the run was stopped early,
        the test and the final save."""
        train_step, world = loop.train_step, self.world
        # the time the last step's checkpoint recorded (a run ends or stops with one), so that
        # the model file and the training state agree; a finished run resumed adds none
        train_seconds = loop.train_seconds
        elapsed = train_seconds - loop.earlier_train_seconds
        result = RunResult(
            run_dir=self.run_dir, recipe=self.recipe, device=str(self.device),
            steps_done=loop.steps_done, total_steps=loop.plan.total_steps,
            train_seconds=train_seconds,
            images_per_s=loop.images_done * world.size / elapsed if elapsed > 0 else 0.0,
            test=None, validation=loop.last_validation,
            setup_seconds=loop.session_start - self._started, processes=world.size,
            is_main=world.is_main, capture_seconds=train_step.capture_seconds,
            cuda_graph=train_step.cuda_graph, compile_seconds=train_step.compile_seconds,
            compiled=self.compile, resumed_at=loop.start_step)
        if world.size > 1:
            self._check_replicas(loop)
        if loop.steps_done < loop.plan.total_steps:
            hint = f"; checkpoint saved. Continue with: {self.continue_with}" if self.continue_with else ""
            loop.progress.line(f"stopped at step {loop.steps_done}/{loop.plan.total_steps}{hint}")
            return result
        if loop.steps_done == loop.start_step and loop.validation is not None:
            # a finished run tested again: its validation figures, computed again on the same
            # final model, stay in the model file it rewrites
            loop.last_validation = result.validation = compute_metrics(
                loop.final(), loop.validation.images, loop.validation.labels,
                num_classes=self._classes)
        result.test = self._test(loop, train_seconds)
        return result

    def _check_replicas(self, loop: _Loop) -> None:
        world = self.world
        distributed.share_buffers(loop.model, world)
        difference = distributed.replica_difference(loop.model, world)
        self._log({"event": "replicas", "step": loop.steps_done, "processes": world.size,
                   "max_difference": difference})
        if difference != 0:
            raise MnistlabError(f"the {world.size} replicas disagree after training "
                                f"(largest weight difference {difference:g})")

    def _test(self, loop: _Loop, train_seconds: float) -> Metrics:
        """Test the final model, log and save it as complete."""
        recipe = self.recipe
        test = self._split("test")
        metrics = compute_metrics(loop.final(), test.images, test.labels, num_classes=self._classes,
                                  dropout_at_test=recipe.quirks.dropout_at_test)
        self._log({"event": "test", "step": loop.steps_done, "loss": metrics.loss,
                   "accuracy": metrics.accuracy, "train_seconds": train_seconds})
        self._save(loop, train_seconds, test=metrics)
        return metrics

    # ---- pieces ----------------------------------------------------------------------------

    def _end_epoch(self, loop: _Loop) -> Metrics | None:
        """Validate where there is a validation split, log it, and print the epoch's line."""
        plan, done, validation = loop.plan, loop.steps_done, loop.validation
        text = (f"epoch {_epochs(done, plan)}/{_epochs(plan.total_steps, plan)}  "
                f"step {done}/{plan.total_steps}")
        if loop.last_loss is not None:
            text += f"  loss {loop.last_loss:.4f}  acc {100 * loop.last_acc:.2f}%"
        metrics = None
        if validation is not None:
            metrics = compute_metrics(loop.final(), validation.images, validation.labels,
                                      num_classes=self._classes)
            # the epochs done, as a training record counts them: a run that ends partway
            # through an epoch is validated there, not at the next whole epoch
            self._log({"event": "validation", "step": done, "epoch": done / plan.steps_per_epoch,
                       "loss": metrics.loss, "accuracy": metrics.accuracy})
            text += f"  val_loss {metrics.loss:.4f}  val_acc {100 * metrics.accuracy:.2f}%"
        loop.progress.line(text)
        return metrics

    def _save(self, loop: _Loop, train_seconds: float, test: Metrics | None = None) -> None:
        """`_write_checkpoint`, with a failed write explained: which checkpoint survived and how
        to continue."""
        try:
            self._write_checkpoint(loop, train_seconds, test)
        except MnistlabError as e:
            if not isinstance(e.__cause__, OSError):
                raise
            raise rundir.save_failed(e, self.run_dir, loop.steps_done, self._saved_step) from e

    def _write_checkpoint(self, loop: _Loop, train_seconds: float, test: Metrics | None) -> None:
        """The training state (live weights, optimiser, average) for --resume, and the model
        that was evaluated: the weight average where there is one. The final save, after the
        test, writes the model alone."""
        if not self.world.is_main:
            return
        ema = loop.ema
        common = {
            "recipe": self.recipe.to_dict(), "seed": self.seed, "step": loop.steps_done,
            "total_steps": loop.plan.total_steps, "device": str(self.device),
            "data_dir": self.data_dir, "train_seconds": train_seconds,
            "versions": checkpoint.versions(), "processes": self.world.size,
            "class_names": self._start.class_names,
            **({"init": self._start.record} if self._start.record else {}),
        }
        if test is None:  # the final save after the test needs no resume state
            state.save_training_state(self.run_dir, loop.model, loop.optimizer, common,
                                      extra=ema.tensors() if ema is not None else None)
            # --resume continues from this state even if the model file after it fails
            self._saved_step = loop.steps_done
        metrics = {"train_seconds": train_seconds}
        if loop.last_validation is not None:
            metrics["validation"] = {"accuracy": loop.last_validation.accuracy,
                                     "loss": loop.last_validation.loss}
        if test is not None:
            metrics["test"] = {"accuracy": test.accuracy, "loss": test.loss}
        checkpoint.save_model(self.run_dir, loop.final(), {
            **common,
            "model": {"name": self.recipe.model.name, "args": self.recipe.model.args},
            # what the model expects: 28x28 grayscale, white ink on black, pixel / 255
            "input": {"height": 28, "width": 28, "channels": 1, "scale": 1 / 255,
                      "mean": 0.0, "std": 1.0, "ink": "light on dark"},
            "dropout_at_test": self.recipe.quirks.dropout_at_test,
            "complete": test is not None,
            "metrics": metrics,
        })

    def _prepare_run_dir(self) -> None:
        """Make the folder this run's alone, before step 1: locked for the whole run, holding
        nothing of anyone else's (unless resuming), writable, with room for the checkpoints.
        Only the process that writes does this: under torchrun, the others write nothing, and
        torchrun stops them should this one fail."""
        # the step of the last training state saved, for the error should a later save fail
        self._saved_step = self._resume_from[1]["step"] if self._resume_from is not None else None
        self._lock = None
        if not self.world.is_main:
            return
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = ("something that is not a folder is in its place"
                   if os.path.lexists(self.run_dir) and not self.run_dir.is_dir() else e.strerror or e)
            raise MnistlabError(f"cannot create the run folder {self.run_dir}: {why}") from None
        except ValueError as e:  # a NUL byte in the path
            raise MnistlabError(f"cannot create the run folder {str(self.run_dir)!r}: {e}") from None
        lock = None
        try:
            lock = rundir.RunLock(self.run_dir)
            if self._resume_from is None:
                rundir.check_belongs_to_run(self.run_dir, lock)
            rundir.check_writable(self.run_dir, self.recipe)
        except MnistlabError:
            if lock is not None:  # the folder is left as it was found
                lock.release(remove=not lock.existed)
            if created:  # leave no empty folder behind
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()
            raise
        self._lock = lock

    def _open_metrics(self, keep_until: int) -> int:
        """Open the log for appending, keeping (when resuming) the records up to the step
        resumed from; return how many damaged lines were dropped."""
        if not self.world.is_main:
            return 0
        path = self.run_dir / METRICS_FILE
        kept, damaged = [], 0
        if keep_until and os.path.lexists(path):  # drop what was logged after that checkpoint
            kept, damaged = _records_until(read_limited(path, MAX_METRICS_BYTES, "metrics log"),
                                           keep_until)
        # the records kept replace the file in one rename, so a crash now loses none of them
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        try:
            self._metrics = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise MnistlabError(f"cannot write {path}: {e.strerror or e}") from None
        return damaged

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        record["time"] = round(time.time(), 3)
        try:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        except OSError as e:
            path = self.run_dir / METRICS_FILE
            raise rundir.save_failed(MnistlabError(f"cannot write {path}: {e.strerror or e}"),
                                     self.run_dir, record.get("step", 0), self._saved_step) from e
        if self.on_log is not None:
            self.on_log(record)


class _Window:
    """The training loss and accuracy since the last log point: sums on the device (which a
    CUDA graph adds to), and the image count on the host."""

    def __init__(self, device: torch.device):
        self.totals = Totals(device)
        self.images = 0

    def read(self, world: distributed.World) -> tuple[float, float]:
        """Mean loss and accuracy over every process's images, and start a new window."""
        loss, correct = self.totals.take()
        count = torch.tensor([float(self.images)], dtype=loss.dtype, device=loss.device)
        loss, correct, images = distributed.total(torch.cat([loss, correct, count]), world).tolist()
        self.images = 0
        return loss / images, correct / images


def _records_until(data: bytes, step: int) -> tuple[list[str], int]:
    """The log's lines recording steps up to `step`, but a test's (a finished run resumed is
    tested again, and logs the test anew), and how many lines were damaged (not a JSON object
    with a whole-number step); the last line, cut short by a crash, is dropped without
    counting."""
    lines = data.split(b"\n")
    if lines[-1]:
        lines.pop()  # no newline after it: a write the process did not finish
    kept, damaged = [], 0
    for raw in lines:
        if not raw:
            continue
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            record = None
        at = record.get("step") if isinstance(record, dict) else None
        if not isinstance(at, int) or isinstance(at, bool):
            damaged += 1
        elif at <= step and record.get("event") != "test":
            kept.append(line)
    return kept, damaged


def _epochs(steps: int, plan: BatchPlan) -> str:
    """`steps` in epochs: whole where they are, else to a tenth (a run of so many steps, as
    TensorFlow's tutorials count them, can end partway through an epoch)."""
    epochs = steps / plan.steps_per_epoch
    if epochs == round(epochs):
        return f"{epochs:.0f}"
    return f"{epochs:.1f}" if epochs >= 0.1 else f"{epochs:.2f}"  # a few steps: not "0.0"


def _wrapped(model: torch.nn.Module, world: distributed.World) -> torch.nn.Module:
    """What the steps run: under torchrun, DistributedDataParallel, which averages the gradients
    of the weights that are training over the processes; alone, the model itself."""
    return torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model


@contextlib.contextmanager
def _stop_on_sigint(trainer: Trainer):
    """Ctrl-C asks the trainer to stop after the current step and save; a second one aborts.
    SIGTERM (`kill`, `timeout`, a container stopping) does the same in a single process; under
    torchrun it ends the process as before, as torchrun sends it when another process failed,
    and agreeing on a step to stop at would wait for that one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer._stop.is_set():
            raise KeyboardInterrupt
        trainer.request_stop()

    signals = [signal.SIGINT] + ([signal.SIGTERM] if trainer.world.size == 1 else [])
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old_handler in previous.items():
            signal.signal(sig, old_handler)


def train_summary(result: RunResult) -> str:
    lines = []
    if result.test is not None:
        claim = result.recipe.claim
        text = f"test accuracy {100 * result.test.accuracy:.2f}% (loss {result.test.loss:.4f}) on {result.test.count:,} images"
        if claim is not None and claim.accuracy is not None:
            text += f"; the tutorial claims {100 * claim.accuracy:.2f}%"
        lines.append(text)
    where = result.device + (f" x {result.processes} processes" if result.processes > 1 else "")
    # the rate is this session's, said so after a resume: none when nothing was left to train
    since = f" from step {result.resumed_at:,}" if result.resumed_at else ""
    rate = f", {result.images_per_s:,.0f} images/s{since}" if result.images_per_s else ""
    steps = f"{result.steps_done:,} step{'s' * (result.steps_done != 1)}"
    lines.append(f"trained {steps} in {format_duration(result.train_seconds)} "
                 f"({result.train_seconds:.1f} s{rate}) on {where}")
    apart = [f"{what} {seconds:.2f} s" for what, seconds in
             [("torch.compile", result.compile_seconds), ("CUDA graph capture", result.capture_seconds)]
             if seconds]
    if apart:
        lines.append(f"  not counted above: {', '.join(apart)}")
    lines.append(f"run saved in {result.run_dir}")
    return "\n".join(lines)

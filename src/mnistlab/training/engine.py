"""One training engine for every recipe.

The whole training split lives on the device as one uint8 tensor; a batch is an index into it,
turned into floats on the fly. The loop reads nothing back from the device between log points,
so a GPU is never left waiting on Python.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import checkpoint
from mnistlab.data.registry import get_spec
from mnistlab.data.splits import Split, load_split
from mnistlab.device import resolve_device, wait_for
from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_text
from mnistlab.metrics import Metrics, compute_metrics
from mnistlab.models import build_model
from mnistlab.recipes import Recipe, recipe_from_dict
from mnistlab.training import distributed, rundir, state
from mnistlab.training.batches import BatchPlan
from mnistlab.training.cpu_memory import keep_freed_memory
from mnistlab.training.ema import WeightAverage
from mnistlab.training.freeze import Freezer
from mnistlab.training.optim import lr_factor, make_optimizer
from mnistlab.training.progress import Progress, format_duration
from mnistlab.training.step import Totals, TrainStep, can_use_cuda_graph

METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(MnistlabError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    recipe: Recipe
    device: str
    steps_done: int
    total_steps: int
    train_seconds: float  # first step to last, without data loading, validation or checkpoints
    images_per_s: float
    test: Metrics | None  # None when the run was interrupted
    validation: Metrics | None
    setup_seconds: float = 0.0  # data loading and model building, before the first step
    processes: int = 1  # data-parallel processes (torchrun)
    is_main: bool = True  # the process that prints and writes
    capture_seconds: float = 0.0  # capturing the CUDA graph, not counted in train_seconds
    cuda_graph: bool = False  # whether the steps were replayed from a CUDA graph
    compile_seconds: float = 0.0  # torch.compile's, with the first step, not in train_seconds
    compiled: bool = False  # whether the forward pass and loss went through torch.compile

    @property
    def interrupted(self) -> bool:
        return self.test is None


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast: asked for, or "auto" on hardware that has it."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # x86 CPUs with AVX-512 BF16 or AMX run bfloat16 natively; elsewhere it is emulated
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def new_run_dir(recipe_name: str, parent: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = parent / f"{recipe_name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = parent / f"{recipe_name}-{stamp}-{n}"
    return path


class Trainer:
    """Trains one recipe into one run folder; `request_stop` ends it cleanly at the next step."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, seed: int = 0, device: str = "auto",
                 data_dir: str | None = None, progress: Progress | None = None,
                 on_step: Callable[[Trainer, int], None] | None = None,
                 on_log: Callable[[dict[str, Any]], None] | None = None,
                 cuda_graphs: bool = True, compile: bool = False,
                 resume_from: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None):
        self.recipe = recipe
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
        self._stop = threading.Event()

    @classmethod
    def resuming(cls, run_dir: Path, **kwargs: Any) -> Trainer:
        saved = state.read_training_state(run_dir)
        meta = saved[1]
        recipe = recipe_from_dict(meta["recipe"], f"{run_dir}/{state.STATE_FILE}")
        return cls(recipe, run_dir, seed=meta["seed"], data_dir=meta.get("data_dir"),
                   resume_from=saved, **kwargs)

    def request_stop(self) -> None:
        self._stop.set()

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._started = time.perf_counter()
        recipe, train_cfg = self.recipe, self.recipe.train
        # the data first: a dataset that cannot be loaded leaves no run folder behind
        train = load_split(train_cfg.split, recipe.data.dataset, self.data_dir, self.device)
        validation = (load_split("validation", recipe.data.dataset, self.data_dir, self.device)
                      if train_cfg.split == "train" else None)
        if train_cfg.batch_size > len(train):
            raise MnistlabError(f"batch size {train_cfg.batch_size} is larger than the "
                                f"{len(train)} training images")
        if self.device.type == "cpu":
            keep_freed_memory()  # each step reuses the last one's memory: no page faults
        self._prepare_run_dir()
        try:
            return self._run(train, validation)
        finally:
            if hasattr(self, "_metrics"):
                self._metrics.close()

    def _run(self, train: Split, validation: Split | None) -> RunResult:
        recipe, train_cfg = self.recipe, self.recipe.train
        torch.manual_seed(self.seed)  # the model's initial weights, then dropout
        model = build_model(recipe.model.name, init=recipe.model.init, **recipe.model.args)
        # channels-last: the layout oneDNN's and cuDNN's fastest convolutions work in
        model = model.to(self.device, memory_format=torch.channels_last)
        world = self.world
        cuda_graph = self.cuda_graphs and can_use_cuda_graph(self.device, world.size, recipe)
        net = _wrapped(model, world)
        plan = BatchPlan(len(train), train_cfg.batch_size, seed=self.seed, epochs=train_cfg.epochs,
                         steps=train_cfg.steps, device=self.device)
        ema = WeightAverage(model, train_cfg.ema) if train_cfg.ema else None
        freezer = Freezer(model, train_cfg.freeze_after, plan.total_steps)
        optimizer = make_optimizer(model, recipe.optimizer, capturable=cuda_graph,
                                   groups=freezer.weight_groups())
        start_step, train_seconds = 0, 0.0
        if self._resume_from is not None:
            tensors, meta = self._resume_from
            state.restore_training_state(tensors, meta, model, optimizer, str(self.run_dir))
            if ema is not None:
                ema.restore(tensors, str(self.run_dir))
            start_step, train_seconds = meta["step"], meta["train_seconds"]
        self._open_metrics(keep_until=start_step)
        progress = self.progress or Progress(plan.total_steps)
        progress.total = plan.total_steps
        bf16 = use_bf16(train_cfg.precision, self.device)
        how = [str(self.device)] + [name for name, used in
                                    [("bf16", bf16), ("CUDA graph", cuda_graph),
                                     ("torch.compile", self.compile)] if used]
        if start_step == plan.total_steps:  # resuming a finished run: only its test is left
            progress.line(f"{self.run_dir} has trained all {plan.total_steps:,} steps: testing it again")
        else:
            progress.line(f"{'resuming' if start_step else 'training'} {recipe.name} ({recipe.model.name}) "
                          f"on {', '.join(how)}, seed {self.seed}, into {self.run_dir}"
                          + (f" at step {start_step}/{plan.total_steps}" if start_step else ""))
        if ema is not None and plan.total_steps < ema.steps_to_forget():
            progress.line(f"note: the weight average (ema = {train_cfg.ema}) starts from the initial "
                          f"weights and needs about {ema.steps_to_forget():,} steps to forget them; "
                          f"this run has {plan.total_steps:,}, so the model it tests and saves will "
                          "be poor (set ema = 0 for short runs)")
        # a summed loss must stay the sum over the whole batch once DDP averages the shards' gradients
        loss_scale = world.size if train_cfg.loss_reduction == "sum" else 1
        update_every = recipe.quirks.update_every
        window = _Window(self.device)
        train_step = TrainStep(net, optimizer, train.images, train.labels, recipe, window.totals,
                               batch_size=len(distributed.shard(torch.arange(train_cfg.batch_size), world)),
                               bf16=bf16, loss_scale=loss_scale, cuda_graph=cuda_graph,
                               compile=self.compile, ema=ema)
        # what is validated, tested and saved: the weight average where the recipe keeps one
        final = ema.current if ema is not None else lambda: model
        last_loss = last_acc = None
        last_validation: Metrics | None = None
        images_done = 0
        session_start = time.perf_counter()
        paused = 0.0  # time spent validating and saving, which is not training time
        steps_done = start_step

        model.train()
        with _stop_on_sigint(self):
            for step in range(start_step, plan.total_steps):
                frozen = freezer.freeze_due(step)
                if frozen:  # DDP must learn which weights still get gradients
                    train_step.weights_frozen(_wrapped(model, world))
                    for name, at in frozen:
                        progress.line(f"{name} stops training at step {at}/{plan.total_steps} "
                                      "(freeze_after): its weights stay as they are")
                if step % update_every == 0:  # Deep MNIST as printed skips the others entirely
                    idx = distributed.shard(plan.indices(step), world)
                    lr = recipe.optimizer.lr * lr_factor(recipe.schedule, step, plan.total_steps)
                    train_step(idx, lr)
                    window.images += len(idx)
                    images_done += len(idx)
                done = steps_done = step + 1
                epoch_end = plan.epoch_ends(step)
                log_point = done % train_cfg.log_every == 0 or epoch_end
                if window.images and log_point:
                    last_loss, last_acc = window.read(world)
                    if not math.isfinite(last_loss):
                        raise TrainingDiverged(
                            f"the training loss became {last_loss} by step {done}: the run diverged "
                            f"(try a lower learning rate); the last good checkpoint is in {self.run_dir}")
                    self._log({"event": "train", "step": done, "epoch": done / plan.steps_per_epoch,
                               "loss": last_loss, "accuracy": last_acc, "lr": lr})
                elapsed = time.perf_counter() - session_start - paused
                rate = images_done * world.size / elapsed if elapsed > 0 else 0.0
                progress.update(done, images_per_s=rate, loss=last_loss, accuracy=last_acc,
                                seconds_left=elapsed / max(1, done - start_step) * (plan.total_steps - done))
                if self.on_step is not None:
                    self.on_step(self, done)
                # processes must agree to stop at the same step, which costs a message: ask only
                # at log points
                stop = (self._stop.is_set() if world.size == 1 else
                        log_point and distributed.any_process(self._stop.is_set(), world, self.device))
                if epoch_end or stop:
                    wait_for(self.device)  # the GPU's queued steps are training time
                    pause_start = time.perf_counter()
                    if epoch_end:
                        last_validation = self._end_epoch(final(), validation, plan, done,
                                                          last_loss, last_acc, progress)
                    self._save(model, optimizer, done, plan.total_steps,
                               train_seconds + elapsed, last_validation, ema=ema)
                    paused += time.perf_counter() - pause_start
                if stop:
                    break

        wait_for(self.device)
        # compiling and capturing the graph are set apart: they are paid once, not per step
        elapsed = (time.perf_counter() - session_start - paused - train_step.capture_seconds
                   - train_step.compile_seconds)
        train_seconds += elapsed
        result = RunResult(self.run_dir, recipe, str(self.device), steps_done, plan.total_steps,
                           train_seconds, images_done * world.size / elapsed if elapsed > 0 else 0.0,
                           None, last_validation, session_start - self._started, world.size,
                           world.is_main, train_step.capture_seconds, cuda_graph,
                           train_step.compile_seconds, self.compile)
        if world.size > 1:
            distributed.share_buffers(model, world)
            difference = distributed.replica_difference(model, world)
            self._log({"event": "replicas", "step": steps_done, "processes": world.size,
                       "max_difference": difference})
            if difference != 0:
                raise MnistlabError(f"the {world.size} replicas disagree after training "
                                    f"(largest weight difference {difference:g})")
        if steps_done < plan.total_steps:
            progress.line(f"stopped at step {steps_done}/{plan.total_steps}; checkpoint saved. "
                          f"Continue with: mnistlab train --resume {self.run_dir}")
            return result

        test = load_split("test", recipe.data.dataset, self.data_dir, self.device)
        result.test = compute_metrics(final(), test.images, test.labels,
                                      dropout_at_test=recipe.quirks.dropout_at_test)
        self._log({"event": "test", "step": steps_done, "loss": result.test.loss,
                   "accuracy": result.test.accuracy, "train_seconds": train_seconds})
        self._save(model, None, steps_done, plan.total_steps, train_seconds, last_validation,
                   test=result.test, ema=ema)
        return result

    # ---- pieces ----------------------------------------------------------------------------

    def _end_epoch(self, model, validation: Split | None, plan: BatchPlan, done: int,
                   loss: float | None, acc: float | None, progress: Progress) -> Metrics | None:
        epoch = math.ceil(done / plan.steps_per_epoch)
        text = (f"epoch {_epochs(done, plan)}/{_epochs(plan.total_steps, plan)}  "
                f"step {done}/{plan.total_steps}")
        if loss is not None:
            text += f"  loss {loss:.4f}  acc {100 * acc:.2f}%"
        metrics = None
        if validation is not None:
            metrics = compute_metrics(model, validation.images, validation.labels)
            self._log({"event": "validation", "step": done, "epoch": epoch,
                       "loss": metrics.loss, "accuracy": metrics.accuracy})
            text += f"  val_loss {metrics.loss:.4f}  val_acc {100 * metrics.accuracy:.2f}%"
        progress.line(text)
        return metrics

    def _save(self, model, optimizer, step: int, *args: Any, **kwargs: Any) -> None:
        """`_write_checkpoint`, with a failed write explained: which checkpoint survived and how
        to continue."""
        try:
            self._write_checkpoint(model, optimizer, step, *args, **kwargs)
        except MnistlabError as e:
            if not isinstance(e.__cause__, OSError):
                raise
            raise rundir.save_failed(e, self.run_dir, step, self._saved_step) from e
        if optimizer is not None:
            self._saved_step = step

    def _write_checkpoint(self, model, optimizer, step: int, total: int, train_seconds: float,
                          validation: Metrics | None, test: Metrics | None = None,
                          ema: WeightAverage | None = None) -> None:
        """The training state (live weights, optimiser, average) for --resume, and the model
        that was evaluated: the weight average where there is one."""
        if not self.world.is_main:
            return
        common = {
            "recipe": self.recipe.to_dict(), "seed": self.seed, "step": step, "total_steps": total,
            "device": str(self.device), "data_dir": self.data_dir, "train_seconds": train_seconds,
            "versions": checkpoint.versions(), "processes": self.world.size,
        }
        if optimizer is not None:  # the final save after the test needs no resume state
            state.save_training_state(self.run_dir, model, optimizer, common,
                                           extra=ema.tensors() if ema is not None else None)
        metrics = {"train_seconds": train_seconds}
        if validation is not None:
            metrics["validation"] = {"accuracy": validation.accuracy, "loss": validation.loss}
        if test is not None:
            metrics["test"] = {"accuracy": test.accuracy, "loss": test.loss}
        dataset = self.recipe.data.dataset
        checkpoint.save_model(self.run_dir, ema.current() if ema is not None else model, {
            **common,
            "model": {"name": self.recipe.model.name, "args": self.recipe.model.args},
            # what the model expects: 28x28 grayscale, white ink on black, pixel / 255
            "input": {"height": 28, "width": 28, "channels": 1, "scale": 1 / 255,
                      "mean": 0.0, "std": 1.0, "ink": "light on dark"},
            "class_names": list(get_spec(dataset).class_names) if self.data_dir is None else
            [str(i) for i in range(10)],
            "dropout_at_test": self.recipe.quirks.dropout_at_test,
            "complete": test is not None,
            "metrics": metrics,
        })

    def _prepare_run_dir(self) -> None:
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MnistlabError(f"cannot create the run folder {self.run_dir}: {e.strerror or e}") from None
        if self._resume_from is None and (self.run_dir / state.STATE_FILE).exists():
            raise MnistlabError(f"{self.run_dir} already holds a run: continue it with --resume "
                                "or choose another --out")
        # the step of the last training state saved, for the error should a later save fail
        self._saved_step = self._resume_from[1]["step"] if self._resume_from is not None else None
        if self.world.is_main:  # a read-only folder or a full disk is an error before step 1
            try:
                rundir.check_writable(self.run_dir, self.recipe)
            except MnistlabError:
                if created:  # leave no empty folder behind
                    with contextlib.suppress(OSError):
                        self.run_dir.rmdir()
                raise

    def _open_metrics(self, keep_until: int) -> None:
        if not self.world.is_main:
            return
        path = self.run_dir / METRICS_FILE
        kept = []
        if keep_until and path.exists():  # drop what was logged after the checkpoint we resume
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until:
                        kept.append(line)
                except ValueError:
                    continue  # a line cut short by a crash
        # the records kept replace the file in one rename, so a crash now loses none of them
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        try:
            self._metrics = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise MnistlabError(f"cannot write {path}: {e.strerror or e}") from None

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
        count = torch.tensor(float(self.images), dtype=torch.float64, device=loss.device)
        loss, correct, images = distributed.total(torch.stack([loss, correct, count]), world).tolist()
        self.images = 0
        return loss / images, correct / images


def _epochs(steps: int, plan: BatchPlan) -> str:
    """`steps` in epochs: whole where they are, else to a tenth (a run of so many steps, as
    TensorFlow's tutorials count them, can end partway through an epoch)."""
    epochs = steps / plan.steps_per_epoch
    return f"{epochs:.0f}" if epochs == round(epochs) else f"{epochs:.1f}"


def _wrapped(model: torch.nn.Module, world: distributed.World) -> torch.nn.Module:
    """What the steps run: under torchrun, DistributedDataParallel, which averages the gradients
    of the weights that are training over the processes; alone, the model itself."""
    return torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model


@contextlib.contextmanager
def _stop_on_sigint(trainer: Trainer):
    """Ctrl-C asks the trainer to stop after the current step and save; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer._stop.is_set():
            raise KeyboardInterrupt
        trainer.request_stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train_summary(result: RunResult) -> str:
    lines = []
    if result.test is not None:
        claim = result.recipe.claim
        text = f"test accuracy {100 * result.test.accuracy:.2f}% (loss {result.test.loss:.4f}) on {result.test.count:,} images"
        if claim is not None and claim.accuracy is not None:
            text += f"; the tutorial claims {100 * claim.accuracy:.2f}%"
        lines.append(text)
    where = result.device + (f" x {result.processes} processes" if result.processes > 1 else "")
    # the rate is this session's: none when a resumed run had nothing left to train
    rate = f", {result.images_per_s:,.0f} images/s" if result.images_per_s else ""
    lines.append(f"trained {result.steps_done:,} steps in {format_duration(result.train_seconds)} "
                 f"({result.train_seconds:.1f} s{rate}) on {where}")
    apart = [f"{what} {seconds:.2f} s" for what, seconds in
             [("torch.compile", result.compile_seconds), ("CUDA graph capture", result.capture_seconds)]
             if seconds]
    if apart:
        lines.append(f"  not counted above: {', '.join(apart)}")
    lines.append(f"run saved in {result.run_dir}")
    return "\n".join(lines)

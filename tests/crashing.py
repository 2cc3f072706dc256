"""Kill training runs with SIGKILL at random moments, resume them, and compare their final weights
with an uninterrupted run's, for tests/test_reliability.py (24 kills; `--kills N` for more).

Each life of a run is `mnistlab train` (the CLI's `main`, with its arguments) in a process of its
own, forked from a server that has already imported PyTorch so that a life starts in milliseconds
instead of seconds. A kill is either at a random time after the start or, with the test hook
MNISTLAB_TEST_PAUSE_BEFORE_RENAME set, while the n-th atomic write of that life has its temporary
file complete and not yet renamed. After every kill the folder must hold a loadable checkpoint
(training state and model) no older than before, unless no checkpoint was ever saved in it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from conftest import write_mnist_slice

from mnistlab.checkpoint import MODEL_FILE, MODEL_META_FILE, load_model
from mnistlab.training.state import STATE_FILE, read_training_state

PAUSE_ENV = "MNISTLAB_TEST_PAUSE_BEFORE_RENAME"
CHECKPOINT_TEMPORARIES = tuple(f".{name}." for name in (STATE_FILE, MODEL_FILE, MODEL_META_FILE))
STEPS_PER_EPOCH = 11  # 550 training images (the last 50 of 600 validate) in batches of 50
EPOCHS = 8
RECIPE = f"""
name = "crash"
description = "a small run that checkpoints often: fast-cnn, dropout, batch norm, Adam, one-cycle"
[model]
name = "fast-cnn"
widths = [16, 16]
dropout = 0.2
[optimizer]
name = "adam"
lr = 3e-3
[schedule]
name = "onecycle"
warmup = 0.2
[train]
batch_size = 50
epochs = {EPOCHS}
log_every = 5
"""


def write_dataset(folder: Path) -> Path:
    """600 training and 200 test images of the real MNIST, as IDX files."""
    return write_mnist_slice(folder, 600, 200)


def _life(argv: list[str], log: str, env: dict[str, str], uid: int | None = None) -> None:
    """One process of a run: `mnistlab ARGV`, its output appended to `log`, as user `uid`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    if uid is not None:
        os.setgid(uid)
        os.setuid(uid)
    from mnistlab.cli import main

    sys.exit(main(argv))


def _ready() -> None:
    pass


class Launcher:
    """Starts lives from a fork server that has imported PyTorch and mnistlab already."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        # torch._dynamo: what building an optimiser imports, two seconds of every life otherwise
        self.ctx.set_forkserver_preload(["torch", "torch._dynamo", "mnistlab.cli",
                                         "mnistlab.training.engine", "crashing"])
        ready = self.ctx.Process(target=_ready)  # starts the server, which imports all that
        ready.start()
        ready.join()

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              uid: int | None = None):
        process = self.ctx.Process(target=_life, args=(argv, str(log), env or {}, uid), daemon=True)
        process.start()
        return process


@dataclass
class Life:
    plan: str  # "random": killed at a random time; "write": during its n-th atomic write; "end"
    seconds: float  # from the start to the kill or the exit
    resumed: bool  # whether it started from a checkpoint
    killed: bool
    exit_code: int | None
    step_after: int | None  # the training state's step once it ended (None: no checkpoint yet)
    temporaries: list[str] = field(default_factory=list)  # writes cut short, left by the kill


@dataclass
class Tally:
    lives: list[Life] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    reference_seconds: float = 0.0  # the quickest whole run: random kills fall within 0.6 of it

    @property
    def kills(self) -> list[Life]:
        return [life for life in self.lives if life.killed]

    def summary(self) -> str:
        kills = self.kills
        in_write = sum(1 for k in kills if k.temporaries)
        before = sum(1 for k in kills if k.step_after is None)
        resumes = sum(life.resumed for life in self.lives)
        return (f"{len(kills)} kills ({sum(k.plan == 'write' for k in kills)} aimed at a "
                f"checkpoint write, {in_write} left a half-done write behind, {before} before the "
                f"first checkpoint), {len(self.lives)} lives in {len(self.folders)} runs, "
                f"{resumes} resumes; every run finished with the reference run's weights")

    def details(self) -> str:
        """What the kills interrupted: the file being written, and how many distinct steps."""
        # a temporary file is .NAME.XXXXXXXX.tmp: NAME is what was being written
        where = Counter(next((t[1:].rsplit(".", 2)[0] for t in k.temporaries), "no write under way")
                        for k in self.kills)
        steps = len({k.step_after for k in self.kills})
        return (f"kills by what was being written: {dict(where.most_common())}\n"
                f"distinct training-state steps left by the kills: {steps}")


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the folder's training state, after loading it and the model; None when it
    holds no checkpoint. Raises (CheckpointError) when what it holds cannot be loaded."""
    step = None
    if (run_dir / STATE_FILE).exists():
        step = read_training_state(run_dir)[1]["step"]
    if (run_dir / MODEL_FILE).exists():
        load_model(run_dir)
    assert step is not None or not (run_dir / MODEL_FILE).exists(), "a model without its state"
    return step


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run_dir / MODEL_FILE))


def _live(launcher: Launcher, run_dir: Path, args: list[str], plan: str, rng: random.Random,
          reference_seconds: float, pause: float, timeout: float) -> Life:
    step = checkpoint_step(run_dir) if run_dir.exists() else None
    argv = ["train", "--resume", str(run_dir)] if step is not None else args
    argv = [*argv, "--device", "cpu", "--quiet", "--no-report"]
    env = {PAUSE_ENV: str(pause)} if plan == "write" else {}
    remaining_epochs = EPOCHS - (step or 0) // STEPS_PER_EPOCH
    # the checkpoint writes of a life: three an epoch (state, model, model.json), two at the end
    nth_write = rng.randint(1, 3 * remaining_epochs + 2)
    delay = rng.uniform(0, reference_seconds * 0.6)
    stale = {p.name for p in run_dir.glob(".*.tmp")}  # a previous life's, until the next start
    start = time.monotonic()
    process = launcher.start(argv, run_dir.parent / f"{run_dir.name}.log", env)
    if plan == "random":
        process.join(delay)
    elif plan == "write":
        seen: set[str] = set()
        while process.is_alive() and len(seen) < nth_write and time.monotonic() - start < timeout:
            seen.update(p.name for p in run_dir.glob(".*.tmp")
                        if p.name not in stale and p.name.startswith(CHECKPOINT_TEMPORARIES))
            time.sleep(0.002)
    killed = plan != "end" and process.is_alive()
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.join(timeout)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        raise AssertionError(f"{run_dir}: a life ran past {timeout} s")
    seconds = time.monotonic() - start
    temporaries = sorted({p.name for p in run_dir.glob(".*.tmp")} - stale)
    after = checkpoint_step(run_dir) if run_dir.exists() else None
    if step is not None:
        assert after is not None and after >= step, f"{run_dir}: checkpoint went from {step} to {after}"
    if not killed:
        assert process.exitcode == 0, f"{run_dir}: exit {process.exitcode}, see {run_dir}.log"
    return Life(plan, seconds, step is not None, killed, process.exitcode, after, temporaries)


def crash_test(workdir: Path, kills: int, seed: int = 0, write_share: float = 0.4,
               pause: float = 0.05, timeout: float = 300) -> Tally:
    """An uninterrupted run, then runs killed `kills` times in all and resumed to the end; every
    one must end with the uninterrupted run's weights, bit for bit."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = write_dataset(workdir / "data")
    (workdir / "recipe.toml").write_text(RECIPE)
    args = ["train", "--recipe", str(workdir / "recipe.toml"), "--data-dir", str(data),
            "--seed", "3"]
    launcher = Launcher()
    rng = random.Random(seed)
    tally = Tally()
    reference = workdir / "reference"
    life = _live(launcher, reference, [*args, "--out", str(reference)], "end", rng, 0, pause, timeout)
    tally.reference_seconds = life.seconds
    while len(tally.kills) < kills:
        run_dir = workdir / f"run-{len(tally.folders)}"
        tally.folders.append(run_dir)
        while len(tally.kills) < kills:
            plan = "write" if rng.random() < write_share else "random"
            life = _live(launcher, run_dir, [*args, "--out", str(run_dir)], plan, rng,
                         tally.reference_seconds, pause, timeout)
            tally.lives.append(life)
            if not life.killed:
                if not life.resumed:  # a whole run: the time scale of the kills, should load vary
                    tally.reference_seconds = min(tally.reference_seconds, life.seconds)
                break  # the run finished before its kill
    if tally.lives and tally.lives[-1].killed:  # after a kill, as after any other: resume
        tally.lives.append(_live(launcher, tally.folders[-1], [*args, "--out", str(tally.folders[-1])],
                                 "end", rng, 0, pause, timeout))
    want = weights(reference)
    for run_dir in tally.folders:
        meta = load_model(run_dir)[1]
        assert meta["complete"] and meta["step"] == EPOCHS * STEPS_PER_EPOCH
        assert json.loads((run_dir / MODEL_META_FILE).read_text()) == meta, f"{run_dir}: stale json"
        got = weights(run_dir)
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(want[k], got[k])]
        assert not different, f"{run_dir}: weights differ from the uninterrupted run's: {different}"
        assert not list(run_dir.glob(".*.tmp")), f"{run_dir}: temporary files left behind"
    return tally

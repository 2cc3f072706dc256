"""A run folder belongs to one run: --out refuses what is not the run's, a lock keeps a second
process out (and a dead one's lock is taken over), a damaged log or training state is one
clear line on --resume. Through the real command; the lock with real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
from crashing import PAUSE_ENV
from test_hostile_recipes import TINY as TINY_RECIPE

from mnistlab.checkpoint import MODEL_FILE
from mnistlab.cli import main
from mnistlab.recipebook import load_recipe
from mnistlab.training.engine import MAX_METRICS_BYTES, METRICS_FILE, Trainer
from mnistlab.training.progress import Progress
from mnistlab.training.rundir import LOCK_FILE
from mnistlab.training.state import STATE_FILE, read_training_state

# the hostile recipes' tiny run, six steps, each logged
TINY = TINY_RECIPE.replace("steps = 4", "steps = 6\nlog_every = 1")


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def train(recipe, out, data, *more):
    return ["train", "--recipe", str(recipe), "--out", str(out), "--data-dir", str(data),
            "--device", "cpu", "--no-report", "--quiet", *more]


def refused(capsys, args, message):
    assert main(args) == 1, args
    out, err = capsys.readouterr()
    assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err
    return err


def snapshot(folder):
    """Every entry of `folder` (names, hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in folder.iterdir()}


def test_a_new_run_takes_a_new_or_empty_folder_or_one_its_own_kind_left(tmp_path, recipe,
                                                                        small_mnist, capsys):
    # another tool's files: each one alone is refused, and nothing in the folder changes
    for name in ("model.json", "metrics.jsonl", "report.html", ".notes"):
        other = tmp_path / f"other-{name}"
        other.mkdir()
        (other / name).write_text("another tool's\n")
        before = snapshot(other)
        refused(capsys, train(recipe, other, small_mnist), f"holds files that are not this "
                                                           f"run's ({name}): choose a new or empty")
        assert snapshot(other) == before  # no lock file, no probe, nothing overwritten
    # an empty folder is the run's
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(train(recipe, empty, small_mnist)) == 0
    assert (empty / MODEL_FILE).exists() and (empty / LOCK_FILE).exists()
    refused(capsys, train(recipe, empty, small_mnist), "already holds a run: continue it with --resume")
    # a folder where a run of mnistlab was stopped before its first checkpoint (killed, say):
    # its lock file, log and half-written temporaries; the new run replaces them
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for name in (LOCK_FILE, METRICS_FILE, ".training-state.safetensors.abcd_123.tmp"):
        (stopped / name).write_text('{"event": "train", "step": 1}\n')
    capsys.readouterr()
    assert main(train(recipe, stopped, small_mnist)) == 0
    assert not list(stopped.glob(".*.tmp"))
    steps = [json.loads(line)["step"] for line in (stopped / METRICS_FILE).read_text().splitlines()]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 6  # this run's log alone


def mnistlab(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "mnistlab", *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


def test_a_folder_in_use_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, recipe,
                                                                            small_mnist):
    run = tmp_path / "run"
    args = train(recipe, run, small_mnist)
    # the holder stops at its first file write (its write probe), holding the folder's lock
    holder = mnistlab(*args, env={PAUSE_ENV: "600"})
    try:
        deadline = time.monotonic() + 300  # a backstop for a holder that never gets there
        while not list(run.glob(".*.tmp")):
            assert holder.poll() is None and time.monotonic() < deadline, holder.returncode
            time.sleep(0.01)
        second = mnistlab(*args)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 1 and out == "", err
        assert err == (f"mnistlab: error: {run} is in use: another mnistlab process is training "
                       f"into it (process {holder.pid}); wait for it to end or choose another "
                       "--out\n")
    finally:
        holder.send_signal(signal.SIGKILL)  # its lock dies with it; the lock file stays
        holder.communicate(timeout=60)
    assert (run / LOCK_FILE).exists()
    third = mnistlab(*args)
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert "test accuracy" in out and (run / MODEL_FILE).exists() and not list(run.glob(".*.tmp"))


@pytest.fixture
def stopped_run(tmp_path, recipe, small_mnist):
    """A run stopped at step 3 of 6, its log holding a record a step."""
    run = tmp_path / "run"

    def stop(trainer, done):
        if done == 3:
            trainer.request_stop()

    Trainer(load_recipe(recipe), run, device="cpu", data_dir=str(small_mnist), on_step=stop,
            progress=Progress(1, quiet=True)).run()
    return run


def test_resuming_with_a_damaged_metrics_log(stopped_run, capsys):
    run, log = stopped_run, stopped_run / METRICS_FILE
    resume = ["train", "--resume", str(run), "--device", "cpu", "--no-report"]
    state = (run / STATE_FILE).read_bytes()
    good = log.read_bytes()
    # what cannot be a log at all: one line, and the run as it was
    log.unlink()
    log.mkdir()
    refused(capsys, resume, "not a regular file (a folder); the metrics log must be a file")
    log.rmdir()
    os.mkfifo(log)
    refused(capsys, resume, "not a regular file (a FIFO)")
    log.unlink()
    with open(log, "wb") as f:  # sparse: nothing written but its length
        f.truncate(MAX_METRICS_BYTES + 1)
    refused(capsys, resume, f"larger than the {MAX_METRICS_BYTES:,} bytes allowed")
    assert (run / STATE_FILE).read_bytes() == state
    # damaged lines among good ones: dropped, and said so; a last line cut short by a crash too,
    # without a word
    damaged = [b"[1, 2, 3]", b'{"step": "abc"}', b'{"step": true}', b"\xff\xfe{", b"null"]
    log.write_bytes(b"\n".join(damaged) + b"\n" + good + b'{"event": "tr')
    assert main(resume) == 0
    out, err = capsys.readouterr()
    assert f"note: dropped 5 damaged lines of {log}\n" in out and err == ""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_training_state_beyond_what_its_recipe_allows_is_refused(stopped_run, capsys):
    run = stopped_run
    tensors, meta = read_training_state(run)
    group = meta["param_groups"][0]
    step_name = next(k for k in tensors if k.endswith(".step"))
    cases = [
        ({"step": 10**29, "total_steps": 10**30}, {}, "metadata 'total_steps' is 1000000000000"),
        ({"total_steps": 7}, {}, "the training state is of a run of 7 steps; its recipe gives 6"),
        ({"seed": 2**70}, {}, "metadata 'seed' is 1180591620717411303424, outside"),
        ({"train_seconds": float("nan")}, {}, "metadata 'train_seconds' is nan"),
        ({"param_groups": [{**group, "betas": [0.9, 1.999]}]}, {},
         "optimiser setting 'betas' is [0.9, 1.999], but the recipe's is [0.9, 0.999]"),
        ({"param_groups": [{**group, "eps": 1.0}]}, {}, "optimiser setting 'eps' is 1.0"),
        ({}, {step_name: torch.tensor(1e9)}, "counts updates beyond the run's step 3"),
    ]
    for meta_change, tensor_change, message in cases:
        text = json.dumps({**meta, **meta_change})
        (run / STATE_FILE).write_bytes(safetensors.torch.save({**tensors, **tensor_change},
                                                              {"mnistlab": text}))
        refused(capsys, ["train", "--resume", str(run), "--device", "cpu", "--quiet"], message)
    # what the fuzzing found: a step with such betas raised RuntimeError; the recipe's own resume
    (run / STATE_FILE).write_bytes(safetensors.torch.save(tensors, {"mnistlab": json.dumps(meta)}))
    assert main(["train", "--resume", str(run), "--device", "cpu", "--quiet", "--no-report"]) == 0

"""Crash safety: SIGKILL at random moments, Ctrl-C, a folder that cannot be written, a full disk.

The kill test forks its runs from a server that has imported PyTorch (tests/crashing.py), so
that two dozen kills fit in well under a minute on two cores;
`pytest tests/test_reliability.py -k sigkill --kills 200 -s` runs hundreds and prints the tally
that docs/RELIABILITY.md reports.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import safetensors.torch
from crashing import PAUSE_ENV, RECIPE, Launcher, crash_test, write_dataset

from mnistlab import fileio
from mnistlab.checkpoint import MODEL_FILE, load_model
from mnistlab.errors import MnistlabError
from mnistlab.recipebook import load_recipe
from mnistlab.training import rundir
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress
from mnistlab.training.state import STATE_FILE, read_training_state

QUIET = dict(progress=Progress(1, quiet=True))


def test_sigkill_at_random_moments_then_resume_ends_with_the_same_weights(tmp_path, request):
    wanted = request.config.getoption("--kills")
    start = time.monotonic()
    tally = crash_test(tmp_path, kills=wanted, seed=0)
    print(f"\n{tally.summary()}\n{tally.details()}; {time.monotonic() - start:.0f} s")
    kills = tally.kills
    assert len(kills) >= wanted
    assert sum(1 for k in kills if k.temporaries) >= 4  # killed with a write half done
    assert len({k.step_after for k in kills}) >= 4  # at many different points of the run


def mnistlab(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "mnistlab", *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def crash_recipe(tmp_path):
    path = tmp_path / "crash.toml"
    path.write_text(RECIPE)
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, crash_recipe, sig):
    """SIGTERM (kill, timeout, a container stopping) ended the process at once, losing the
    steps since the last checkpoint."""
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    # the whole run takes a fraction of a second: each write is stretched to 0.1 s to aim at it
    train = mnistlab("train", "--recipe", crash_recipe, "--data-dir", data, "--out", run,
                     "--device", "cpu", "--no-report", env={**os.environ, PAUSE_ENV: "0.1"})
    assert train.stdout.readline().startswith("training crash")
    while not (run / STATE_FILE).exists():  # the first epoch's checkpoint
        assert train.poll() is None
        time.sleep(0.005)
    train.send_signal(sig)
    out, err = train.communicate(timeout=120)
    assert train.returncode == 130, err
    assert f"checkpoint saved. Continue with: mnistlab train --resume {run}" in out
    assert "Traceback" not in err and "test accuracy" not in out
    step = read_training_state(run)[1]["step"]
    assert 0 < step < 88 and f"stopped at step {step}/88" in out
    assert load_model(run)[1]["step"] == step
    resumed = mnistlab("train", "--resume", run, "--device", "cpu", "--no-report")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"at step {step}/88" in out and "test accuracy" in out
    assert load_model(run)[1]["complete"]


def test_an_unwritable_output_folder_is_an_error_before_any_training():
    """A folder the user may not write to; root may write anywhere, so under root the command
    runs as user 'nobody' (forked once everything is imported: the interpreter is root's)."""
    root = Path(tempfile.mkdtemp(prefix="mnistlab-readonly-"))
    try:
        root.chmod(0o755)
        data = write_dataset(root / "data")
        for path in [*data.iterdir()]:
            path.chmod(0o644)
        (root / "crash.toml").write_text(RECIPE)
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        life = Launcher().start(["train", "--recipe", str(root / "crash.toml"), "--data-dir",
                                 str(data), "--out", str(locked), "--device", "cpu"],
                                root / "log", uid=65534 if os.geteuid() == 0 else None)
        life.join(120)
        assert life.exitcode == 1
        assert (root / "log").read_text() == (
            f"mnistlab: error: the run folder {locked} is not writable (Permission denied); "
            "choose another --out\n")
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_too_little_disk_space_is_an_error_before_any_training(tmp_path, small_mnist,
                                                              crash_recipe, monkeypatch):
    recipe = load_recipe(crash_recipe)
    needed = rundir.checkpoint_bytes(recipe)
    monkeypatch.setattr(rundir.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9, needed - 1))
    steps = []
    with pytest.raises(MnistlabError, match=r"only .* MB free where the run folder .* is; its "
                                            r"checkpoints need about .* MB"):
        Trainer(recipe, tmp_path / "run", device="cpu", data_dir=str(small_mnist),
                on_step=lambda trainer, done: steps.append(done), **QUIET).run()
    assert steps == []
    assert not (tmp_path / "run").exists()  # the folder it made for the run is gone again


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an open file through /proc")
def test_a_disk_full_between_the_state_and_the_model_names_the_state_saved(tmp_path, crash_recipe,
                                                                          monkeypatch):
    """The first checkpoint's training state is written, then its model file fails: --resume
    continues from that state, and the error must say so, not that nothing was saved."""
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd):
        if f".{MODEL_FILE}." in os.readlink(f"/proc/self/fd/{fd}"):  # the model's temporary file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    trainer = Trainer(load_recipe(crash_recipe), run, seed=1, device="cpu", data_dir=str(data),
                      **QUIET)
    with pytest.raises(MnistlabError) as info:
        trainer.run()
    assert read_training_state(run)[1]["step"] == 11
    assert str(info.value).endswith(f"training stopped at step 11, and the checkpoint of step 11 "
                                    f"in {run} is intact: once that is fixed, continue with: "
                                    f"mnistlab train --resume {run}")
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    result = Trainer.resuming(run, device="cpu", **QUIET).run()
    assert result.steps_done == result.total_steps and load_model(run)[1]["complete"]


def test_a_full_disk_stops_the_run_with_the_last_checkpoint_intact(tmp_path, crash_recipe,
                                                                  monkeypatch):
    """The disk fills up after the first epoch's checkpoint: the next save fails with ENOSPC."""
    recipe = load_recipe(crash_recipe)  # 11 steps an epoch
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    saved = {}
    real_fsync = os.fsync

    def fsync(fd):
        if saved:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def fill_the_disk(trainer, done):
        if done == 15 and not saved:  # after the first checkpoint
            saved.update({name: (run / name).read_bytes() for name in (MODEL_FILE, STATE_FILE)})

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    trainer = Trainer(recipe, run, seed=1, device="cpu", data_dir=str(data),
                      on_step=fill_the_disk, **QUIET)
    with pytest.raises(MnistlabError) as info:
        trainer.run()
    first = read_training_state(run)[1]["step"]
    assert first == 11
    message = str(info.value)
    assert message.startswith(f"cannot write {run / STATE_FILE}: No space left on device (free "
                              f"some space and try again; the previous {STATE_FILE} is unchanged)")
    assert message.endswith(f"training stopped at step {2 * first}, and the checkpoint of step "
                            f"{first} in {run} is intact: once that is fixed, continue with: "
                            f"mnistlab train --resume {run}")
    assert {name: (run / name).read_bytes() for name in saved} == saved
    assert list(run.glob(".*.tmp")) == []
    load_model(run)

    monkeypatch.setattr(fileio.os, "fsync", real_fsync)  # space freed
    result = Trainer.resuming(run, device="cpu", **QUIET).run()
    assert result.steps_done == result.total_steps and load_model(run)[1]["complete"]
    assert safetensors.torch.load_file(str(run / MODEL_FILE)).keys()

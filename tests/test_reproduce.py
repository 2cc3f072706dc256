import json
import signal
import subprocess
import sys
import time

import pytest

from mnistlab.checkpoint import MODEL_META_FILE
from mnistlab.errors import MnistlabError
from mnistlab.recipebook import load_recipe
from mnistlab.reproduction import Outcome, _finished, markdown_table, reproduce
from mnistlab.training.estimate import estimate


def test_verdicts_and_table():
    close = Outcome("r", "001.txt", 0.992, "cpu", accuracies=[0.9912, 0.9916], train_seconds=[1.0, 3.0])
    short = Outcome("r", "001.txt", 0.992, "cpu", accuracies=[0.9895], train_seconds=[1.0])
    none = Outcome("r", "000.txt", None, "cpu", accuracies=[0.98], train_seconds=[1.0])
    assert (close.verdict, short.verdict, none.verdict) == ("yes", "no", "no claim")
    assert abs(close.mean - 0.9914) < 1e-12 and abs(close.spread - 0.000283) < 1e-6
    table = markdown_table([close, short, none])
    assert "| `r` | 001.txt | 99.20% | 99.14% ± 0.03 | 2 | 2.0 s | cpu | yes |" in table
    assert table.count("\n") == 5


def test_reproduce_end_to_end_on_a_shortened_schedule(tmp_path):
    command = [sys.executable, "-m", "mnistlab", "reproduce", "softmax-regression", "opengenus-cnn",
               "--steps", "20", "--seeds", "2", "--out", str(tmp_path / "out"), "--device", "cpu"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("reproducing 2 recipes, 2 seeds each: expect about ")
    report = json.loads((tmp_path / "out" / "reproduction.json").read_text())
    softmax, opengenus = report["outcomes"]
    assert softmax["recipe"] == "softmax-regression" and softmax["claim"] == 0.91
    assert len(softmax["accuracies"]) == 2 and softmax["accuracies"][0] != softmax["accuracies"][1]
    assert 0.5 < softmax["mean"] < 1 and softmax["verdict"] == "n/a (shortened schedule)"
    assert len(opengenus["accuracies_dropout_off"]) == 2  # OpenGenus measured both ways
    table = (tmp_path / "out" / "reproduction.md").read_text()
    assert "`opengenus-cnn`" in table and "dropout off at test" in table
    assert table in first.stdout
    # each run's report, and every run's curves on one page
    assert len(list((tmp_path / "out" / "runs").glob("*/seed-*/report.html"))) == 4
    assert (tmp_path / "out" / "compare.html").is_file() and "the runs compared" in first.stdout
    # run again into the same folder: finished runs are read back, not trained again
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert again.stdout.startswith(f"every run in {tmp_path / 'out'} has finished")
    assert not any(f"training {name} (" in again.stdout for name in ("softmax-regression", "opengenus-cnn"))
    assert json.loads((tmp_path / "out" / "reproduction.json").read_text())["outcomes"][0]["accuracies"] \
        == softmax["accuracies"]


@pytest.mark.parametrize("name, updates, validations", [
    ("softmax-regression", 1000, 1),  # 1,000 steps of 50 end inside the first epoch
    ("deep-mnist-as-printed", 200, 19),  # 20,000 iterations of 50, an update every hundredth
    ("keras-cnn", 5 * 938, 0),  # 5 epochs of 60,000 in batches of 64; no validation split
])
def test_estimate_times_the_recipes_own_steps_and_counts_its_whole_run(name, updates, validations):
    got = estimate(load_recipe(name), "cpu")
    assert got.recipe == name and got.steps == updates
    assert got.eval_images == validations * 5000 + 10_000  # each validation, then the test
    assert 0 < got.step_seconds < 5 and 0 < got.image_seconds < 0.01
    assert got.seconds == pytest.approx(updates * got.step_seconds + got.eval_images * got.image_seconds)


def test_a_run_record_of_another_shape_is_trained_again_not_a_traceback(tmp_path):
    """reproduce reads each finished run's model.json back; valid JSON of another shape was an
    AttributeError or a ValueError in the table's format."""
    record = tmp_path / MODEL_META_FILE
    for text in ("[]", "null", '{"complete": true, "metrics": []}',
                 '{"complete": true, "metrics": {"test": {"accuracy": "high"}, "train_seconds": 1},'
                 ' "device": "cpu"}'):
        record.write_text(text)
        assert _finished(tmp_path) is None, text
    record.write_text(json.dumps({"complete": True, "device": "cpu",
                                  "metrics": {"test": {"accuracy": 0.99}, "train_seconds": 2.5}}))
    assert _finished(tmp_path) == (0.99, 2.5, "cpu")


def test_a_shortened_run_is_never_read_back_as_another_schedule(tmp_path):
    """A finished 5-step run was read back by a reproduction of the full schedule (or of 6
    steps) into the same folder, and judged as that one."""
    five = reproduce(["softmax-regression"], seeds=1, out=tmp_path, device="cpu", steps=5, quiet=True)
    six = reproduce(["softmax-regression"], seeds=1, out=tmp_path, device="cpu", steps=6, quiet=True)
    assert five[0].accuracies != six[0].accuracies  # trained anew, in a folder of its own
    runs = tmp_path / "runs"
    assert {p.name for p in runs.iterdir()} == {"softmax-regression-5-steps", "softmax-regression-6-steps"}
    # a run left where another schedule's belongs (as earlier versions placed them) is refused
    (runs / "softmax-regression-5-steps").rename(runs / "softmax-regression")
    with pytest.raises(MnistlabError, match=r"seed-0 holds a run of another softmax-regression "
                       r"recipe \(its \[train\] differs from today's\): reproduce into another --out"):
        reproduce(["softmax-regression"], seeds=1, out=tmp_path, device="cpu", quiet=True)
    again = reproduce(["softmax-regression"], seeds=1, out=tmp_path, device="cpu", steps=6, quiet=True)
    assert again[0].accuracies == six[0].accuracies  # read back


def test_ctrl_c_says_to_run_the_reproduction_again_not_train_resume(tmp_path):
    """A stopped reproduction told the user to `train --resume` its run folder, which
    finishes that run but never writes the reproduction's tables."""
    out = tmp_path / "my out"
    metrics = out / "runs" / "strided-cnn-3000-steps" / "seed-0" / "metrics.jsonl"
    command = [sys.executable, "-m", "mnistlab", "reproduce", "strided-cnn", "--steps", "3000",
               "--out", str(out), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and '"train"' in metrics.read_text()):  # training has begun
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert ("checkpoint saved. Continue with: mnistlab reproduce strided-cnn --seeds 1 --out "
            f"'{out}' --steps 3000\n") in stdout
    assert stderr == "mnistlab: interrupted\n"

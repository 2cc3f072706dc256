"""The experiment scripts under docs/experiments that drive mnistlab's own engine."""

import json
import subprocess
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).parents[1] / "docs" / "experiments"
TUTORIAL_SPEED = EXPERIMENTS / "tutorial_speed.py"


def test_tutorial_speed_mnistlab_side_takes_turns(tmp_path):
    # 1 + 2 x 600 steps of 50: the epoch ends (1,100 steps) within the second turn, whose
    # checkpoint and validation are not timed
    side = subprocess.Popen([sys.executable, str(TUTORIAL_SPEED), "--mnistlab-side",
                             "softmax-regression", "--steps", "600", "--turns", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    facts = json.loads(side.stdout.readline())
    assert facts["recipe"] == "softmax-regression" and facts["steps"] == 600
    turns = []
    for _ in range(2):
        side.stdin.write("go\n")
        side.stdin.flush()
        turns.append(json.loads(side.stdout.readline())["seconds"])
    assert all(0 < seconds < 60 for seconds in turns)
    assert side.poll() is None  # the run's end waits for the end of stdin
    out, err = side.communicate(timeout=120)
    assert side.returncode == 0, err
    assert out == ""


def test_tutorial_speed_mnistlab_side_refuses_a_stray_line(tmp_path):
    done = subprocess.run([sys.executable, str(TUTORIAL_SPEED), "--mnistlab-side",
                           "softmax-regression", "--steps", "5", "--turns", "2"],
                          input="stop\n", capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "tutorial_speed: the mnistlab side expected 'go' on stdin")


def test_fast_gpu_kernels_runs_its_whole_protocol_on_a_cpu(tmp_path):
    """The GPU script that a lent machine's minutes go to, checked here so that it never meets
    the GPU broken: every way trains and is validated, the rule picks one of them, and the
    pick (with plain fast) is benched on test. Three steps a run: nothing is measured."""
    report = tmp_path / "kernels.json"
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "fast_gpu_kernels.py"), "--json",
                           str(report), "--device", "cpu", "--steps", "3", "--seeds", "1",
                           "--bench-seeds", "1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    labels = [way["label"] for way in result["ways"]]
    assert labels == ["fast", "fast, stem by cuDNN", "fast, compiled", "fast, compiled, stem by cuDNN"]
    assert all(0 <= acc <= 1 for way in result["ways"] for acc in way["validation"])
    assert result["chosen"] in labels
    assert {"fast", result["chosen"]} == set(result["test"])
    assert all(len(bench["accuracies"]) == 1 for bench in result["test"].values())
    assert {"profile_graph", "profile_graph_compiled", "profile_eager"} <= result.keys()


def test_inference_cpu_times_a_shipped_model_against_a_baseline_tree(tmp_path):
    """The script behind BENCHMARKS' inference table: this tree and a baseline (here the same
    source) each measure the shipped softmax regression, and every row gives its accuracy."""
    source = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "inference_cpu.py"), "--models",
                           "softmax-regression", "--repeats", "1", "--rounds", "1",
                           "--baseline", str(source)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == [str(source), "this tree"]
    assert all(row[1].strip() == "softmax-regression" and row[4].strip() == "91.68%" for row in rows)
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)

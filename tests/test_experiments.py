"""The experiment scripts under docs/experiments that drive mnistlab's own engine."""

import json
import subprocess
import sys
from pathlib import Path

TUTORIAL_SPEED = Path(__file__).parents[1] / "docs" / "experiments" / "tutorial_speed.py"


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

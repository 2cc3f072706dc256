"""Hostile models: files that are no files, NaN, ONNX graphs that lie or never end.

The ONNX models are built here with the onnx package's helper API: a plain linear model over
the 784 pixels, then the same with one thing wrong.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from mnistlab import checkpoint
from mnistlab.checkpoint import CheckpointError, load_model, read_file, save_model
from mnistlab.data.registry import load_arrays
from mnistlab.errors import MnistlabError
from mnistlab.inference import InferenceInterrupted, Predictor, onnxio
from mnistlab.inference.export import export_onnx
from mnistlab.models import build_model
from mnistlab.serve import app as serve_app

ONNX_OPSET = 17


@pytest.fixture(scope="module")
def images():
    return load_arrays("mnist").test_images[:4]


def onnx_bytes(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def image_input(batch="N", dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info("image", dtype, [batch, 1, 28, 28])


def linear(classes=10, extra_nodes=(), extra_initializers=(), logits="scores"):
    """Logits from a fixed linear map of the pixels: `extra_nodes` may take "scores" on to the
    output `logits`."""
    weights = np.random.default_rng(0).normal(0, 0.01, (784, classes)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weights"], ["scores"]), *extra_nodes]
    initializers = [helper.make_tensor("weights", TensorProto.FLOAT, weights.shape,
                                       weights.ravel()), *extra_initializers]
    return nodes, initializers, logits


def linear_model(classes=10, batch="N", dtype=TensorProto.FLOAT) -> bytes:
    nodes, initializers, logits = linear(classes)
    if dtype != TensorProto.FLOAT:  # the graph takes another type, then computes in float
        nodes.insert(0, helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT))
        nodes[1] = helper.make_node("Flatten", ["image_f"], ["flat"])
    return onnx_bytes(nodes, [image_input(batch, dtype)],
                      [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [batch, classes])],
                      initializers)


def loop_model(trips: str = "always") -> bytes:
    """A linear model plus a Loop of 10^15 empty iterations (days of work) whose count is
    added to the logits; `trips="at batch 2"` loops only for a batch of 2 images, so that the
    check on load (batches of 1 and 3) passes and a picture of two digits never ends."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["count_in", "one"], ["count_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    constants = [helper.make_tensor("many", TensorProto.INT64, [], [10**15]),
                 helper.make_tensor("true", TensorProto.BOOL, [], [True]),
                 helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    if trips == "always":
        count = [helper.make_node("Identity", ["many"], ["trips"])]
    else:  # (N - 1) * (3 - N) is 1 for a batch of 2, 0 for batches of 1 and 3
        constants += [helper.make_tensor("i0", TensorProto.INT64, [], [0]),
                      helper.make_tensor("i1", TensorProto.INT64, [], [1]),
                      helper.make_tensor("i3", TensorProto.INT64, [], [3])]
        count = [helper.make_node("Shape", ["image"], ["shape"]),
                 helper.make_node("Gather", ["shape", "i0"], ["n"]),
                 helper.make_node("Sub", ["n", "i1"], ["a"]),
                 helper.make_node("Sub", ["i3", "n"], ["b"]),
                 helper.make_node("Mul", ["a", "b"], ["ab"]),
                 helper.make_node("Mul", ["ab", "many"], ["trips"])]
    nodes, initializers, _ = linear(extra_nodes=[
        *count, helper.make_node("Loop", ["trips", "true", "zero"], ["count"], body=body),
        helper.make_node("Add", ["scores", "count"], ["logits"])],
        extra_initializers=constants)
    return onnx_bytes(nodes, [image_input()],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                      initializers)


def write(folder, name, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return path


# ---- interrupting an inference -------------------------------------------------------------


def test_interrupt_stops_an_onnx_inference_in_progress(tmp_path, images):
    predictor = Predictor.load(str(write(tmp_path, "loop.onnx", loop_model("at batch 2"))),
                               backend="onnx")
    outcome = {}

    def infer():
        try:
            outcome["probabilities"] = predictor.probabilities(images[:2])  # loops for days
        except InferenceInterrupted as e:
            outcome["error"] = e

    worker = threading.Thread(target=infer, daemon=True)
    worker.start()
    deadline = time.monotonic() + 60  # a bound on the test, not a timing
    while worker.is_alive() and time.monotonic() < deadline:
        predictor.interrupt()  # again until it lands: the call may not have begun yet
        worker.join(0.2)
    assert not worker.is_alive() and isinstance(outcome.get("error"), InferenceInterrupted)
    # an interrupt stops the calls in progress only: the next one runs as usual
    assert predictor.probabilities(images[:1]).shape == (1, 10)


def test_interrupt_leaves_later_torch_calls_alone(images):
    predictor = Predictor.load("default")
    predictor.interrupt()  # nothing in progress: nothing to stop
    assert predictor.probabilities(images).argmax(1).tolist() == [7, 2, 1, 0]


# ---- the commands that load a model, run as a user runs them --------------------------------

# runs `mnistlab.cli.main` on each argv in one process (importing PyTorch once, not per
# command), catching each one's stderr at the file descriptor, where ONNX Runtime writes too
DRIVER = """
import json, os, sys, tempfile
from mnistlab.cli import main

def run(argv):
    with tempfile.TemporaryFile() as err, open(os.devnull, "w") as out:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            code = main(argv)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        err.seek(0)
        return code, err.read().decode()

results = [run(argv) for argv in json.loads(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def run_commands(tmp_path, argvs, timeout=300):
    """[(exit status, stderr)] of `mnistlab ARGV...` for each argv, all in one process."""
    report = tmp_path / "driver.json"
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs), str(report)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text())


def assert_refused_in_one_line(result, *fragments):
    code, stderr = result
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("mnistlab: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "seven.png"
    Image.fromarray(255 - load_arrays("mnist").test_images[0]).save(path)
    return path


def command(name, target, tmp_path, digit_png):
    """`mnistlab NAME` loading the model `target`, each command as its options want it."""
    return {
        "predict": ["predict", "--model", target, str(digit_png)],
        "evaluate": ["evaluate", target, "--device", "cpu"],
        "summary": ["summary", target],
        "ensemble": ["ensemble", target, "--device", "cpu"],
        "serve": ["serve", "--model", target, "--port", "18317"],
        "export": ["export", target, "--out", str(tmp_path / "out.onnx")],
        "report": ["report", target, "--out", str(tmp_path / "report"), "--device", "cpu"],
    }[name]


COMMANDS = ["predict", "evaluate", "summary", "ensemble", "serve", "export", "report"]


@pytest.mark.parametrize("name", COMMANDS)
def test_special_and_oversized_files_are_refused_by_every_loader(tmp_path, digit_png, name):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # no writer: opening it to read would wait for ever
    huge = tmp_path / "huge"  # a run folder whose model claims more than a checkpoint may be
    huge.mkdir()
    with open(huge / checkpoint.MODEL_FILE, "wb") as f:
        f.truncate(checkpoint.MAX_FILE_BYTES + 1)  # sparse: no disk used
    targets = ["/dev/zero", str(fifo), str(huge)]  # /dev/zero: stat says 0 bytes, it never ends
    results = run_commands(tmp_path, [command(name, t, tmp_path, digit_png) for t in targets])
    for target, result in zip(targets, results):
        if name == "report" and target != str(huge):
            assert_refused_in_one_line(result, "not a run folder")  # its own check, first
        elif target == str(huge):
            assert_refused_in_one_line(result, "too large for a checkpoint")
        else:
            assert_refused_in_one_line(result, target, "not a regular file")
    assert not (tmp_path / "out.onnx").exists()


def test_special_and_oversized_onnx_files_are_refused(tmp_path, digit_png):
    zero = tmp_path / "zero.onnx"
    zero.symlink_to("/dev/zero")  # a name the onnx backend takes for an ONNX file
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as f:
        f.truncate(onnxio.MAX_ONNX_BYTES + 1)
    argvs = [["predict", "--model", str(target), str(digit_png)] for target in (zero, fifo, huge)]
    zero_result, fifo_result, huge_result = run_commands(tmp_path, argvs)
    assert_refused_in_one_line(zero_result, f"{zero}: not a regular file (a character device)")
    assert_refused_in_one_line(fifo_result, f"{fifo}: not a regular file (a FIFO)")
    assert_refused_in_one_line(huge_result, f"{huge}: ", "too large for an ONNX model")


# ---- models that answer NaN -----------------------------------------------------------------


def nan_checkpoints(folder):
    """Two real checkpoints whose weights pass every check but whose answers are NaN: a batch
    norm with a negative running variance, and an input scale of 1e308."""
    torch.manual_seed(0)
    model = build_model("fast-cnn", init="pytorch")
    meta = {"model": {"name": "fast-cnn", "args": {}}}
    negative = folder / "negative-variance"
    model.state_dict()["stem.bn.running_var"].fill_(-1.0)
    save_model(negative, model, meta)
    model.state_dict()["stem.bn.running_var"].fill_(1.0)
    overflow = folder / "input-overflow"
    save_model(overflow, model, {**meta, "input": {"scale": 1e308, "mean": 0.0, "std": 1.0}})
    return [negative, overflow]


def test_a_model_answering_nan_is_refused_on_load_by_every_command(tmp_path, digit_png):
    runs = [(name, target) for name in ("predict", "evaluate", "export", "ensemble")
            for target in nan_checkpoints(tmp_path)]
    results = run_commands(tmp_path, [command(name, str(target), tmp_path, digit_png)
                                      for name, target in runs])
    for (_, target), result in zip(runs, results):
        assert_refused_in_one_line(result, str(target), "NaN or infinite")
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_answering_nan_is_refused_by_the_server_and_the_loaders(tmp_path, monkeypatch):
    for target in nan_checkpoints(tmp_path):
        monkeypatch.setenv(serve_app.ENV_MODEL, str(target))
        with pytest.raises(MnistlabError, match="NaN or infinite"):
            serve_app.app_from_environment()  # what each server worker builds its app with
        for backend in ("torch", "onnx"):
            with pytest.raises(MnistlabError, match="NaN or infinite"):
                Predictor.load(str(target), backend=backend)
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            load_model(target)


def test_a_model_answering_another_number_of_classes_is_refused(tmp_path):
    torch.manual_seed(0)
    model = build_model("softmax", init="pytorch")
    names = [f"class {i}" for i in range(12)]
    save_model(tmp_path, model, {"model": {"name": "softmax", "args": {}}, "class_names": names})
    with pytest.raises(CheckpointError, match=r"with shape \(1, 10\); expected \(1, 12\)"):
        load_model(tmp_path)


# ---- hostile ONNX graphs --------------------------------------------------------------------


def nan_model() -> bytes:
    nodes, initializers, _ = linear(
        extra_nodes=[helper.make_node("Mul", ["scores", "nan"], ["logits"])],
        extra_initializers=[helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])])
    return onnx_bytes(nodes, [image_input()],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                      initializers)


def one_dimensional_output() -> bytes:
    nodes, initializers, _ = linear(extra_nodes=[
        helper.make_node("ReduceSum", ["scores", "axis"], ["logits"], keepdims=0)],
        extra_initializers=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    return onnx_bytes(nodes, [image_input()],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"])],
                      initializers)


HOSTILE_ONNX = {  # file name: (the graph, what the one line says)
    "fixed-batch.onnx": (lambda: linear_model(batch=1), "a fixed batch of 1"),
    "uint8.onnx": (lambda: linear_model(dtype=TensorProto.UINT8),
                   "expected one input of float32 images [N, 1, 28, 28], N free; "
                   "the model takes image: tensor(uint8) [?, 1, 28, 28]"),
    "double.onnx": (lambda: linear_model(dtype=TensorProto.DOUBLE), "tensor(double)"),
    "thousand-classes.onnx": (lambda: linear_model(classes=1000),
                              "expected one float32 output [N, 10], a value per class; "
                              "the model returns scores: tensor(float) [?, 1000]"),
    "one-dimensional.onnx": (one_dimensional_output, "the model returns logits: tensor(float) [?]"),
    "nan.onnx": (nan_model, "NaN or infinite"),
    "long-loop.onnx": (lambda: loop_model("always"), "more than 5 s on 1 MNIST test image"),
}


def test_hostile_onnx_models_are_refused_in_one_line(tmp_path, digit_png):
    paths = [write(tmp_path, name, build()) for name, (build, _) in HOSTILE_ONNX.items()]
    results = run_commands(tmp_path, [["predict", "--model", str(p), str(digit_png)]
                                      for p in paths])
    for path, (_, message), result in zip(paths, HOSTILE_ONNX.values(), results):
        assert_refused_in_one_line(result, str(path), message)
    # the plain graph they all start from is fine: what is refused is what each one adds
    plain = Predictor.load(str(write(tmp_path, "plain.onnx", linear_model())), backend="onnx")
    assert plain.probabilities(load_arrays("mnist").test_images[:5]).shape == (5, 10)


# ---- Ctrl-C during a long inference ---------------------------------------------------------


def test_ctrl_c_stops_predict_during_a_long_onnx_inference(tmp_path, digit_png):
    model = write(tmp_path, "loop.onnx", loop_model("at batch 2"))
    mnist = load_arrays("mnist").test_images
    two_digits = np.pad(np.concatenate([255 - mnist[1], 255 - mnist[2]], axis=1), 10,
                        constant_values=255)
    number = tmp_path / "two-digits.png"
    Image.fromarray(two_digits).save(number)
    # the seven is read at once; the two digits are one batch of 2: a Loop of days
    process = subprocess.Popen([sys.executable, "-m", "mnistlab", "predict", "--model",
                                str(model), str(digit_png), str(number)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = process.stdout.readline()  # the seven's line: the two digits' run has begun
        assert "seven.png: " in first, process.stderr.read() if not first else first
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)  # the test's own bound; the claim is below
        stopped_after = time.monotonic() - sent
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert code == 130 and stopped_after < 2.0, (code, stopped_after, stderr)
    assert stderr.strip() == "mnistlab: interrupted"


# ---- what mnistlab writes, it reads back ----------------------------------------------------


def small_model():
    torch.manual_seed(0)
    return build_model("softmax", init="pytorch"), {"model": {"name": "softmax", "args": {}}}


def test_a_checkpoint_the_reader_would_refuse_is_never_written(tmp_path):
    model, meta = small_model()
    path = save_model(tmp_path, model, meta)
    before = path.read_bytes(), (tmp_path / checkpoint.MODEL_META_FILE).read_bytes()
    deep = {}
    for _ in range(100_000):  # deeper than JSON is written or read
        deep = {"x": deep}
    too_long = {**meta, "recipe": {"description": "x" * (checkpoint.MAX_META_CHARS + 1)}}
    for bad, message in ((too_long, "more than the 1,048,576 allowed"),
                         ({**meta, "recipe": deep}, "cannot be written as JSON")):
        with pytest.raises(CheckpointError, match=message) as refused:
            save_model(tmp_path, model, bad)
        assert "nothing was written" in str(refused.value) and "\n" not in str(refused.value)
        after = path.read_bytes(), (tmp_path / checkpoint.MODEL_META_FILE).read_bytes()
        assert after == before  # the previous checkpoint is untouched
    assert load_model(tmp_path)[1]["model"]["name"] == "softmax"


def test_a_checkpoint_larger_than_the_reader_takes_is_never_written(tmp_path, monkeypatch):
    model, meta = small_model()
    path = save_model(tmp_path, model, meta)
    size = path.stat().st_size
    monkeypatch.setattr(checkpoint, "MAX_FILE_BYTES", size - 1)  # the one bound, for both sides
    with pytest.raises(CheckpointError, match="too large for a checkpoint"):
        read_file(path)
    with pytest.raises(CheckpointError, match=f"{size:,} bytes, more than the {size - 1:,}"):
        save_model(tmp_path / "other", model, meta)
    assert not (tmp_path / "other" / checkpoint.MODEL_FILE).exists()


def test_an_onnx_file_the_reader_would_refuse_is_never_exported(tmp_path, monkeypatch):
    model, meta = small_model()
    save_model(tmp_path / "run", model, meta)
    report = export_onnx(tmp_path / "run", tmp_path / "small.onnx", verify_images=10)
    monkeypatch.setattr(onnxio, "MAX_ONNX_BYTES", report.size_bytes - 1)
    with pytest.raises(MnistlabError, match="too large for an ONNX model"):
        Predictor.load(str(tmp_path / "small.onnx"), backend="onnx")
    with pytest.raises(MnistlabError, match="cannot export to ONNX: the file would be"):
        export_onnx(tmp_path / "run", tmp_path / "again.onnx", verify_images=10)
    assert not (tmp_path / "again.onnx").exists()


def nan_for_two_images_model() -> bytes:
    """A linear model that answers NaN only when given exactly two images at once: it passes
    the check on load (batches of 1 and 3) and fails later, as a model can."""
    constants = [helper.make_tensor("i0", TensorProto.INT64, [1], [0]),
                 helper.make_tensor("two", TensorProto.INT64, [1], [2]),
                 helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]),
                 helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    spoil = [helper.make_node("Shape", ["image"], ["shape"]),
             helper.make_node("Gather", ["shape", "i0"], ["n"]),
             helper.make_node("Equal", ["n", "two"], ["is_two"]),
             helper.make_node("Where", ["is_two", "nan", "zero"], ["extra"]),
             helper.make_node("Add", ["scores", "extra"], ["logits"])]
    nodes, initializers, logits = linear(extra_nodes=spoil, extra_initializers=constants,
                                         logits="logits")
    return onnx_bytes(nodes, [image_input()],
                      [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", 10])],
                      initializers)


def test_a_model_that_fails_on_some_images_after_its_check_is_one_clear_error(tmp_path, images,
                                                                               digit_png):
    path = tmp_path / "nan-at-2.onnx"
    path.write_bytes(nan_for_two_images_model())
    predictor = Predictor.load(str(path), backend="onnx")  # passes the check on load
    assert predictor.probabilities(images[:3]).shape == (3, 10)
    with pytest.raises(MnistlabError, match=r"NaN or infinite probabilities for 2 of 2 image"):
        predictor.probabilities(images[:2])
    # predict says so for the file whose digits the model cannot read, and goes on
    gap = np.zeros((28, 8), np.uint8)
    two_digits = tmp_path / "two-digits.png"
    Image.fromarray(255 - np.pad(np.concatenate([images[0], gap, images[1]], axis=1), 8)).save(two_digits)
    done = subprocess.run([sys.executable, "-m", "mnistlab", "predict", "--model", str(path),
                           str(digit_png), str(two_digits)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done
    assert done.stdout.startswith(f"{digit_png}: ") and "nan" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        f"mnistlab: error: {two_digits}: the model gives NaN or infinite probabilities for 2 of 2 "
        "image(s): it cannot read them"]


def test_the_server_answers_a_model_failure_as_model_error(tmp_path, images):
    from fastapi.testclient import TestClient

    from mnistlab.serve.app import create_app

    path = tmp_path / "nan-at-2.onnx"
    path.write_bytes(nan_for_two_images_model())
    with TestClient(create_app(Predictor.load(str(path), backend="onnx"))) as client:
        ok = client.post("/api/predict", json={"pixels": images[0].tolist()})
        gap = np.zeros((28, 8), np.uint8)
        number = np.pad(np.concatenate([images[0], gap, images[1]], axis=1), 8)
        png = tmp_path / "n.png"
        Image.fromarray(255 - number).save(png)
        failed = client.post("/api/predict", content=png.read_bytes(),
                             headers={"Content-Type": "image/png"})
    assert ok.status_code == 200
    assert failed.status_code == 500 and failed.json() == {
        "detail": "the model gives NaN or infinite probabilities for 2 of 2 image(s): it cannot "
                  "read them", "error": "model_error"}


def test_requests_batched_with_one_the_model_fails_on_are_answered_alone(tmp_path, images):
    """Two requests share a model call of two images, which this model answers with NaN: each
    is then computed alone, and both get their answer."""
    import asyncio

    from mnistlab.serve.batcher import Batcher

    path = tmp_path / "nan-at-2.onnx"
    path.write_bytes(nan_for_two_images_model())
    real = Predictor.load(str(path), backend="onnx")

    class FirstCallHeld:  # the real predictor; its first call waits, so that two requests queue
        info = real.info

        def __init__(self):
            self.calls, self.release = [], threading.Event()

        def probabilities(self, batch):
            self.calls.append(len(batch))
            if len(self.calls) == 1:
                self.release.wait(10)
            return real.probabilities(batch)

        def interrupt(self):
            real.interrupt()

    held = FirstCallHeld()
    batcher = Batcher(held)

    async def three_requests():
        first = asyncio.ensure_future(batcher.probabilities(images[:1]))
        while not held.calls:  # the model's thread holds the first request
            await asyncio.sleep(0.01)
        later = [asyncio.ensure_future(batcher.probabilities(images[i:i + 1])) for i in (1, 2)]
        await asyncio.sleep(0.1)  # both queued behind the first
        held.release.set()
        return await asyncio.gather(first, *later)

    try:
        answers = asyncio.run(three_requests())
    finally:
        batcher.close()
    assert held.calls == [1, 2, 1, 1]  # the two queued ones together, then each alone
    assert [a.shape for a in answers] == [(1, 10)] * 3 and all(np.isfinite(a).all() for a in answers)

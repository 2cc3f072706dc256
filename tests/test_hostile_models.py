"""Hostile models: files that are no files, NaN, ONNX graphs that lie or never end.

The ONNX models are built here with the onnx package's helper API: a plain linear model over
the 784 pixels, then the same with one thing wrong.
"""

import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mnistlab.data.registry import load_arrays
from mnistlab.inference import Predictor
from mnistlab.inference.errors import InferenceInterrupted

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

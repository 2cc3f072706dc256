"""Several models served at once: `GET /api/models`, `?model=NAME` on predict and model, and
`mnistlab serve --model A --model B`, ONNX Runtime by default."""

import json
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from test_serve import HOSTILE, chunks, png

from mnistlab.inference.predictor import Predictor
from mnistlab.serve import app as serve_app
from mnistlab.serve import create_app
from mnistlab.serve.app import MAX_BODY_BYTES
from mnistlab.serve.served import model_name, unique_names

NAMES = ["keras-cnn", "softmax-regression", "default"]


@pytest.fixture(scope="module")
def predictors():
    # the backends mixed on purpose: the list says which computes each model's predictions
    return {"keras-cnn": Predictor.load("keras-cnn", backend="onnx"),
            "softmax-regression": Predictor.load("softmax-regression", backend="torch"),
            "default": Predictor.load("default", backend="onnx")}


@pytest.fixture(scope="module")
def client(predictors):
    with TestClient(create_app(predictors)) as c:
        yield c


def test_the_models_are_listed_in_order_the_first_the_default(client):
    r = client.get("/api/models")
    assert r.status_code == 200
    answer = r.json()
    assert answer["default"] == "keras-cnn"
    assert [m["name"] for m in answer["models"]] == NAMES
    assert [m["default"] for m in answer["models"]] == [True, False, False]
    assert [m["backend"] for m in answer["models"]] == ["onnx", "torch", "onnx"]
    assert [m["model"] for m in answer["models"]] == ["keras-cnn", "softmax", "mnistlab-cnn"]
    assert [m["parameters"] for m in answer["models"]] == [93_322, 7_850, 307_370]
    assert [m["test_accuracy"] for m in answer["models"]] == [0.9914, 0.9168, 0.9974]
    for m in answer["models"]:
        assert m["class_names"] == [str(i) for i in range(10)]
        assert m["checkpoint"] == f"pretrained/{m['name']}/model.safetensors"
    r = client.get("/api/model", params={"model": "softmax-regression"})
    assert r.json() == answer["models"][1]
    assert client.get("/api/model").json() == answer["models"][0]


def test_each_model_reads_the_digit_it_is_asked_for(client, mnist):
    images, labels = mnist
    body = dict(content=png(images[0]), headers={"Content-Type": "image/png"})
    readings = {}
    for name in NAMES:
        r = client.post("/api/predict", params={"model": name}, **body)
        assert r.status_code == 200, r.text
        assert r.json()["digit"] == int(labels[0])
        readings[name] = r.json()["confidence"]
    assert len(set(readings.values())) == 3  # three models, three different probabilities
    r = client.post("/api/predict", **body)  # the default: keras-cnn
    assert r.json()["confidence"] == readings["keras-cnn"]


def test_top_k_goes_up_to_the_model_s_classes(client, mnist):
    images, _ = mnist
    pixels = {"pixels": images[0].tolist()}
    r = client.post("/api/predict", params={"model": "softmax-regression", "top_k": 10}, json=pixels)
    assert r.status_code == 200 and len(r.json()["top_k"]) == 10
    assert abs(sum(t["probability"] for t in r.json()["top_k"]) - 1) < 1e-4
    assert sorted(t["digit"] for t in r.json()["top_k"]) == list(range(10))
    r = client.post("/api/predict", params={"top_k": 11}, json=pixels)
    assert r.status_code == 422 and r.json()["error"] == "bad_request"
    assert "from 1 to 10" in r.json()["detail"]


@pytest.mark.parametrize("name", ["nope", "", "KERAS-CNN", "../default", "default\x00",
                                  "x" * 10_000, "keras-cnn,default"])
def test_an_unknown_model_is_a_422_that_names_the_models(client, mnist, name):
    r = client.post("/api/predict", params={"model": name}, json={"pixels": mnist[0][0].tolist()})
    assert r.status_code == 422 and r.json()["error"] == "unknown_model"
    assert "keras-cnn, softmax-regression, default" in r.json()["detail"]
    assert len(r.json()["detail"]) < 400  # a long name is not echoed whole
    r = client.get("/api/model", params={"model": name})
    assert r.status_code == 422 and r.json()["error"] == "unknown_model"


@pytest.mark.parametrize("what,kwargs,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_to_a_chosen_model_get_the_same_4xx(client, what, kwargs, status, code):
    kwargs = dict(kwargs)  # shared with test_serve.py: never changed here
    params = {**kwargs.pop("params", {}), "model": "softmax-regression"}
    if what == "a streamed body over the limit":  # a generator is read once: a fresh one
        kwargs["content"] = chunks(MAX_BODY_BYTES + 1)
    r = client.post("/api/predict", params=params, **kwargs)
    assert (r.status_code, r.json()["error"]) == (status, code), (what, r.text)
    assert client.get("/api/health").status_code == 200


def test_a_hostile_body_to_an_unknown_model_is_refused_for_the_model():
    # the model is chosen before the body is read: a 10 MB body for a model not served is not read
    with TestClient(create_app(Predictor.load("softmax-regression"))) as c:
        r = c.post("/api/predict?model=nope", content=b"\0" * 1000, headers={"Content-Type": "image/png"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_model"
        assert "softmax-regression" in r.json()["detail"]


def test_the_names_clients_pick_models_by(tmp_path):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    assert model_name("keras-cnn") == "keras-cnn"
    assert model_name(str(tmp_path / "runs" / "mine")) == "mine"
    assert model_name(str(tmp_path / "runs" / "mine" / "model.safetensors")) == "mine"
    assert model_name("exports/fast.onnx") == "fast"
    assert unique_names(["best", "best", "a", "best"]) == ["best", "best-2", "a", "best-3"]


def test_the_schema_documents_the_models(client):
    spec = client.get("/openapi.json").json()
    parameters = {p["name"]: p for p in spec["paths"]["/api/predict"]["post"]["parameters"]}
    assert parameters["model"]["schema"]["enum"] == NAMES
    assert parameters["top_k"]["schema"]["maximum"] == 10
    assert "/api/models" in spec["paths"]


def test_each_worker_serves_the_models_serve_names(monkeypatch):
    # `serve --workers N` hands its models to each worker process as a JSON list
    monkeypatch.setenv(serve_app.ENV_MODEL, json.dumps(["softmax-regression", "keras-cnn"]))
    monkeypatch.setenv(serve_app.ENV_BACKEND, "torch")
    app = serve_app.app_from_environment()
    with TestClient(app) as c:
        answer = c.get("/api/models").json()
    assert [(m["name"], m["backend"]) for m in answer["models"]] == [
        ("softmax-regression", "torch"), ("keras-cnn", "torch")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_takes_several_models_and_runs_onnx_by_default(mnist):
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "serve", "--port", str(port), "--model", "keras-cnn",
         "--model", "softmax-regression"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert ("serving models keras-cnn (keras-cnn, onnx), softmax-regression (softmax, onnx) "
                f"at http://127.0.0.1:{port}/") in line, line + server.stderr.read()
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/models").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert [(m["name"], m["backend"]) for m in answer["models"]] == [
            ("keras-cnn", "onnx"), ("softmax-regression", "onnx")]
        r = httpx.post(f"http://127.0.0.1:{port}/api/predict?model=softmax-regression",
                       json={"pixels": mnist[0][0].tolist()})
        assert r.status_code == 200 and r.json()["digit"] == int(mnist[1][0])
    finally:
        server.terminate()
        server.wait(10)


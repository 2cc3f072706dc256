"""`POST /api/explain`: each convolutional layer's feature maps and a saliency map for one digit
(a softmax regression's templates instead of layers), as PNG images, bounded in time, and the
same refusals as `/api/predict`."""

import base64
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import HOSTILE, chunks, png

from mnistlab.inference.export import export_onnx
from mnistlab.inference.predictor import Predictor
from mnistlab.serve import create_app
from mnistlab.serve.app import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def predictors():
    # predictions on ONNX Runtime, as `serve` runs them: explanations use PyTorch all the same
    return {name: Predictor.load(name, backend="onnx")
            for name in ("keras-cnn", "softmax-regression", "default")}


@pytest.fixture(scope="module")
def client(predictors):
    with TestClient(create_app(predictors)) as c:
        yield c


def image(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture)


def test_a_cnn_s_feature_maps_and_saliency(client, mnist):
    images, labels = mnist
    r = client.post("/api/explain", json={"pixels": images[0].tolist()})  # keras-cnn, the default
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "keras-cnn" and answer["digit"] == int(labels[0])
    predicted = client.post("/api/predict", json={"pixels": images[0].tolist()}).json()
    assert abs(answer["probability"] - predicted["confidence"]) < 1e-4  # PyTorch agrees with ONNX
    assert (image(answer["input"]) == images[0]).all()
    saliency = image(answer["saliency"])
    assert saliency.shape == (28, 28) and saliency.max() == 255
    # the gradient lies where the ink is and around it, not in the corners
    ink = images[0] > 0
    assert saliency[ink].mean() > 4 * saliency[:4, :4].mean()
    shapes = [(m["name"], m["channels"], m["height"], m["width"]) for m in answer["layers"]]
    assert shapes == [("conv1", 32, 26, 26), ("conv2", 64, 11, 11), ("conv3", 64, 3, 3)]
    for layer in answer["layers"]:
        mosaic = image(layer["image"])
        rows = -(-layer["channels"] // layer["columns"])
        assert mosaic.shape == (rows * (layer["height"] + 1) - 1, layer["columns"] * (layer["width"] + 1) - 1)
    assert answer["templates"] is None


def test_the_softmax_regression_shows_its_ten_templates(client, mnist):
    images, labels = mnist
    r = client.post("/api/explain?model=softmax-regression", content=png(images[1]),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["digit"] == int(labels[1]) and answer["layers"] == []
    templates = [image(t) for t in answer["templates"]]
    assert len(templates) == 10 and all(t.shape == (28, 28, 3) for t in templates)
    assert image(answer["saliency"]).shape == (28, 28)


def test_the_shipped_model_s_six_conv_layers(client, mnist):
    r = client.post("/api/explain?model=default", json={"pixels": mnist[0][2].tolist()})
    assert r.status_code == 200 and r.json()["digit"] == int(mnist[1][2])
    assert [m["channels"] for m in r.json()["layers"]] == [32, 32, 64, 64, 128, 128]


def test_one_digit_of_a_number(client, mnist):
    images, labels = mnist
    row = np.concatenate([images[0], np.zeros((28, 6), np.uint8), images[1]], axis=1)
    body = dict(content=png(np.pad(row, 10)), headers={"Content-Type": "image/png"})
    assert client.post("/api/explain", **body).json()["digit"] == int(labels[0])
    assert client.post("/api/explain?digit=1", **body).json()["digit"] == int(labels[1])
    for digit, detail in (("2", "holds 2 digits"), ("-1", "whole number"), ("x", "whole number"),
                          ("100", "whole number")):
        r = client.post(f"/api/explain?digit={digit}", **body)
        assert r.status_code == 422 and r.json()["error"] == "bad_request"
        assert detail in r.json()["detail"]


def test_unknown_models_and_models_from_onnx_files(client, tmp_path, mnist):
    pixels = {"pixels": mnist[0][0].tolist()}
    r = client.post("/api/explain?model=nope", json=pixels)
    assert r.status_code == 422 and r.json()["error"] == "unknown_model"
    path = tmp_path / "shipped.onnx"
    export_onnx("default", path, verify_images=10)
    with TestClient(create_app(Predictor.load(str(path), backend="onnx"))) as c:
        r = c.post("/api/explain", json=pixels)
        assert r.status_code == 422 and r.json()["error"] == "not_explainable"
        assert "ONNX file" in r.json()["detail"]
        assert c.post("/api/predict", json=pixels).status_code == 200


@pytest.mark.parametrize("what,kwargs,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_get_the_same_4xx_as_predict(client, what, kwargs, status, code):
    kwargs = dict(kwargs)  # shared with test_serve.py: never changed here
    params = {k: v for k, v in kwargs.pop("params", {}).items() if k != "top_k"}
    if what == "top_k of 0":  # predict's own parameter: explain has `digit` instead
        params = {"digit": "0x"}
    if what == "a streamed body over the limit":  # a generator is read once: a fresh one
        kwargs["content"] = chunks(MAX_BODY_BYTES + 1)
    r = client.post("/api/explain", params={**params, "model": "softmax-regression"}, **kwargs)
    assert (r.status_code, r.json()["error"]) == (status, code), (what, r.text)
    assert client.get("/api/health").status_code == 200


def test_an_explanation_is_bounded_in_time_like_a_prediction(predictors, mnist):
    app = create_app({"keras-cnn": predictors["keras-cnn"]}, model_timeout=0.3)
    explainer = app.state.explainer
    slow = explainer._explain

    def stuck(name, image):
        time.sleep(1.0)
        return slow(name, image)

    explainer._explain = stuck
    pixels = {"pixels": mnist[0][0].tolist()}
    with TestClient(app) as c:
        began = time.monotonic()
        r = c.post("/api/explain", json=pixels)
        assert r.status_code == 503 and r.json()["error"] == "model_timeout"
        assert time.monotonic() - began < 0.9
        assert c.post("/api/predict", json=pixels).status_code == 200  # predictions go on
        explainer._explain = slow
        time.sleep(0.8)  # the stuck one ends
        assert c.post("/api/explain", json=pixels).status_code == 200

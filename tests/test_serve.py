"""The HTTP API against the real shipped model: real MNIST digits in, the right digits out, and
every kind of hostile request answered with a 4xx and a message, the server going on after it."""

import http.server
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.serve import create_app
from mnistlab.serve.app import MAX_BODY_BYTES, MAX_JSON_BYTES, public_info
from mnistlab.serve.loadtest import loadtest
from mnistlab.serve.server import running_server


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor)) as c:
        yield c


def png(pixels: np.ndarray, paper: bool = True) -> bytes:
    """A PNG of MNIST pixels, by default as a person's scan would be: dark ink on white."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels if paper else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def ok(client):
    """The server still answers normally."""
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def check_reading(answer, label=None):
    assert set(answer) >= {"digit", "confidence", "top_k", "input", "number", "digits"}
    if label is not None:
        assert answer["digit"] == label and answer["number"] == str(label)
    assert 0 < answer["confidence"] <= 1
    probs = [t["probability"] for t in answer["top_k"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert answer["top_k"][0] == {"digit": answer["digit"], "probability": answer["confidence"]}
    seen = np.array(answer["input"])
    assert seen.shape == (28, 28) and seen.min() >= 0 and seen.max() <= 255 and seen.max() > 100
    assert len(answer["digits"]) == 1 and answer["digits"][0]["digit"] == answer["digit"]


# ---- reading digits ------------------------------------------------------------------------


def test_predict_raw_png_of_real_mnist_digits(client, mnist):
    images, labels = mnist
    for i in range(10):
        r = client.post("/api/predict", content=png(images[i]), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        check_reading(r.json(), int(labels[i]))


def test_predict_multipart_upload_light_on_dark(client, mnist):
    images, labels = mnist
    r = client.post("/api/predict", files={"file": ("digit.png", png(images[3], paper=False), "image/png")})
    assert r.status_code == 200, r.text
    check_reading(r.json(), int(labels[3]))
    # a large photo-sized picture is read in the thread pool, off the event loop
    big = np.kron(images[5], np.ones((30, 30), np.uint8))  # 840 x 840
    r = client.post("/api/predict", files={"file": ("big.png", png(big), "image/png")})
    assert r.status_code == 200, r.text
    check_reading(r.json(), int(labels[5]))


def test_predict_json_pixels(client, mnist):
    images, labels = mnist
    r = client.post("/api/predict", json={"pixels": images[1].tolist()})
    assert r.status_code == 200, r.text
    check_reading(r.json(), int(labels[1]))
    assert r.json()["input"] == images[1].tolist()  # pixels are the model's input as they are
    scaled = (images[2] / 255.0).tolist()  # 0-1 works too
    r = client.post("/api/predict", json={"pixels": scaled}, params={"top_k": 5})
    assert r.status_code == 200 and r.json()["digit"] == int(labels[2])
    assert len(r.json()["top_k"]) == 5


def test_predict_number_of_several_digits(client, mnist):
    images, labels = mnist
    picks = [0, 1, 2, 4]  # a 7, a 2, a 1 and a 4 side by side with a little paper between
    gap = np.zeros((28, 6), np.uint8)
    row = np.concatenate([x for i in picks for x in (images[i], gap)], axis=1)
    page = np.pad(row, 10)
    r = client.post("/api/predict", content=png(page), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    answer = r.json()
    expected = "".join(str(int(labels[i])) for i in picks)
    assert answer["number"] == expected
    assert answer["digit"] is None and answer["input"] is None and answer["top_k"] == []
    assert [d["digit"] for d in answer["digits"]] == [int(c) for c in expected]
    for d in answer["digits"]:
        assert np.array(d["input"]).shape == (28, 28) and len(d["top_k"]) == 3
    assert 0 < answer["confidence"] <= min(d["confidence"] for d in answer["digits"])


def test_empty_drawing_is_a_422_never_a_guess(client):
    white = np.full((280, 560), 255, np.uint8)
    r = client.post("/api/predict", content=png(255 - white), headers={"Content-Type": "image/png"})
    assert r.status_code == 422
    assert r.json()["error"] == "empty_image" and "no digit found" in r.json()["detail"]
    r = client.post("/api/predict", json={"pixels": [[0] * 28] * 28})
    assert r.status_code == 422 and r.json()["error"] == "empty_image"
    ok(client)


# ---- hostile requests ----------------------------------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG")  # a few kB for millions of pixels
    return buffer.getvalue()


def chunks(total: int, size: int = 1 << 20):
    while total > 0:
        yield b"\x89PNG" + b"\0" * (min(size, total) - 4)
        total -= size


HOSTILE = [
    # (what, request kwargs, status, error code)
    ("not an image", dict(content=b"hello, I am text", headers={"Content-Type": "image/png"}), 422, "bad_image"),
    ("an empty body", dict(content=b"", headers={"Content-Type": "image/png"}), 400, "bad_request"),
    ("an empty JSON body", dict(content=b"", headers={"Content-Type": "application/json"}), 400, "bad_request"),
    ("a text content type", dict(content=b"7", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    ("no content type", dict(content=b"7"), 415, "unsupported_media_type"),
    ("invalid JSON", dict(content=b'{"pixels": [[', headers={"Content-Type": "application/json"}), 400, "bad_json"),
    ("JSON nested deep", dict(content=b"[" * 100_000, headers={"Content-Type": "application/json"}), 400, "bad_json"),
    ("JSON not UTF-8", dict(content=b'{"pixels": "\xff"}', headers={"Content-Type": "application/json"}), 400, "bad_json"),
    ("JSON without pixels", dict(json={"image": [1, 2, 3]}), 422, "bad_pixels"),
    ("JSON a list", dict(json=[[0] * 28] * 28), 422, "bad_pixels"),
    ("ragged pixels", dict(json={"pixels": [[0] * 28] * 27 + [[0] * 5]}), 422, "bad_pixels"),
    ("pixels 27x27", dict(json={"pixels": [[0] * 27] * 27}), 422, "bad_pixels"),
    ("pixels not numbers", dict(json={"pixels": [["a"] * 28] * 28}), 422, "bad_pixels"),
    ("pixels out of range", dict(json={"pixels": [[300] * 28] * 28}), 422, "bad_pixels"),
    ("pixels negative", dict(json={"pixels": [[-1] * 28] * 28}), 422, "bad_pixels"),
    ("pixels NaN", dict(content=("{\"pixels\": [" + ",".join(["[" + ",".join(["NaN"] * 28) + "]"] * 28) + "]}").encode(),
                        headers={"Content-Type": "application/json"}), 400, "bad_json"),
    ("pixels infinite", dict(content=("{\"pixels\": [" + ",".join(["[" + ",".join(["1e999"] * 28) + "]"] * 28) + "]}").encode(),
                             headers={"Content-Type": "application/json"}), 422, "bad_pixels"),
    ("JSON over its limit", dict(content=b" " * (MAX_JSON_BYTES + 1), headers={"Content-Type": "application/json"}), 413, "too_large"),
    ("a body over the limit", dict(content=b"\0" * (MAX_BODY_BYTES + 1), headers={"Content-Type": "image/png"}), 413, "too_large"),
    ("a streamed body over the limit", dict(content=chunks(MAX_BODY_BYTES + 1), headers={"Content-Type": "image/png"}), 413, "too_large"),
    ("a decompression bomb", dict(content=bomb_png(20_000, 20_000), headers={"Content-Type": "image/png"}), 413, "too_large"),
    ("multipart without a file", dict(data={"pixels": "1"}, files={"other": ("a.png", b"x", "image/png")}), 422, "bad_request"),
    ("multipart with no boundary", dict(content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}), 400, "bad_request"),
    ("multipart empty file", dict(files={"file": ("a.png", b"", "image/png")}), 400, "bad_request"),
    ("top_k of 0", dict(json={"pixels": [[0] * 28] * 28}, params={"top_k": "0"}), 422, "bad_request"),
]


@pytest.mark.parametrize("what,kwargs,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_clear_4xx(client, what, kwargs, status, code):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, (what, r.status_code, r.text)
    body = r.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in r.text
    ok(client)


def test_truncated_and_huge_images(client, mnist):
    images, _ = mnist
    whole = png(np.kron(images[0], np.ones((8, 8), np.uint8)))
    for cut in (len(whole) // 2, 40, 8):
        r = client.post("/api/predict", content=whole[:cut], headers={"Content-Type": "image/png"})
        assert r.status_code == 422 and r.json()["error"] == "bad_image", (cut, r.text)
    r = client.post("/api/predict", files={"file": ("big.png", bomb_png(5000, 4000), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"], r.text  # 20 M > 16 M
    ok(client)


def test_a_bug_is_a_clean_500_and_the_server_goes_on(predictor, mnist):
    class Flaky:
        info = predictor.info
        calls = 0

        def probabilities(self, images):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("a bug")
            return predictor.probabilities(images)

    images, labels = mnist
    with TestClient(create_app(Flaky())) as c:
        r = c.post("/api/predict", json={"pixels": images[0].tolist()})
        assert r.status_code == 500 and r.json()["error"] == "internal" and "a bug" not in r.text
        r = c.post("/api/predict", json={"pixels": images[0].tolist()})
        assert r.status_code == 200 and r.json()["digit"] == int(labels[0])


# ---- the other routes ----------------------------------------------------------------------


def test_health_model_docs_and_page(client, predictor):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["model_loaded"] is True
    r = client.get("/api/model")
    assert r.status_code == 200
    # everything the predictor says of itself, but where the server keeps its files
    assert r.json() == {**json.loads(json.dumps(predictor.info)), "name": "default",
                        "default": True, "checkpoint": "pretrained/default/model.safetensors"}
    assert str(Path(predictor.info["checkpoint"]).parent) not in r.text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/png"} <= set(content)
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "text/html" in page.headers["content-type"]
    for asset in ("static/app.js", "static/app.css"):
        assert client.get("/" + asset).status_code == 200
    r = client.get("/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.get("/api/predict")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_model_info_never_shows_server_paths(tmp_path):
    info = {"model": "fast-cnn", "checkpoint": str(tmp_path / "runs" / "mine" / "model.safetensors")}
    assert public_info(info) == {"model": "fast-cnn", "checkpoint": "model.safetensors"}
    assert public_info({**info, "checkpoint": "exports/model.onnx"})["checkpoint"] == "model.onnx"


# ---- the command and the load test ---------------------------------------------------------


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "mnistlab", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_serve_refuses_a_busy_port_and_a_missing_model(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = run_cli("serve", "--port", busy.getsockname()[1])
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "already in use" in out.stderr, out.stderr
    out = run_cli("serve", "--model", tmp_path / "nothing")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no such" in out.stderr


def test_loadtest_against_a_real_server(predictor):
    with running_server(create_app(predictor)) as url:
        result = loadtest(url, seconds=1, warmup=0.2, concurrency=4)
    assert result.requests > 10 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms
    with pytest.raises(MnistlabError, match="this machine"):
        loadtest("http://192.0.2.1:8000", seconds=1)


def test_loadtest_json_prints_the_figures_or_writes_them_beside_the_table(predictor, tmp_path,
                                                                          capsys):
    """--json alone prints them, as evaluate's, predict's and ensemble's --json do; it took a
    file name only."""
    with running_server(create_app(predictor)) as url:
        timed = [url, "--seconds", "0.5", "--warmup", "0.1", "--concurrency", "2"]
        assert main(["loadtest", *timed, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert main(["loadtest", *timed, "--json", str(tmp_path / "load.json")]) == 0
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "load.json").read_text())
    assert printed.keys() == written.keys() and printed["requests"] > 0 and written["errors"] == 0
    assert f"written: {tmp_path / 'load.json'}" in out and "{" not in out


def test_loadtest_says_at_once_what_it_cannot_measure(predictor):
    with running_server(create_app(predictor)) as url:
        start = time.monotonic()  # refused by the first request, not after the test's 30 s
        with pytest.raises(MnistlabError, match=r"answered 422 to the payload \(not a PNG, JPEG"):
            loadtest(url, body=b"not an image", content_type="image/png", seconds=30)
        assert time.monotonic() - start < 10
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(MnistlabError, match=r"cannot load-test http://127.0.0.1:\d+/api/predict: "
                                            r".*is `mnistlab serve` running there\?"):
        loadtest(f"http://127.0.0.1:{port}", seconds=30)
    # another server's page of HTML, several lines: said in one
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(MnistlabError, match=r"answered 501 to the payload \(<!DOCTYPE HTML>"
                                                r" <html lang=\"en\"> <head>") as refused:
            loadtest(f"http://127.0.0.1:{other.server_port}", seconds=30)
        assert "\n" not in str(refused.value)
    finally:
        other.shutdown()
        other.server_close()

"""The API's one table of errors, and its answers as the models it documents.

Each type in `ERRORS` is met by a real request against the shipped model: the error that reaches
the handler is exactly that type, and the answer is the table's status and code. The status
comes from the type alone: a reworded message changes nothing a program reads. Every 200 is
exactly the serialisation of the model the OpenAPI docs name for it.
"""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from mnistlab.data.registry import load_arrays
from mnistlab.inference.errors import (
    BadPixelsError,
    EmptyImageError,
    ImageError,
    ImageFileError,
    ImageTooLargeError,
    InferenceError,
    UnreadableImageError,
    UnsupportedImageError,
)
from mnistlab.serve import create_app
from mnistlab.serve.app import MAX_BODY_BYTES
from mnistlab.serve.errors import (
    COLLECT_ONLY,
    ERRORS,
    EXPLAIN_ONLY,
    PREDICT_ONLY,
    BadJsonError,
    BodyTimeoutError,
    BodyTooLargeError,
    CollectionFullError,
    InvalidRequestError,
    MalformedRequestError,
    ModelTimeoutError,
    NotExplainableError,
    RequestError,
    StorageError,
    UnknownLabelError,
    UnknownModelError,
    UnsupportedMediaTypeError,
    answer_error,
    status_of,
)
from mnistlab.serve.models import HealthResponse, ModelResponse, PredictResponse


@pytest.fixture(scope="module")
def seen():
    """The errors that reached the app's handlers, in order."""
    return []


def watched(app, seen: list):
    """`app`, each error that reaches its handlers appended to `seen` before it is answered."""

    async def recording(request, error):  # the app's own handler, watched
        seen.append(error)
        return await answer_error(request, error)

    for error_type in ERRORS:  # as add_error_handlers registers the app's own
        app.add_exception_handler(error_type, recording)
    return app


@pytest.fixture(scope="module")
def client(predictor, seen):
    with TestClient(watched(create_app(predictor), seen)) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    return load_arrays("mnist").test_images[:3]


def encoded(pixels, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, fmt, **options)
    return buffer.getvalue()


def png(data: bytes) -> dict:
    return dict(content=data, headers={"Content-Type": "image/png"})


def text_bomb() -> bytes:
    """A small PNG whose text chunk decompresses past Pillow's limit."""
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    return encoded(np.zeros((28, 28)), pnginfo=info)


def pixel_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 4000), 1).save(buffer, "PNG")  # 20 megapixels in a few kB
    return buffer.getvalue()


# each error type of the table, with requests that raise it (several where it has several causes)
TRIGGERS = {
    MalformedRequestError: [
        dict(content=b"", headers={"Content-Type": "image/png"}),
        dict(content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
        dict(files={"file": ("a.png", b"", "image/png")}),
    ],
    BadJsonError: [dict(content=b'{"pixels": [[', headers={"Content-Type": "application/json"})],
    BodyTooLargeError: [png(b"\0" * (MAX_BODY_BYTES + 1))],
    UnsupportedMediaTypeError: [dict(content=b"7", headers={"Content-Type": "text/plain"})],
    InvalidRequestError: [
        dict(files={"other": ("a.png", b"x", "image/png")}),
        dict(content=b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                     b"Content-Type: image/png\r\n\r\n\x89PNG",  # cut off before its boundary
             headers={"Content-Type": "multipart/form-data; boundary=x"}),
        dict(json={"pixels": [[0] * 28] * 28}, params={"top_k": "11"}),
    ],
    ImageTooLargeError: [png(pixel_bomb()), png(text_bomb())],
    EmptyImageError: [png(encoded(np.full((60, 60), 255))), dict(json={"pixels": [[0] * 28] * 28})],
    BadPixelsError: [dict(json={"pixels": [[0] * 27] * 27}), dict(json={"image": 1}),
                     dict(json={"pixels": [[True] * 28] * 28})],
    UnreadableImageError: [png(b"\x89PNG\r\n\x1a\n not really"), dict(
        content=b"GIF89a" + bytes(40), headers={"Content-Type": "image/gif"})],
    UnsupportedImageError: [png(b"hello, I am text"), png(encoded(np.zeros((28, 28)), "TIFF"))],
    UnknownModelError: [dict(params={"model": "nope"}, json={"pixels": [[0] * 28] * 28}),
                        dict(params={"model": ""}, content=b"\0", headers={"Content-Type": "text/x"})],
}
CASES = [(kind, i, kwargs) for kind, requests in TRIGGERS.items() for i, kwargs in enumerate(requests)]


@pytest.mark.parametrize("kind, i, kwargs", CASES, ids=[f"{k.__name__}-{i}" for k, i, _ in CASES])
def test_each_error_type_answers_its_status_and_code(client, seen, kind, i, kwargs):
    seen.clear()
    r = client.post("/api/predict", **kwargs)
    assert [type(e) for e in seen] == [kind], r.text  # raised as exactly this type
    status, code = ERRORS[kind]
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert r.json() == {"detail": str(seen[0]), "error": code}  # the message is only the detail
    assert r.headers["content-type"] == "application/json"


def test_the_table_is_the_documented_contract():
    assert ERRORS == {  # docs/SERVING.md's table of errors
        MalformedRequestError: (400, "bad_request"),
        BadJsonError: (400, "bad_json"),
        BodyTooLargeError: (413, "too_large"),
        BodyTimeoutError: (408, "request_timeout"),
        UnsupportedMediaTypeError: (415, "unsupported_media_type"),
        InvalidRequestError: (422, "bad_request"),
        RequestError: (400, "bad_request"),
        ImageTooLargeError: (413, "too_large"),
        EmptyImageError: (422, "empty_image"),
        BadPixelsError: (422, "bad_pixels"),
        UnreadableImageError: (422, "bad_image"),
        UnsupportedImageError: (422, "bad_image"),
        ImageError: (422, "bad_image"),
        UnknownLabelError: (422, "unknown_label"),
        UnknownModelError: (422, "unknown_model"),
        NotExplainableError: (422, "not_explainable"),
        ModelTimeoutError: (503, "model_timeout"),
        InferenceError: (500, "model_error"),
        CollectionFullError: (507, "collection_full"),
        StorageError: (507, "cannot_store"),
    }


def test_every_type_of_the_table_is_met_by_a_request():
    bases = {ImageError, RequestError}  # the fallbacks for types the table does not list
    # a model that does not answer in time, or that fails on some images, needs a model of its
    # own, and a body that does not arrive in time a raw socket: tests/test_hostile_server.py
    # and tests/test_hostile_models.py; the errors of
    # `--collect` are met in tests/test_serve_collect.py, those of /api/explain alone in
    # tests/test_serve_explain.py
    assert set(TRIGGERS) == set(ERRORS) - bases - {ModelTimeoutError, InferenceError, BodyTimeoutError} \
        - set(COLLECT_ONLY) - set(EXPLAIN_ONLY)


@pytest.mark.parametrize("kind", sorted(ERRORS, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_the_status_comes_from_the_type_not_the_words(kind):
    for message in ("", "the image is too large: over the limit (a decompression bomb)",
                    "no digit found (empty image)", "bad pixels", "not a PNG"):
        assert status_of(kind(message)) == ERRORS[kind]


def test_subclasses_answer_as_their_nearest_listed_base():
    class Fresh(UnreadableImageError):
        pass

    class Other(RequestError):
        pass

    assert status_of(Fresh("too large")) == (422, "bad_image")
    assert status_of(ImageFileError("x.png: no such file")) == ERRORS[ImageError] == (422, "bad_image")
    assert status_of(Other("?")) == ERRORS[RequestError] == (400, "bad_request")
    assert status_of(ValueError("a bug")) is None  # not a client's mistake: a 500


def test_errors_not_in_the_table_are_a_clean_500(predictor, digits):
    class NotFinite:  # the shipped model, its answers spoilt: a bug, never a reading of null
        info = predictor.info

        def probabilities(self, images):
            return predictor.probabilities(images) * np.nan

    with TestClient(create_app(NotFinite())) as c:
        r = c.post("/api/predict", json={"pixels": digits[0].tolist()})
    assert r.status_code == 500 and r.json()["error"] == "internal"


# ---- the answers are the models ------------------------------------------------------------


def test_predict_answers_are_the_documented_model(client, digits):
    gap = np.zeros((28, 6), np.uint8)
    number = np.pad(np.concatenate([digits[0], gap, digits[1], gap, digits[2]], axis=1), 10)
    for kwargs in (dict(json={"pixels": digits[0].tolist()}), png(encoded(255 - digits[1])),
                   png(encoded(255 - number)), dict(json={"pixels": digits[2].tolist()},
                                                    params={"top_k": 10})):
        r = client.post("/api/predict", **kwargs)
        assert r.status_code == 200, r.text
        answer = PredictResponse.model_validate_json(r.content)
        assert answer.model_dump_json() == r.text  # the body is the model's own serialisation
        for d in answer.digits:
            assert all(round(t.probability, 6) == t.probability for t in d.top_k)
    several = client.post("/api/predict", **png(encoded(255 - number))).json()
    assert several["digit"] is None and several["input"] is None and several["top_k"] == []
    assert list(several) == ["digit", "confidence", "top_k", "input", "number", "digits"]
    assert list(several["digits"][0]) == ["digit", "confidence", "top_k", "input"]


def test_health_and_model_answers_are_the_documented_models(client, predictor):
    r = client.get("/api/health")
    assert r.text == HealthResponse(status="ok", model_loaded=True,
                                    model=predictor.info["model"]).model_dump_json()
    r = client.get("/api/model")
    assert ModelResponse.model_validate_json(r.content).model_dump_json() == r.text
    # its name and whether it is the default, then the predictor's keys, in its order
    assert list(r.json()) == ["name", "default", *predictor.info]


def test_openapi_documents_the_same_classes(client):
    spec = client.get("/openapi.json").json()

    def schema(path, method, status):
        return spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]

    assert schema("/api/predict", "post", "200") == {"$ref": "#/components/schemas/PredictResponse"}
    assert schema("/api/health", "get", "200") == {"$ref": "#/components/schemas/HealthResponse"}
    assert schema("/api/model", "get", "200") == {"$ref": "#/components/schemas/ModelResponse"}
    components = spec["components"]["schemas"]
    for model in (PredictResponse, HealthResponse, ModelResponse):
        assert set(components[model.__name__]["properties"]) == set(model.model_fields)
    # every error /api/predict can answer is documented for it, with the codes the table gives
    # it; those of /api/collect or /api/explain alone are not
    responses = spec["paths"]["/api/predict"]["post"]["responses"]
    for kind, (status, code) in ERRORS.items():
        if kind in COLLECT_ONLY + EXPLAIN_ONLY:
            assert f"`{code}`" not in responses.get(str(status), {}).get("description", "")
            continue
        assert f"`{code}`" in responses[str(status)]["description"]
        assert schema("/api/predict", "post", str(status)) == {"$ref": "#/components/schemas/ErrorResponse"}
    explain = spec["paths"]["/api/explain"]["post"]["responses"]
    assert "`not_explainable`" in explain["422"]["description"]
    assert schema("/api/explain", "post", "200") == {"$ref": "#/components/schemas/ExplainResponse"}


def test_openapi_documents_the_errors_of_collect(predictor, tmp_path):
    with TestClient(create_app(predictor, collect=tmp_path)) as c:
        spec = c.get("/openapi.json").json()
    operation = spec["paths"]["/api/collect"]["post"]
    assert operation["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CollectResponse"}
    documented = " ".join(r["description"] for r in operation["responses"].values())
    for kind, (status, code) in ERRORS.items():
        if kind not in PREDICT_ONLY:
            assert f"`{code}`" in operation["responses"][str(status)]["description"], kind
    for code in ("bad_json", "bad_pixels", "model_timeout", "model_error"):  # JSON, the model
        assert f"`{code}`" not in documented

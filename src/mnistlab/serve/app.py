"""The HTTP API and the drawing page, on top of `mnistlab.inference` only.

`create_app(predictor)` gives a FastAPI application:

- `GET /`: the page to draw on (static files shipped in `static/`, nothing from the network);
- `POST /api/predict`: an image file (multipart field `file`, or the raw body with an image
  content type) or JSON `{"pixels": [[...28 numbers...] x 28]}`; answers the digit, its
  probability, the top k, and the 28x28 image the model saw; an image of several digits side by
  side is read as a number;
- several models (`mnistlab serve --model A --model B`): `?model=NAME` picks one for
  `/api/predict` and `/api/model` (the first is the default), `GET /api/models` lists them;
- `POST /api/explain`: the same bodies as predict; for one digit, each convolutional layer's
  feature maps and a saliency map over the input, as PNG images (`explaining.py`);
- `GET /api/health`, `GET /api/model`, and the OpenAPI docs at `/docs`;
- with `collect=DIR` (`mnistlab serve --collect DIR`) only, `POST /api/collect?label=<class>`:
  an image (as `/api/predict` takes them, JSON aside) stored as it is in `DIR/train/<class>/`,
  a correction to train on (`collect.py`); the page then offers "Wrong? It was: ..." buttons.

Every mistake a client can make is answered with a 4xx and `{"detail": message, "error": code}`,
the status and code given by the error's type in one table (`errors.ERRORS`); an empty image is a
422 with `"error": "empty_image"`, never a guessed digit. A bug is logged and answered with a
clean 500 in the same shape, and the server goes on serving. Every answer is a model of
`models.py`, the same classes the OpenAPI docs describe.

The routes are module functions, reading the served models (`served.ServedModel`: a predictor
and its batcher) and the prepared answers from `request.app.state`; `create_app` only sets those
and registers them.

Each model runs in one thread of its own (`batcher.Batcher`): requests that arrive while it is busy are
answered together by its next call, so the event loop never waits for the model and concurrent
clients share model calls. No request waits for the model longer than `model_timeout` seconds
(then: 503 `model_timeout`, and the stuck call is interrupted). Small pictures are prepared on the event loop (a thread hop costs more
than reading them); larger ones in the thread pool.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import logging
import os
import struct
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mnistlab.inference.errors import BadPixelsError, ImageError, UnreadableImageError
from mnistlab.inference.images import FORMATS
from mnistlab.inference.predictor import Predictor
from mnistlab.inference.preprocess import MAX_IMAGE_BYTES, decode_image, from_pixels, read_digits
from mnistlab.inference.reading import DEFAULT_TOP_K
from mnistlab.serve.batcher import MODEL_TIMEOUT
from mnistlab.serve.collect import EXTENSIONS, MAX_BYTES, MAX_FILES, Collector
from mnistlab.serve.errors import (
    COLLECT_ONLY,
    ERRORS,
    EXPLAIN_ONLY,
    PREDICT_ONLY,
    BadJsonError,
    BodyTimeoutError,
    BodyTooLargeError,
    CatchAll,
    InvalidRequestError,
    MalformedRequestError,
    UnknownModelError,
    UnsupportedMediaTypeError,
    add_error_handlers,
    documented_errors,
)
from mnistlab.serve.explaining import Explainer, ExplainResponse
from mnistlab.serve.models import (
    EXAMPLE_PIXELS,
    CollectResponse,
    HealthResponse,
    ModelResponse,
    ModelsResponse,
    PixelsRequest,
    PredictResponse,
    json_response,
    prediction,
)
from mnistlab.serve.served import (
    ServedModel,
    choose,
    describe,
    parse_top_k,
    serve_models,
    whole_number,
)

log = logging.getLogger("mnistlab.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/mnistlab, where the shipped model lies
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024  # an image at the limit, with multipart framing
MAX_JSON_BYTES = 256 * 1024  # 784 numbers in JSON need about 16 KB
# Seconds a request body may take to arrive once its head is in (the head has its own bound,
# server.HEAD_TIMEOUT): a digit's picture is kilobytes, and even the largest body accepted
# arrives in a minute at 1.5 Mbit/s; a client dribbling its body holds a connection no longer.
BODY_TIMEOUT = 60.0
# Pictures up to this size, in pixels and in bytes, are read on the event loop, others in a
# thread. Both bounds matter: a body of megabytes can claim 28x28 in its header and hold
# Pillow for seconds in chunks or markers it must step through.
INLINE_PIXELS = 160 * 160
INLINE_BYTES = 32 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


# ---- reading requests ----------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        size = whole_number(declared.strip())
        if size is None:
            raise MalformedRequestError(f"Content-Length {declared[:20]!r} is not a byte count")
        if size > limit:
            raise BodyTooLargeError(f"the request body is {declared.strip()[:20]} bytes; "
                                    f"the limit is {limit:,}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLargeError(f"the request body is over the limit of {limit:,} "
                                            "bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {BODY_TIMEOUT:g} s "
                               f"({size:,} bytes came)") from None
    return b"".join(chunks)


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart field `file` of a body already read (and size-checked)."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except StarletteHTTPException as e:  # Starlette's word for a malformed multipart body
        raise MalformedRequestError(f"malformed multipart body: {e.detail}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            # Starlette drops a part cut off before the closing boundary: it may have been sent
            raise InvalidRequestError("a multipart upload needs the image in a file field "
                                      "named 'file', whole, before the closing boundary")
        return await upload.read()
    finally:
        await form.close()


class _NotANumber(ValueError):
    """NaN or Infinity in a JSON body."""


def _reject_constant(name: str) -> float:
    raise _NotANumber(f"{name} is not a pixel value")


def pixels_from_json(body: bytes) -> np.ndarray:
    try:
        # decoded as UTF-8, JSON's encoding (RFC 8259): json.loads would also guess UTF-16 or 32
        payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise BadJsonError("the JSON body is nested too deeply") from None
    except (_NotANumber, json.JSONDecodeError) as e:
        raise BadJsonError(f"the body is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise BadJsonError("the body is not valid JSON: it is not UTF-8 text") from None
    except ValueError:  # Python reads no integer of more than 4,300 digits
        raise BadJsonError("the body is not valid JSON: it holds a number too long to "
                           "be a pixel value") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadPixelsError('expected a JSON object {"pixels": [[28 numbers] x 28 rows]}')
    rows = payload["pixels"]
    # numbers only: numpy would take true and false for 1 and 0, and strings of digits as numbers
    if not (isinstance(rows, list) and all(isinstance(row, list) and all(
            type(v) is int or type(v) is float for v in row) for row in rows)):
        raise BadPixelsError("pixels must be a list of rows of numbers (no true, false, null, "
                             "strings or tables)")
    return from_pixels(rows)  # an ImageError of its own kind when they are not 28x28 pixels


def digits_from_image(data: bytes) -> np.ndarray:
    """The (N, 28, 28) inputs of the digits in an encoded image, left to right.

    As `mnistlab predict` reads a picture (`read_digits`, one analysis of its ink): several
    digit-sized groups of ink are a number, otherwise the whole picture is one digit."""
    try:
        image = decode_image(data)
    except ImageError:
        raise
    except Exception as e:  # a decoder's own error that preprocessing did not name: still the input's
        log.warning("undecodable image (%s: %s)", type(e).__name__, e, exc_info=True)
        raise UnreadableImageError(f"cannot read this image ({type(e).__name__})") from None
    return np.stack(read_digits(image))  # at least one, or EmptyImageError


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_upload(ctype: str) -> bool:
    """Whether a Content-Type sends an image file: multipart, or the raw file."""
    return ctype == "multipart/form-data" or ctype.startswith("image/") \
        or ctype == "application/octet-stream"


UPLOAD = "an image (multipart field 'file', or the raw body with an image/... type)"
PIXELS = 'JSON {"pixels": ...}'


def unsupported(ctype: str, accepted: str) -> UnsupportedMediaTypeError:
    what = f"Content-Type {ctype[:100]!r}" if ctype else "no Content-Type"
    return UnsupportedMediaTypeError(f"{what}: send {accepted}")


async def read_upload(request: Request, ctype: str, accepted: str) -> bytes:
    """The encoded image an upload sends (`is_upload(ctype)`): the multipart field `file`, or
    the raw body."""
    body = _need(await read_body(request, MAX_BODY_BYTES), accepted)
    data = await multipart_file(request, body) if ctype.startswith("multipart/") else body
    if not data:
        raise MalformedRequestError("the uploaded file is empty")
    return data


async def on_a_fitting_thread(function: Any, data: bytes) -> Any:
    """`function(data)` for an encoded picture: on the event loop for a small one, in the
    thread pool for a larger one."""
    if _small_picture(data):
        return function(data)
    return await run_in_threadpool(function, data)


async def read_images(request: Request) -> np.ndarray:
    """The (N, 28, 28) inputs a request to /api/predict sends, by its Content-Type."""
    ctype = content_type(request)
    accepted = f"{UPLOAD} or {PIXELS}"
    if ctype == "application/json" or ctype.endswith("+json"):
        return pixels_from_json(_need(await read_body(request, MAX_JSON_BYTES), accepted))[None]
    if is_upload(ctype):
        return await on_a_fitting_thread(digits_from_image,
                                         await read_upload(request, ctype, accepted))
    raise unsupported(ctype, accepted)


def collectable(data: bytes) -> str:
    """The file extension of an encoded image worth storing as a correction: one that
    /api/predict reads (decoded, within the limits), with ink in it; else its ImageError."""
    digits_from_image(data)
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:  # the header alone, again
        return EXTENSIONS[image.format]


# ---- the routes: each reads the app's models and answers from app.state --------------------


def chosen(request: Request) -> ServedModel:
    """The model a request's `?model=` names, else the default."""
    state = request.app.state
    return choose(state.models, state.default, request.query_params.get("model"))



router = APIRouter()


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    return Response(request.app.state.page, media_type="text/html; charset=utf-8",
                    headers=PAGE_HEADERS)


@router.get("/api/health", summary="Is the server up, with its model loaded?",
            response_model=HealthResponse)
async def health(request: Request) -> Response:
    return json_response(request.app.state.health)


async def model(request: Request) -> Response:
    return json_response(request.app.state.about[chosen(request).name])


async def models(request: Request) -> Response:
    return json_response(request.app.state.catalogue)


async def predict(request: Request) -> Response:
    served = chosen(request)
    k = parse_top_k(request.query_params.get("top_k"), served)
    try:
        images = await read_images(request)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening any more
    probs = await served.batcher.probabilities(images)
    return json_response(prediction(probs, images, k))


async def explain(request: Request) -> Response:
    served = chosen(request)
    index = parse_digit(request.query_params.get("digit"))
    try:
        images = await read_images(request)
    except ClientDisconnect:
        return Response(status_code=400)
    if index >= len(images):
        raise InvalidRequestError(f"digit={index}, but the image holds {len(images)} "
                                  f"digit{'s' if len(images) > 1 else ''} (digit counts from 0)")
    return json_response(await request.app.state.explainer.explain(served.name, images[index]))


def parse_digit(text: str | None) -> int:
    """`?digit=`: which digit of a number to explain, from 0 (left) to at most 99."""
    if text is None:
        return 0
    digit = whole_number(text)
    if digit is None or digit > 99:
        raise InvalidRequestError(f"digit must be a whole number from 0 to 99, got {text[:20]!r}")
    return digit


EXPLAIN_ERRORS = documented_errors({
    400: "malformed body (bad JSON, broken multipart, empty)",
    408: f"body not all arrived within {BODY_TIMEOUT:g} s (the connection is closed)",
    413: f"body over {MAX_BODY_BYTES:,} bytes, or image too large",
    415: "a content type that is not an image, multipart or JSON",
    422: "as for /api/predict; besides, a `digit` the image does not hold, or a model served "
         "from an ONNX file (`not_explainable`: explanations need PyTorch)",
    500: "the model failed on this image",
    503: f"the explanation did not come within {MODEL_TIMEOUT:g} s",
}, leave_out=COLLECT_ONLY)


def explain_route(served: dict[str, ServedModel]) -> dict[str, Any]:
    return dict(
        path="/api/explain", endpoint=explain, methods=["POST"],
        summary="What the network sees of one digit: feature maps and a saliency map",
        description=(
            "The same bodies as /api/predict. For one digit (`?digit=N` of a number, from 0; "
            "the first by default): each convolutional layer's outputs (one PNG mosaic per "
            "layer), and a saliency map over the 28x28 input (the gradient of the winning "
            "class's logit with respect to each pixel). For a softmax regression, its weight "
            "templates, one per class, instead of layers. Computed with PyTorch whatever "
            "backend predicts."),
        response_model=ExplainResponse,
        responses=EXPLAIN_ERRORS,
        openapi_extra={"requestBody": PREDICT_BODY, "parameters": [
            model_parameter(list(served)),
            {"name": "digit", "in": "query", "required": False,
             "description": "which digit of a number, from 0 (left)",
             "schema": {"type": "integer", "minimum": 0, "maximum": 99, "default": 0}}]},
    )


def model_parameter(names: list[str]) -> dict[str, Any]:
    """The OpenAPI description of `?model=`, naming the models served."""
    return {"name": "model", "in": "query", "required": False,
            "description": f"the model to use (GET /api/models); default: {names[0]}",
            "schema": {"type": "string", "enum": names, "default": names[0]}}


def model_routes(names: list[str]) -> list[dict[str, Any]]:
    """`add_api_route`'s arguments for /api/model and /api/models."""
    unknown = documented_errors({422: "`model` names none of the models served"},
                                leave_out=tuple(k for k in ERRORS if k is not UnknownModelError))
    return [
        dict(path="/api/model", endpoint=model, methods=["GET"],
             summary="A served model: architecture, accuracy, backend, classes",
             response_model=ModelResponse, responses=unknown,
             openapi_extra={"parameters": [model_parameter(names)]}),
        dict(path="/api/models", endpoint=models, methods=["GET"],
             summary="Every model served, the default first", response_model=ModelsResponse),
    ]


_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_CONTENT = {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string",
                                                               "format": "binary"}}}},
    **{t: _BINARY for t in IMAGE_TYPES},
    "application/octet-stream": _BINARY,
}
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": UPLOAD_CONTENT["multipart/form-data"],
        "application/json": {"schema": PixelsRequest.model_json_schema(),
                             "example": {"pixels": EXAMPLE_PIXELS}},
        **UPLOAD_CONTENT,
    },
}
PREDICT_ERRORS = documented_errors({
    400: "malformed body (bad JSON, broken multipart, empty)",
    408: f"body not all arrived within {BODY_TIMEOUT:g} s (the connection is closed)",
    413: f"body over {MAX_BODY_BYTES:,} bytes, or image too large",
    415: "a content type that is not an image, multipart or JSON",
    422: "not a readable image, bad pixels, an empty image (no digit found: never a guess), "
         "a multipart body without a field `file`, a `top_k` outside 1 to the model's number "
         "of classes, or a `model` not served",
    500: "the model failed on these images (NaN probabilities, say): the model's fault, not "
         "the request's",
    503: f"the model did not answer within {MODEL_TIMEOUT:g} s (the request is freed)",
}, leave_out=COLLECT_ONLY + EXPLAIN_ONLY)


def predict_route(served: dict[str, ServedModel]) -> dict[str, Any]:
    """`add_api_route`'s arguments for /api/predict, whose documented `top_k` and `model` are
    the application's."""
    default = next(iter(served.values()))
    return dict(
        path="/api/predict", endpoint=predict, methods=["POST"],
        summary="Read the digit (or the number) in an image, or in 28x28 pixels",
        description=(
            "Send one of:\n\n"
            "- an image file as multipart form field `file`;\n"
            "- the raw image as the body, with an image Content-Type (`image/png`, ...);\n"
            '- JSON `{"pixels": [[28 numbers] x 28 rows]}`: light ink on dark, 0-255 or 0-1, '
            "taken as the model's input as it is.\n\n"
            "An image is turned into MNIST's form (grayscale, light on dark, centred, 28x28); "
            "several digits side by side are read as a number (`number`, `digits`; then "
            "`digit` is null). An image with no ink is a 422 with `error: empty_image`: "
            "no digit is guessed. `?top_k=N` (1 to the model's number of classes) sets how "
            "many candidates are listed; `?model=NAME` picks one of the models served "
            "(`GET /api/models`), the first by default."
        ),
        response_model=PredictResponse,
        responses=PREDICT_ERRORS,
        openapi_extra={"requestBody": PREDICT_BODY, "parameters": [{
            "name": "top_k", "in": "query", "required": False,
            "description": "how many candidates to list, at most the model's classes",
            "schema": {"type": "integer", "minimum": 1,
                       "maximum": max(m.classes for m in served.values()),
                       "default": default.top_k}}, model_parameter(list(served))]},
    )


async def collect(request: Request) -> Response:
    collector = request.app.state.collector
    label = collector.label(request.query_params.get("label"))
    ctype = content_type(request)
    if not is_upload(ctype):
        raise unsupported(ctype, UPLOAD)
    try:
        data = await read_upload(request, ctype, UPLOAD)
    except ClientDisconnect:
        return Response(status_code=400)
    extension = await on_a_fitting_thread(collectable, data)
    collector.reserve(len(data))  # on the event loop: no other request counts meanwhile
    try:
        name = await run_in_threadpool(collector.store, label, data, extension)
    except BaseException:
        collector.release(len(data))
        raise
    return json_response(CollectResponse(label=label, file=name), status=201)


COLLECT_ERRORS = documented_errors({
    400: "malformed body (broken multipart, empty)",
    408: f"body not all arrived within {BODY_TIMEOUT:g} s (the connection is closed)",
    413: f"body over {MAX_BODY_BYTES:,} bytes, or image too large",
    415: "a content type that is not an image or multipart",
    422: "no `label`, or one that is not a class of the model; not a readable image; an empty "
         "image (no ink); a multipart body without a field `file`",
    507: f"nothing stored: this server process has stored its limit ({MAX_FILES:,} images, "
         f"{MAX_BYTES:,} bytes), or the disk is full or the folder no longer writable",
}, leave_out=PREDICT_ONLY)


def collect_route(classes: tuple[str, ...]) -> dict[str, Any]:
    """`add_api_route`'s arguments for /api/collect, whose labels are the model's classes."""
    return dict(
        path="/api/collect", endpoint=collect, methods=["POST"], status_code=201,
        summary="Store an image as a training example of a class (a correction)",
        description=(
            "Only with `mnistlab serve --collect DIR`. Send an image as to /api/predict (a "
            "multipart field `file`, or the raw body with an image Content-Type; no JSON) "
            "with `?label=` one of the model's class names. It must be readable and hold ink; "
            "it is stored as sent, never overwriting a file, in `DIR/train/<label>/`, where "
            "`mnistlab train --data-dir DIR` reads it."
        ),
        response_model=CollectResponse,
        responses=COLLECT_ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": UPLOAD_CONTENT},
                       "parameters": [{
                           "name": "label", "in": "query", "required": True,
                           "description": "what the image shows: one of the model's classes",
                           "schema": {"type": "string", "enum": list(classes)}}]},
    )


# ---- the application -----------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    for served in app.state.models.values():
        served.batcher.close()
    app.state.explainer.close()


def create_app(predictors: Predictor | Mapping[str, Predictor], *,
               top_k: int = DEFAULT_TOP_K,
               model_timeout: float = MODEL_TIMEOUT,
               collect: str | os.PathLike | None = None) -> FastAPI:
    """The web page and the HTTP API over one loaded predictor, or several by name (the first
    is the default); a request waits for its model at most `model_timeout` seconds, then is
    answered 503 `model_timeout`. With `collect`, a folder (created if missing), corrections
    of the default model's readings are stored there (`POST /api/collect`); a folder that
    cannot be written, or class names that cannot be folder names, are a MnistlabError."""
    if not 1 <= top_k:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    served = serve_models(predictors, top_k, model_timeout)
    default = next(iter(served.values()))
    predictor = default.predictor
    collector = None if collect is None else Collector(collect, predictor.info["class_names"])
    app = FastAPI(
        title="mnistlab",
        summary="Handwritten digit recognition: draw on the page, or post images to the API.",
        version=_version(),
        lifespan=lifespan,
    )
    state = app.state
    state.models, state.default = served, default
    state.predictor, state.batcher = predictor, default.batcher  # the default's, as before
    state.collector = collector
    state.page = page_html(collector)
    state.health = HealthResponse(status="ok", model_loaded=predictor is not None,
                                  model=predictor.info.get("model"))
    # each model's description, validated once here
    state.about = {name: ModelResponse.model_validate(
        describe(m, public_info(m.predictor.info), m is default)) for name, m in served.items()}
    state.explainer = Explainer({name: m.predictor for name, m in served.items()},
                                model_timeout)
    state.catalogue = ModelsResponse(default=default.name, models=list(state.about.values()))
    app.add_middleware(CatchAll)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
    for route in [predict_route(served), explain_route(served), *model_routes(list(served))]:
        app.add_api_route(**route)
    if collector is not None:
        app.add_api_route(**collect_route(collector.classes))
    answer_head(app)
    return app


def answer_head(app: FastAPI) -> None:
    """HEAD on every GET route, as HTTP asks of a server and uptime checks send it: the GET's
    status and headers, without its body (uvicorn leaves a HEAD's body out). FastAPI's routes
    take only the methods they are given; these stay out of the OpenAPI schema."""
    for route in [*app.routes, *router.routes]:  # the router's are not among the app's
        if isinstance(route, APIRoute) and "GET" in route.methods:
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"],
                              include_in_schema=False)


def page_html(collector: Collector | None) -> bytes:
    """The page; when collecting, its <body> names the folder the corrections go to, which
    tells the page's script to offer them."""
    page = (STATIC_DIR / "index.html").read_bytes()
    if collector is None:
        return page
    where = html.escape(str(collector.train), quote=True)
    return page.replace(b"<body>", f'<body data-collect="{where}">'.encode(), 1)


def public_info(info: dict[str, Any]) -> dict[str, Any]:
    """The predictor's description without the server's file system: the checkpoint as a path
    inside the package for the shipped model, else as its file name alone."""
    checkpoint = info.get("checkpoint")
    if not checkpoint:
        return dict(info)
    path = Path(checkpoint)
    try:
        shown = path.resolve().relative_to(PACKAGE_DIR).as_posix()
    except (OSError, ValueError):
        shown = path.name
    return {**info, "checkpoint": shown}


def _small_picture(data: bytes) -> bool:
    """Whether the picture is small enough to read on the event loop (a thread hop costs more
    than reading it): from its length and header alone, nothing decoded. Unreadable headers
    count as small: decoding refuses them at once."""
    if len(data) > INLINE_BYTES:
        return False
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])  # a PNG's size, without Pillow
        return width * height <= INLINE_PIXELS
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
    except Exception:
        return True
    return width * height <= INLINE_PIXELS


def _need(body: bytes, accepted: str) -> bytes:
    if not body:
        raise MalformedRequestError(f"empty request body: send {accepted}")
    return body


def _version() -> str:
    try:
        import mnistlab

        return mnistlab.__version__
    except (ImportError, AttributeError):
        return "0"


# ---- for `uvicorn --factory` with several worker processes ---------------------------------

ENV_MODEL, ENV_BACKEND = "MNISTLAB_SERVE_MODEL", "MNISTLAB_SERVE_BACKEND"
ENV_TOP_K, ENV_THREADS = "MNISTLAB_SERVE_TOP_K", "MNISTLAB_SERVE_THREADS"
ENV_COLLECT = "MNISTLAB_SERVE_COLLECT"


def app_from_environment() -> FastAPI:
    """`create_app` over the models named by MNISTLAB_SERVE_MODEL (a JSON list of targets, or
    one target; default the shipped model), with MNISTLAB_SERVE_BACKEND, _TOP_K, _THREADS and
    _COLLECT: what each worker process runs."""
    from mnistlab.serve.server import freeze_loaded_objects, load_models, set_threads

    threads = int(os.environ.get(ENV_THREADS, "1"))
    set_threads(threads)
    text = os.environ.get(ENV_MODEL, "default")
    # `serve` writes a JSON list; one target alone, as earlier versions wrote it, is one model
    targets = json.loads(text) if text.startswith("[") else [text]
    predictors = load_models(targets, os.environ.get(ENV_BACKEND, "onnx"), threads)
    app = create_app(predictors, top_k=int(os.environ.get(ENV_TOP_K, "3")),
                     collect=os.environ.get(ENV_COLLECT) or None)
    freeze_loaded_objects()
    return app

"""The HTTP API and the drawing page, on top of `mnistlab.inference` only.

`create_app(predictor)` gives a FastAPI application:

- `GET /`: the page to draw on (static files shipped in `static/`, nothing from the network);
- `POST /api/predict`: an image file (multipart field `file`, or the raw body with an image
  content type) or JSON `{"pixels": [[...28 numbers...] x 28]}`; answers the digit, its
  probability, the top k, and the 28x28 image the model saw; an image of several digits side by
  side is read as a number;
- `GET /api/health`, `GET /api/model`, and the OpenAPI docs at `/docs`.

Every mistake a client can make is answered with a 4xx and `{"detail": message, "error": code}`;
an empty image is a 422 with `"error": "empty_image"`, never a guessed digit. A bug is logged and
answered with a clean 500 in the same shape, and the server goes on serving.

The model runs in one thread of its own (`Batcher`): requests that arrive while it is busy are
answered together by its next call, so the event loop never waits for the model and concurrent
clients share model calls. Small pictures are prepared on the event loop (a thread hop costs more
than reading them); larger ones in the thread pool.
"""

from __future__ import annotations

import asyncio
import http
import io
import json
import logging
import os
import queue
import struct
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mnistlab.inference.images import FORMATS
from mnistlab.inference.predictor import Predictor
from mnistlab.inference.preprocess import (
    MAX_IMAGE_BYTES,
    EmptyImageError,
    ImageError,
    decode_image,
    from_pixels,
    read_digits,
)

log = logging.getLogger("mnistlab.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/mnistlab, where the shipped model lies
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024  # an image at the limit, with multipart framing
MAX_JSON_BYTES = 256 * 1024  # 784 numbers in JSON need about 16 KB
INLINE_PIXELS = 160 * 160  # pictures up to this size are read on the event loop, larger in a thread
MAX_BATCH = 256  # images in one model call
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class ApiError(Exception):
    """A mistake in the request: answered with `status` and `{"detail", "error"}`."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "error": code}, status_code=status)


# ---- the model's thread --------------------------------------------------------------------


class Batcher:
    """Runs `predictor.probabilities` in one thread, on every request waiting at once.

    While the model computes one batch, new requests queue up; the next call takes them all
    (up to `max_batch` images). With one request at a time this is batch-1 inference with one
    thread hop; under load, one model call serves many requests.
    """

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH):
        self.predictor = predictor
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 10) float32, computed in the model's thread."""
        self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((images, future, loop))
        return await future

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mnistlab-model",
                                                    daemon=True)
                    self._thread.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                return
            jobs, count = [job], len(job[0])
            while count < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                count += len(job[0])
            try:
                images = jobs[0][0] if len(jobs) == 1 else np.concatenate([j[0] for j in jobs])
                probs = self.predictor.probabilities(images)
            except BaseException as e:  # handed to each request, which answers a clean error
                for _, future, loop in jobs:
                    loop.call_soon_threadsafe(_settle, future, None, e)
                continue
            start = 0
            for images, future, loop in jobs:
                end = start + len(images)
                loop.call_soon_threadsafe(_settle, future, probs[start:end], None)
                start = end


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ---- reading requests ----------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.strip().isascii() and declared.strip().isdigit()):
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the request body is {int(declared):,} bytes; "
                                             f"the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart field `file` of a body already read (and size-checked)."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except StarletteHTTPException as e:  # Starlette's word for a malformed multipart body
        raise ApiError(400, "bad_request", f"malformed multipart body: {e.detail}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "bad_request",
                           "a multipart upload needs the image in a file field named 'file'")
        return await upload.read()
    finally:
        await form.close()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a pixel value")


def pixels_from_json(body: bytes) -> np.ndarray:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "bad_json", "the JSON body is nested too deeply") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ApiError(422, "bad_pixels", 'expected a JSON object {"pixels": [[28 numbers] x 28 rows]}')
    rows = payload["pixels"]
    # numbers only: numpy would take true and false for 1 and 0, and strings of digits as numbers
    if not (isinstance(rows, list) and all(isinstance(row, list) and all(
            type(v) is int or type(v) is float for v in row) for row in rows)):
        raise ApiError(422, "bad_pixels", "pixels must be a list of rows of numbers (no true, "
                                          "false, null, strings or tables)")
    try:
        return from_pixels(rows)
    except EmptyImageError as e:
        raise _image_error(e) from None
    except ImageError as e:
        raise ApiError(422, "bad_pixels", str(e)) from None


def digits_from_image(data: bytes) -> np.ndarray:
    """The (N, 28, 28) inputs of the digits in an encoded image, left to right.

    As `mnistlab predict` reads a picture (`read_digits`, one analysis of its ink): several
    digit-sized groups of ink are a number, otherwise the whole picture is one digit."""
    try:
        image = decode_image(data)
    except ImageError as e:
        raise _image_error(e) from None
    except Exception as e:  # a decoder's own error that preprocessing did not name: still the input's
        log.warning("undecodable image (%s: %s)", type(e).__name__, e, exc_info=True)
        raise ApiError(422, "bad_image", f"cannot read this image ({type(e).__name__})") from None
    try:
        digits = read_digits(image)  # at least one, or EmptyImageError
    except ImageError as e:
        raise _image_error(e) from None
    return np.stack(digits)


def _image_error(e: ImageError) -> ApiError:
    if isinstance(e, EmptyImageError):
        text = str(e) if str(e).startswith("no digit found") else f"no digit found (empty image): {e}"
        return ApiError(422, "empty_image", text)
    text = str(e)
    too_large = any(word in text.lower() for word in ("too large", "too big", "limit", "bomb"))
    return ApiError(413 if too_large else 422, "too_large" if too_large else "bad_image", text)


def parse_top_k(request: Request, default: int) -> int:
    text = request.query_params.get("top_k")
    if text is None:
        return default
    # isdigit alone admits '²', which int() refuses: ASCII digits only
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 10:
        raise ApiError(422, "bad_request", f"top_k must be a whole number from 1 to 10, got {text!r}")
    return int(text)


# ---- answers -------------------------------------------------------------------------------


def describe(probs: np.ndarray, image: np.ndarray, top_k: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    best = int(order[0])
    return {
        "digit": best,
        "confidence": round(float(probs[best]), 6),
        "top_k": [{"digit": int(i), "probability": round(float(probs[i]), 6)} for i in order],
        "input": image.tolist(),
    }


def prediction(probs: np.ndarray, images: np.ndarray, top_k: int) -> dict[str, Any]:
    digits = [describe(p, image, top_k) for p, image in zip(probs, images)]
    number = "".join(str(d["digit"]) for d in digits)
    if len(digits) == 1:
        return {**digits[0], "number": number, "digits": digits}
    confidence = float(np.prod([d["confidence"] for d in digits]))
    return {"digit": None, "confidence": round(confidence, 6), "top_k": [], "input": None,
            "number": number, "digits": digits}


def json_response(content: Any, status: int = 200) -> Response:
    text = json.dumps(content, separators=(",", ":"), allow_nan=False)
    return Response(text.encode(), status_code=status, media_type="application/json")


# ---- documentation models (the answers are built by hand, these describe them) -------------


Pixel = Annotated[float, Field(ge=0, le=255)]


class PixelsRequest(BaseModel):
    pixels: list[Annotated[list[Pixel], Field(min_length=28, max_length=28)]] = Field(
        min_length=28, max_length=28,
        description="28 rows of 28 numbers, light ink on a dark background: 0-255, or 0-1")


# a "1": a vertical stroke, 20 rows tall, as MNIST has it (the example in the OpenAPI docs)
EXAMPLE_PIXELS = [[255 if 4 <= y < 24 and 13 <= x < 15 else 0 for x in range(28)] for y in range(28)]


class TopEntry(BaseModel):
    digit: int
    probability: float


class DigitReading(BaseModel):
    digit: int
    confidence: float = Field(description="the model's probability for `digit`")
    top_k: list[TopEntry]
    input: list[list[int]] = Field(description="the 28x28 image the model saw (0-255, light on dark)")


class PredictResponse(BaseModel):
    digit: int | None = Field(description="the digit read; null when the image holds several")
    confidence: float = Field(description="its probability (several digits: the product)")
    top_k: list[TopEntry] = Field(description="the most likely digits (empty for several)")
    input: list[list[int]] | None = Field(description="the 28x28 input (null for several)")
    number: str = Field(description="every digit read, left to right")
    digits: list[DigitReading] = Field(description="one reading per digit, left to right")


class HealthResponse(BaseModel):
    status: str = Field(description='"ok" while the server answers')
    model_loaded: bool
    model: str | None = Field(description="the loaded model's architecture")


class ModelResponse(BaseModel):
    """What the predictor says of its model (more keys may follow)."""

    model: str | None = Field(description="the architecture, e.g. mnistlab-cnn")
    args: dict[str, Any] = Field(description="its arguments")
    parameters: int | None
    checkpoint: str | None = Field(description="the file, without the server's folders")
    backend: str = Field(description="torch or onnx")
    device: str
    test_accuracy: float | None = Field(description="on MNIST's 10,000 test images, when known")
    class_names: list[str]


class ErrorResponse(BaseModel):
    detail: str
    error: str = Field(description="empty_image, bad_image, bad_pixels, bad_json, bad_request, "
                                   "too_large, unsupported_media_type, internal, ...")


_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string",
                                                                   "format": "binary"}}}},
        "application/json": {"schema": PixelsRequest.model_json_schema(),
                             "example": {"pixels": EXAMPLE_PIXELS}},
        **{t: _BINARY for t in IMAGE_TYPES},
        "application/octet-stream": _BINARY,
    },
}
ERRORS = {
    400: {"model": ErrorResponse, "description": "malformed body (bad JSON, broken multipart, empty)"},
    413: {"model": ErrorResponse, "description": f"body over {MAX_BODY_BYTES:,} bytes, or image too large"},
    415: {"model": ErrorResponse, "description": "a content type that is not an image, multipart or JSON"},
    422: {"model": ErrorResponse, "description": "not a readable image, bad pixels, or an empty image "
                                                 "(`error: empty_image`: no digit found)"},
}


# ---- the application -----------------------------------------------------------------------


class CatchAll:
    """ASGI middleware: an exception that escapes a route is logged and answered as a clean
    JSON 500 (no traceback to the client), and the server goes on."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for an answer: the connection is closed instead
                return
            response = error_response(500, "internal", "internal error: the server could not answer "
                                                       "this request (it is logged)")
            await response(scope, receive, send)


def create_app(predictor: Predictor, *, top_k: int = 3) -> FastAPI:
    """The web page and the HTTP API over one loaded predictor."""
    if not 1 <= top_k <= 10:
        raise ValueError(f"top_k must be from 1 to 10, got {top_k}")
    batcher = Batcher(predictor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(
        title="mnistlab",
        summary="Handwritten digit recognition: draw on the page, or post images to the API.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.add_middleware(CatchAll)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    page = (STATIC_DIR / "index.html").read_bytes()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        code = http.HTTPStatus(e.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return JSONResponse({"detail": e.detail, "error": code}, status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/api/health", summary="Is the server up, with its model loaded?",
             response_model=None, responses={200: {"model": HealthResponse}})
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": predictor is not None,
                "model": predictor.info.get("model")}

    about = public_info(predictor.info)

    @app.get("/api/model", summary="The loaded model: architecture, accuracy, input format",
             response_model=None, responses={200: {"model": ModelResponse}})
    async def model() -> dict[str, Any]:
        return about

    @app.post(
        "/api/predict",
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
            "no digit is guessed. `?top_k=N` (1-10) sets how many candidates are listed."
        ),
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra={"requestBody": PREDICT_BODY, "parameters": [{
            "name": "top_k", "in": "query", "required": False,
            "description": "how many candidates to list",
            "schema": {"type": "integer", "minimum": 1, "maximum": 10, "default": top_k}}]},
    )
    async def predict(request: Request) -> Response:
        k = parse_top_k(request, top_k)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        try:
            if ctype == "application/json" or ctype.endswith("+json"):
                body = await read_body(request, MAX_JSON_BYTES)
                _need(body)
                images = pixels_from_json(body)[None]
            elif ctype == "multipart/form-data" or ctype.startswith("image/") \
                    or ctype == "application/octet-stream":
                body = await read_body(request, MAX_BODY_BYTES)
                _need(body)
                data = await multipart_file(request, body) if ctype.startswith("multipart/") else body
                if not data:
                    raise ApiError(400, "bad_request", "the uploaded file is empty")
                if _small_picture(data):
                    images = digits_from_image(data)
                else:
                    images = await run_in_threadpool(digits_from_image, data)
            else:
                what = f"Content-Type {ctype!r}" if ctype else "no Content-Type"
                raise ApiError(415, "unsupported_media_type",
                               f"{what}: send an image (multipart field 'file', or the raw body "
                               'with an image/... type) or JSON {"pixels": ...}')
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
        probs = await batcher.probabilities(images)
        return json_response(prediction(probs, images, k))

    return app


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
    than reading it): from its header alone, nothing decoded. Unreadable headers count as
    small: decoding refuses them at once."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])  # a PNG's size, without Pillow
        return width * height <= INLINE_PIXELS
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
    except Exception:
        return True
    return width * height <= INLINE_PIXELS


def _need(body: bytes) -> None:
    if not body:
        raise ApiError(400, "bad_request", 'empty request body: send an image file or JSON {"pixels": ...}')


def _version() -> str:
    try:
        import mnistlab

        return mnistlab.__version__
    except (ImportError, AttributeError):
        return "0"


# ---- for `uvicorn --factory` with several worker processes ---------------------------------

ENV_MODEL, ENV_BACKEND = "MNISTLAB_SERVE_MODEL", "MNISTLAB_SERVE_BACKEND"
ENV_TOP_K, ENV_THREADS = "MNISTLAB_SERVE_TOP_K", "MNISTLAB_SERVE_THREADS"


def app_from_environment() -> FastAPI:
    """`create_app` over the model named by MNISTLAB_SERVE_MODEL (default `default`), with
    MNISTLAB_SERVE_BACKEND, _TOP_K and _THREADS: what each worker process runs."""
    from mnistlab.serve.server import set_threads

    threads = int(os.environ.get(ENV_THREADS, "1"))
    set_threads(threads)
    predictor = Predictor.load(os.environ.get(ENV_MODEL, "default"),
                               backend=os.environ.get(ENV_BACKEND, "torch"), threads=threads)
    return create_app(predictor, top_k=int(os.environ.get(ENV_TOP_K, "3")))

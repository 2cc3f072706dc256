"""What the API answers to each mistake: one table from error types to statuses and codes.

Every refusal is `{"detail": a sentence for a person, "error": a code for a program}` (the
`ErrorResponse` model). The status and the code come from the error's type alone, looked up in
`ERRORS` along its class's MRO (a subclass of a listed type answers as its nearest listed base):
the message is only the detail, and rewording it changes nothing a program reads.

Image errors are raised by `mnistlab.inference` (the types of `mnistlab.inference.errors`); the
request errors below by the server's own reading of a request; a model that does not answer
in time is a 503 `model_timeout`; a correction `--collect` cannot store is a 507 (the server's
limit reached, or the disk full). A route's 404 and 405 keep Starlette's status, with its phrase
as the code; a request cut short by a shutdown is a 503 `shutting_down`; anything else is a bug,
logged and answered as a clean 500 `internal` by `CatchAll`. What the server's HTTP protocol
refuses before any route sees it (`server.BoundedHttpProtocol`) has the same shape.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mnistlab.inference.errors import (
    BadPixelsError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    InferenceError,
    UnreadableImageError,
    UnsupportedImageError,
)

log = logging.getLogger("mnistlab.serve")


class RequestError(Exception):
    """A request the server cannot take, whatever image it may hold."""


class MalformedRequestError(RequestError):
    """A body that cannot be parsed as what it says it is: no body, a broken multipart body, an
    empty upload, a Content-Length that is no byte count."""


class BadJsonError(RequestError):
    """A JSON body that is not JSON (or nested too deeply to read)."""


class BodyTooLargeError(RequestError):
    """A request body over the server's limit, refused before or while it is read."""


class BodyTimeoutError(RequestError):
    """A request body not all arrived within the server's time bound (`app.BODY_TIMEOUT`)."""


class UnsupportedMediaTypeError(RequestError):
    """A Content-Type that is neither an image, multipart, nor JSON."""


class InvalidRequestError(RequestError):
    """A well-formed request without what it needs: no multipart field `file`, or a `top_k`
    outside 1 to the model's number of classes."""


class UnknownLabelError(RequestError):
    """A correction (`POST /api/collect`) whose label is none of the model's class names."""


class UnknownModelError(RequestError):
    """`?model=NAME` that names none of the models the server serves (`GET /api/models`)."""


class NotExplainableError(RequestError):
    """`POST /api/explain` for a model served from an ONNX file: explanations need PyTorch."""


class CollectionFullError(Exception):
    """`--collect`: this server process has stored as many images (or bytes) as it may
    (`collect.MAX_FILES`, `collect.MAX_BYTES`). A limit of the server, not a bad request."""


class StorageError(Exception):
    """`--collect`: the image could not be stored (the disk is full, the folder is no longer
    writable); nothing was written. The server's trouble, not the client's."""


class ModelTimeoutError(Exception):
    """The model did not answer within the server's time bound (`batcher.MODEL_TIMEOUT`): the
    request is freed and the stuck model call interrupted. The server's trouble, not the
    client's mistake: a 503, which a client may retry."""


# the one place where an error's type becomes what the client is told; more specific types
# first only for reading: the lookup walks each error's MRO, not this order
ERRORS: dict[type[Exception], tuple[int, str]] = {
    MalformedRequestError: (400, "bad_request"),
    BadJsonError: (400, "bad_json"),
    BodyTooLargeError: (413, "too_large"),
    BodyTimeoutError: (408, "request_timeout"),
    UnsupportedMediaTypeError: (415, "unsupported_media_type"),
    InvalidRequestError: (422, "bad_request"),
    RequestError: (400, "bad_request"),  # any other request error
    ImageTooLargeError: (413, "too_large"),
    EmptyImageError: (422, "empty_image"),
    BadPixelsError: (422, "bad_pixels"),
    UnreadableImageError: (422, "bad_image"),
    UnsupportedImageError: (422, "bad_image"),
    ImageError: (422, "bad_image"),  # any other image error (e.g. ImageFileError, a new kind)
    UnknownLabelError: (422, "unknown_label"),
    UnknownModelError: (422, "unknown_model"),
    NotExplainableError: (422, "not_explainable"),
    ModelTimeoutError: (503, "model_timeout"),
    # the model failed on images it accepted (NaN for these, an ONNX graph's own error): the
    # server's fault, never the client's, said plainly instead of an anonymous 500
    InferenceError: (500, "model_error"),
    # `--collect`: 507 Insufficient Storage, whether a limit of ours or of the disk
    CollectionFullError: (507, "collection_full"),
    StorageError: (507, "cannot_store"),
}
# the types only `POST /api/collect` raises, and those it never does (it takes no JSON and
# runs no model): what each route documents
COLLECT_ONLY = (UnknownLabelError, CollectionFullError, StorageError)
PREDICT_ONLY = (BadJsonError, BadPixelsError, ModelTimeoutError, InferenceError, UnknownModelError,
                NotExplainableError)
EXPLAIN_ONLY = (NotExplainableError,)  # what /api/predict never answers

OTHER_CODES = ("not_found", "method_not_allowed", "internal", "shutting_down")  # 404, 405, 500, 503
# answered by the server's HTTP protocol (server.BoundedHttpProtocol) before any route: 431, 408
# and 503, each closing the connection
CONNECTION_CODES = ("headers_too_large", "request_timeout", "too_many_connections")


def status_of(error: BaseException) -> tuple[int, str] | None:
    """The (status, code) of an error from the table, by its type's MRO; None if not listed."""
    for cls in type(error).__mro__:
        answer = ERRORS.get(cls)
        if answer is not None:
            return answer
    return None


class ErrorResponse(BaseModel):
    """Every refusal and every error the API answers."""

    detail: str = Field(description="what went wrong, for a person")
    error: str = Field(description="what went wrong, for a program: " + ", ".join(dict.fromkeys(
        [code for _, code in ERRORS.values()] + list(OTHER_CODES) + list(CONNECTION_CODES))))


def error_shape(code: str, detail: str) -> bytes:
    """The JSON body of every error answer."""
    return ErrorResponse(detail=detail, error=code).model_dump_json().encode()


def error_response(status: int, code: str, detail: str, headers: Any = None) -> Response:
    return Response(error_shape(code, detail), status_code=status, media_type="application/json",
                    headers=headers)


def documented_errors(meaning: dict[int, str], leave_out: tuple[type[Exception], ...] = ()
                      ) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer any error of the table but those in
    `leave_out`, for OpenAPI: each status with what it means to that route, and the codes the
    table gives it."""
    codes: dict[int, list[str]] = {}
    for kind, (status, code) in ERRORS.items():
        if kind in leave_out:
            continue
        codes.setdefault(status, [])
        if code not in codes[status]:
            codes[status].append(code)
    return {status: {"model": ErrorResponse, "description": f"{meaning[status]}; `error`: "
                     + ", ".join(f"`{c}`" for c in codes[status])}
            for status in sorted(codes)}


async def answer_error(request: Request, error: Exception) -> Response:
    """The exception handler for every type in the table. A body refused as too large or too
    slow closes the connection: uvicorn would otherwise read the rest of it, and throw it away,
    for as long as the client sends (gigabytes a minute)."""
    status, code = status_of(error) or (500, "internal")
    unread = isinstance(error, (BodyTooLargeError, BodyTimeoutError))
    closing = {"connection": "close"} if unread else None
    return error_response(status, code, str(error), closing)


async def answer_http_error(request: Request, error: StarletteHTTPException) -> Response:
    """Starlette's own refusals (a route not found, a method not allowed), in our shape."""
    code = http.HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return error_response(error.status_code, code, str(error.detail),
                          getattr(error, "headers", None))


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of the table (and Starlette's 404 and 405) in `ErrorResponse`'s
    shape; Starlette picks a handler along the error's MRO, as `status_of` does."""
    for error_type in ERRORS:
        app.add_exception_handler(error_type, answer_error)
    app.add_exception_handler(StarletteHTTPException, answer_http_error)


class CatchAll:
    """ASGI middleware: an exception that escapes a route is logged and answered as a clean
    JSON 500 (no traceback to the client), and the server goes on. A request still running
    when a shutdown's grace period ends is cancelled by uvicorn: it is answered 503
    `shutting_down`, where uvicorn would log a traceback and answer a plain-text 500."""

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
        except asyncio.CancelledError:  # only uvicorn's shutdown cancels a request: the task ends here
            if not started:
                await error_response(503, "shutting_down", "the server is stopping: try again "
                                     "shortly")(scope, receive, send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for an answer: the connection is closed instead
                return
            response = error_response(500, "internal", "internal error: the server could not "
                                                       "answer this request (it is logged)")
            await response(scope, receive, send)

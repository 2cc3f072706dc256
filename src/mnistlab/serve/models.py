"""The API's answers, one pydantic model each: the routes build these and send them, and the
same classes are the OpenAPI docs' schemas (`response_model=`).

The routes serialise the models themselves (`model_dump_json`) into a `Response`, which FastAPI
passes on as it is: no second validation of a 28x28 input on every request. `/api/predict`
builds its models with `model_construct` from values it has just computed with the right types
(checked by the tests against these same models); `/api/health` and `/api/model` validate theirs
once, when the application is made.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

# ---- the request (documentation only: the body is read by hand, see app.py) ----------------

Pixel = Annotated[float, Field(ge=0, le=255)]


class PixelsRequest(BaseModel):
    pixels: list[Annotated[list[Pixel], Field(min_length=28, max_length=28)]] = Field(
        min_length=28, max_length=28,
        description="28 rows of 28 numbers, light ink on a dark background: 0-255, or 0-1")


# a "1": a vertical stroke, 20 rows tall, as MNIST has it (the example in the OpenAPI docs)
EXAMPLE_PIXELS = [[255 if 4 <= y < 24 and 13 <= x < 15 else 0 for x in range(28)] for y in range(28)]


# ---- the answers ---------------------------------------------------------------------------


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

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(description="what `?model=` picks it by")
    default: bool = Field(description="whether requests without `?model=` get it")
    model: str | None = Field(description="the architecture, e.g. mnistlab-cnn")
    args: dict[str, Any] = Field(description="its arguments")
    parameters: int | None
    checkpoint: str | None = Field(description="the file, without the server's folders")
    backend: str = Field(description="what computes its predictions: torch or onnx")
    device: str
    test_accuracy: float | None = Field(description="on MNIST's 10,000 test images, when known")
    class_names: list[str]


class ModelsResponse(BaseModel):
    """Every model the server serves (`mnistlab serve --model A --model B`)."""

    default: str = Field(description="the name of the model used without `?model=`")
    models: list[ModelResponse] = Field(description="each model, the default first")


class CollectResponse(BaseModel):
    """A correction stored (`POST /api/collect`, with `mnistlab serve --collect DIR`)."""

    label: str = Field(description="the class it was stored as")
    file: str = Field(description="the new file, relative to the collect folder: "
                                  "train/<class>/<UTC time>-<random>.png")


# ---- building and sending them -------------------------------------------------------------


def read_digit(probs: np.ndarray, image: np.ndarray, top_k: int) -> DigitReading:
    """One digit's reading from its (10,) probabilities and its (28, 28) input."""
    order = np.argsort(-probs, kind="stable")[:top_k].tolist()
    best = order[0]
    return DigitReading.model_construct(
        digit=best,
        confidence=round(float(probs[best]), 6),
        top_k=[TopEntry.model_construct(digit=i, probability=round(float(probs[i]), 6))
               for i in order],
        input=image.tolist(),
    )


def prediction(probs: np.ndarray, images: np.ndarray, top_k: int) -> PredictResponse:
    """The answer for the (N, 10) probabilities of N digits read left to right: one digit is
    itself with `number` and `digits`; several are a number, with no single digit."""
    if not np.isfinite(probs).all():  # a broken model: a 500, not a reading of null
        raise ValueError("the model's probabilities are not finite")
    digits = [read_digit(p, image, top_k) for p, image in zip(probs, images)]
    number = "".join(str(d.digit) for d in digits)
    if len(digits) == 1:
        d = digits[0]
        return PredictResponse.model_construct(digit=d.digit, confidence=d.confidence,
                                               top_k=d.top_k, input=d.input, number=number,
                                               digits=digits)
    confidence = float(np.prod([d.confidence for d in digits]))
    return PredictResponse.model_construct(digit=None, confidence=round(confidence, 6), top_k=[],
                                           input=None, number=number, digits=digits)


def json_response(answer: BaseModel, status: int = 200) -> Response:
    """A model as a JSON body, serialised once here (FastAPI passes a Response on)."""
    return Response(answer.model_dump_json(), status_code=status, media_type="application/json")

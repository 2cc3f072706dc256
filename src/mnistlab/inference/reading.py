"""Reading a picture: one digit, or a number written left to right, with the model's confidence.

A picture is read as a number when its ink holds more than one digit-sized group (strokes of
one digit are already merged there, specks and short marks dropped), each cut out as
`split_digits` cuts it, or when the caller says it is one; otherwise the whole picture is one
digit, as `to_mnist` makes it. `read_digits` decides and makes them from one analysis of the ink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mnistlab.inference.predictor import Predictor
from mnistlab.inference.preprocess import read_digits

DEFAULT_TOP_K = 3  # candidates listed per digit, where a model reads that many classes


@dataclass
class DigitReading:
    digit: str
    confidence: float
    top: list[tuple[str, float]]  # the k likeliest classes, likeliest first

    def to_dict(self) -> dict[str, Any]:
        return {"digit": self.digit, "confidence": self.confidence,
                "top": [{"digit": d, "probability": p} for d, p in self.top]}


@dataclass
class Reading:
    digits: list[DigitReading]
    is_number: bool
    images: np.ndarray = field(repr=False)  # (N, 28, 28) uint8: what the model saw
    # between a number's names: none where every class is one character (digits, letters),
    # a space where a class is a word ("seven one", not "sevenone")
    separator: str = field(default="", repr=False)

    @property
    def text(self) -> str:
        """The digit, or the number's digits left to right."""
        return self.separator.join(d.digit for d in self.digits)

    @property
    def confidence(self) -> float:
        """The model's probability for its answer; for a number, its least sure digit's."""
        return min(d.confidence for d in self.digits)

    def __repr__(self) -> str:
        kind = "number" if self.is_number else "digit"
        return f"Reading({kind} {self.text!r}, confidence {100 * self.confidence:.1f}%)"

    def to_dict(self) -> dict[str, Any]:
        if self.is_number:
            return {"kind": "number", "number": self.text,
                    "digits": [d.to_dict() for d in self.digits]}
        return {"kind": "digit", **self.digits[0].to_dict()}


def read_image(predictor: Predictor, image: Image.Image, *, top_k: int = DEFAULT_TOP_K,
               number: bool = False) -> Reading:
    """Read a picture; `number=True` reads it as a number even when it holds one digit.

    Raises EmptyImageError when there is no ink to read.
    """
    pieces = read_digits(image, number=number)
    is_number = number or len(pieces) > 1
    images = np.stack(pieces)
    probs = predictor.probabilities(images)
    names = predictor.info["class_names"]
    digits = []
    for p in probs:
        order = np.argsort(-p, kind="stable")[:max(1, top_k)]
        digits.append(DigitReading(names[order[0]], float(p[order[0]]),
                                   [(names[i], float(p[i])) for i in order]))
    separator = "" if all(len(name) == 1 for name in names) else " "
    return Reading(digits, is_number, images, separator)


def format_reading(name: str, reading: Reading) -> str:
    def percent(p: float) -> str:
        return f"{100 * p:.1f}%"

    if reading.is_number:
        each = ", ".join(f"{d.digit} {percent(d.confidence)}" for d in reading.digits)
        count = len(reading.digits)
        return f"{name}: {reading.text}  ({count} digit{'s' * (count != 1)}: {each})"
    d = reading.digits[0]
    top = ", ".join(f"{digit} {percent(p)}" for digit, p in d.top)
    return f"{name}: {d.digit} ({percent(d.confidence)})  top {len(d.top)}: {top}"

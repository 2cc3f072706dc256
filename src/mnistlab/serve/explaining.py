"""`POST /api/explain`: what the network sees of one digit, as PNG images in JSON.

Explanations run in PyTorch (`mnistlab.inference.explain`) on a copy of each model of its own,
one at a time in a thread of their own, so that they never hold up predictions, which have
their own threads (`batcher.Batcher`). Each is bounded in time as a prediction is: a request
waits at most the server's model timeout, then is answered 503 `model_timeout`, and one still
queued then is dropped before it runs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from mnistlab.inference.explain import Explanation, explain, explainer_copy
from mnistlab.serve.errors import ModelTimeoutError, NotExplainableError

GAP = 1  # pixels between two feature maps in a layer's mosaic


class LayerMaps(BaseModel):
    name: str = Field(description="the layer's name in the model (e.g. conv1)")
    channels: int
    height: int
    width: int
    columns: int = Field(description="maps per row of the mosaic, left to right, then down")
    image: str = Field(description="every map of the layer in one PNG (a data: URL), each "
                                   "scaled to 0-255 on its own, 1 dark pixel between two")


class ExplainResponse(BaseModel):
    model: str = Field(description="the served model's name")
    digit: int = Field(description="the winning class (an index into its class names)")
    probability: float
    input: str = Field(description="the 28x28 input the model saw, as a PNG data: URL")
    saliency: str = Field(description="a 28x28 PNG data: URL: how much each input pixel moves "
                                      "the winning class's logit (its gradient, absolute, the "
                                      "largest white)")
    layers: list[LayerMaps] = Field(description="each convolutional layer's outputs, in order")
    templates: list[str] | None = Field(description="a model without convolutions whose one "
                                        "layer maps pixels to classes (softmax regression): "
                                        "each class's 28x28 weights as a PNG, blue for positive "
                                        "and red for negative; else null")


def png(pixels: np.ndarray) -> str:
    """A uint8 (H, W) or (H, W, 3) array as a PNG data: URL."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_grey(values: np.ndarray) -> np.ndarray:
    """Each map of (..., H, W) scaled to 0-255 on its own: the pattern, not the magnitude."""
    low = values.min(axis=(-2, -1), keepdims=True)
    span = values.max(axis=(-2, -1), keepdims=True) - low
    return np.round(255 * (values - low) / np.where(span > 0, span, 1)).astype(np.uint8)


def mosaic(maps: np.ndarray) -> tuple[np.ndarray, int]:
    """(C, H, W) maps in one image of about square shape, and its number of columns."""
    count, height, width = maps.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    out = np.zeros((rows * (height + GAP) - GAP, columns * (width + GAP) - GAP), np.uint8)
    for i, tile in enumerate(to_grey(maps)):
        y, x = (i // columns) * (height + GAP), (i % columns) * (width + GAP)
        out[y:y + height, x:x + width] = tile
    return out, columns


def diverging(weights: np.ndarray) -> np.ndarray:
    """(H, W) weights as RGB: white at 0, blue for positive, red for negative."""
    top = float(np.abs(weights).max()) or 1.0
    v = weights / top
    rgb = np.full(weights.shape + (3,), 255.0)
    rgb[..., 0] -= 255 * np.clip(v, 0, 1)  # positive: less red and green, blue stays
    rgb[..., 1] -= 255 * np.abs(v)
    rgb[..., 2] -= 255 * np.clip(-v, 0, 1)  # negative: less green and blue, red stays
    return np.round(rgb).astype(np.uint8)


def response(name: str, image: np.ndarray, found: Explanation) -> ExplainResponse:
    layers = []
    for layer, maps in found.layers:
        picture, columns = mosaic(maps)
        layers.append(LayerMaps(name=layer, channels=maps.shape[0], height=maps.shape[1],
                                width=maps.shape[2], columns=columns, image=png(picture)))
    return ExplainResponse(
        model=name, digit=found.digit, probability=round(found.probability, 6),
        input=png(image), saliency=png(np.round(255 * found.saliency).astype(np.uint8)),
        layers=layers,
        templates=None if found.templates is None else [png(diverging(t)) for t in found.templates])


class Explainer:
    """Explanations of every model served, one at a time in one thread, each bounded."""

    def __init__(self, predictors: dict[str, Any], timeout: float):
        # each model's own copy to hook (None: served from an ONNX file, no PyTorch model)
        self.models = {name: None if getattr(p, "module", None) is None
                       else (explainer_copy(p.module), p.normalisation,
                             len(p.info["class_names"]))
                       for name, p in predictors.items()}
        self.timeout = timeout
        self._pool: ThreadPoolExecutor | None = None

    def _explain(self, name: str, image: np.ndarray) -> ExplainResponse:
        model, normalisation, classes = self.models[name]
        return response(name, image, explain(model, image, normalisation, classes))

    async def explain(self, name: str, image: np.ndarray) -> ExplainResponse:
        if self.models.get(name) is None:
            raise NotExplainableError(f"model {name} was served from an ONNX file: explanations "
                                      "need its checkpoint (a run folder or .safetensors file)")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnistlab-explain")
        job = asyncio.get_running_loop().run_in_executor(self._pool, self._explain, name, image)
        try:
            # past the timeout the job is cancelled: dropped if it has not started yet
            return await asyncio.wait_for(job, self.timeout)
        except TimeoutError:
            raise ModelTimeoutError(f"the explanation did not come within {self.timeout:g} s") \
                from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

"""Inference: a person's image to MNIST's input, a predictor over a checkpoint, ONNX export.

The image steps need only Pillow and numpy; `Predictor` and `export_onnx` (which bring in torch)
are imported on first use, so that reading images stays cheap.
"""

from mnistlab.inference.errors import (
    BadPixelsError,
    EmptyImageError,
    ImageError,
    ImageFileError,
    ImageTooLargeError,
    InferenceError,
    InferenceInterrupted,
    UnreadableImageError,
    UnsupportedImageError,
)
from mnistlab.inference.preprocess import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    decode_image,
    from_pixels,
    load_image,
    read_digits,
    split_digits,
    to_mnist,
)

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "BadPixelsError",
    "EmptyImageError",
    "ImageError",
    "ImageFileError",
    "ImageTooLargeError",
    "InferenceError",
    "InferenceInterrupted",
    "Predictor",
    "UnreadableImageError",
    "UnsupportedImageError",
    "decode_image",
    "export_onnx",
    "from_pixels",
    "load_image",
    "read_digits",
    "split_digits",
    "to_mnist",
]


def __getattr__(name: str):
    if name == "Predictor":
        from mnistlab.inference.predictor import Predictor

        return Predictor
    if name == "export_onnx":
        from mnistlab.inference.export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'mnistlab.inference' has no attribute {name!r}")

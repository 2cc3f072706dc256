"""The kinds of image a reader refuses, one type each; and the ways an inference can stop.

Every one is an `ImageError`, a `MnistlabError`: the CLI prints it as one line, and the HTTP
API answers each type with its own status and code (`mnistlab.serve.errors.ERRORS`), from the
type alone, so a message can be reworded without changing what a client is told.
"""

from __future__ import annotations

from mnistlab.errors import MnistlabError


class ImageError(MnistlabError):
    """An image we cannot use: not an image, truncated, too large, or a bad pixel array."""


class EmptyImageError(ImageError):
    """An image with no ink in it: reported as empty, never guessed at."""


class ImageTooLargeError(ImageError):
    """Too many bytes, too many pixels, or a header claiming a decompression bomb."""


class UnreadableImageError(ImageError):
    """A file in a format we read that cannot be decoded: empty, damaged or truncated, or a
    picture of no pixels."""


class UnsupportedImageError(ImageError):
    """Not one of the formats we read (PNG, JPEG, BMP, GIF, WebP), or not an image at all: a
    TIFF, text, random bytes, or a Python object that is no image."""


class BadPixelsError(ImageError):
    """An array of pixel values that is not 28x28 numbers in 0-255 (or 0-1)."""


class ImageFileError(ImageError):
    """An image file that cannot be read from disk: missing, a folder, not allowed."""


class InferenceInterrupted(MnistlabError):
    """An inference stopped by `Predictor.interrupt()` before it ended (a server's time bound,
    a shutdown): not the image's fault, nor its client's."""


class InferenceError(MnistlabError):
    """A model that failed on a batch of images it had accepted at load (an ONNX graph that
    errors only on some inputs): the model's fault, never the client's."""


__all__ = [
    "BadPixelsError",
    "EmptyImageError",
    "ImageError",
    "ImageFileError",
    "ImageTooLargeError",
    "InferenceError",
    "InferenceInterrupted",
    "UnreadableImageError",
    "UnsupportedImageError",
]

"""Reading a person's image file safely: a hostile or broken file is an ImageError, never a crash.

Decoding is restricted to the formats a person is likely to hand us (PNG, JPEG, BMP, GIF, WebP):
Pillow can open many more, some through outside programs (EPS runs Ghostscript), and none of
them is worth that risk here. Size is checked twice: the encoded bytes before decoding, and the
width times height from the header before any pixel is decoded, so that a small file claiming
a huge picture (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from mnistlab.errors import MnistlabError
from mnistlab.fileio import read_limited
from mnistlab.inference.errors import (  # ImageError and EmptyImageError: also imported from here
    BadPixelsError,
    EmptyImageError,
    ImageError,
    ImageFileError,
    ImageTooLargeError,
    UnreadableImageError,
    UnsupportedImageError,
)

__all__ = [
    "FORMATS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "EmptyImageError",
    "ImageError",
    "decode_image",
    "load_image",
    "to_grayscale",
    "usable_image",
]

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # largest encoded file accepted
MAX_IMAGE_PIXELS = 16_000_000  # largest decoded width * height accepted
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF or WebP"


# Pillow warns (on stderr) about pictures between its warning and error sizes, far above our
# limit; every such picture is refused below with an ImageError, so the warning only adds noise
# to what a person sees
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_image(data: bytes) -> Image.Image:
    """Decode an encoded image to grayscale (mode "L"), upright, transparency flattened as
    `to_grayscale` does."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UnsupportedImageError(f"expected the bytes of an image file, "
                                    f"got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise UnreadableImageError("the file is empty (0 bytes)")
    if size > MAX_IMAGE_BYTES:
        raise ImageTooLargeError(f"the file is too large: {size:,} bytes, "
                                 f"the limit is {MAX_IMAGE_BYTES:,}")
    try:
        # Image.open reads only the header; Pillow's own bomb check (at about 89 megapixels, far
        # above ours) raises DecompressionBombError here for absurd sizes
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed:  # the file says what it is, but Pillow cannot read even its header
            raise UnreadableImageError(f"the {claimed} image is damaged "
                                       "(its header cannot be read)") from None
        raise UnsupportedImageError(f"not a {FORMAT_NAMES} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"the image is too large: its header claims more than "
                                 f"{MAX_IMAGE_PIXELS:,} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        _check_text_limits(e)
        raise UnreadableImageError(f"not a readable image ({_reason(e)})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"the image is too large: {width}x{height} pixels, "
                                 f"the limit is {MAX_IMAGE_PIXELS:,} pixels")
    if width == 0 or height == 0:
        raise UnreadableImageError(f"the image has no pixels ({width}x{height})")
    try:
        image.load()  # the first frame only, for an animated GIF or WebP
        image = ImageOps.exif_transpose(image)
        return to_grayscale(image)
    except Image.DecompressionBombError:
        raise ImageTooLargeError("the image is too large to decode") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        # Pillow reports truncated and corrupt data with any of these, depending on the codec
        _check_text_limits(e)
        kind = f"{image.format} image" if image.format else "image"
        raise UnreadableImageError(f"the {kind} is damaged or truncated "
                                   f"({_reason(e)})") from None


# Pillow's limits on a PNG's text chunks (a decompression bomb in zTXt or iTXt, or too many of
# them) raise a plain ValueError, told apart from a corrupt file only by where it was raised
PILLOW_TEXT_LIMITS = ("_safe_zlib_decompress", "check_text_memory")


def _check_text_limits(e: BaseException) -> None:
    """An ImageTooLargeError if Pillow raised `e` in one of its text-chunk limits."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if isinstance(e, ValueError) and tb is not None \
            and tb.tb_frame.f_code.co_name in PILLOW_TEXT_LIMITS:
        raise ImageTooLargeError(f"the image is too large: its text chunks pass Pillow's limit "
                                 f"({_reason(e)})") from None


def _claimed_format(data: bytes) -> str | None:
    """The format whose signature the data starts with (one we open), if any."""
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return None  # BMP's two-byte "BM" would claim too many files that are not images


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file and decode it; errors name the file. A FIFO or a device is refused by
    its type, and no more than MAX_IMAGE_BYTES are read, whatever `stat` says."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else 0
    except OSError:
        size = 0  # read_limited says what is wrong with it
    if size > MAX_IMAGE_BYTES:  # an ordinary file: refused before reading, its size said
        raise ImageTooLargeError(f"{path}: the file is too large: {size:,} bytes, "
                                 f"the limit is {MAX_IMAGE_BYTES:,}")
    try:
        data = read_limited(path, MAX_IMAGE_BYTES, "image")
    except MnistlabError as e:  # missing, not allowed, not a regular file, or longer than read
        raise ImageFileError(str(e)) from None
    try:
        return decode_image(data)
    except ImageError as e:
        raise type(e)(f"{path}: {e}") from None


def usable_image(image: Image.Image) -> Image.Image:
    """A Pillow image handed to us from Python, its pixels loaded: an ImageError, as
    `decode_image` gives for a file's bytes, when it has no pixels, was closed, or holds a
    file that cannot be decoded (Image.open reads only the header; the rest is read here)."""
    width, height = image.size
    if width == 0 or height == 0:
        raise UnreadableImageError(f"the image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:  # as for a file, before its pixels are decoded
        raise ImageTooLargeError(f"the image is too large: {width}x{height} pixels, "
                                 f"the limit is {MAX_IMAGE_PIXELS:,} pixels")
    try:
        image.load()
    except (AssertionError, AttributeError):  # its file closed first, as a `with` block does:
        # Pillow asserts that the file is open (older releases read from None)
        raise UnreadableImageError("the image's file was closed before its pixels were read: "
                                   "call load() on it while the file is open") from None
    except ValueError as e:  # Pillow's "Operation on closed image", after image.close()
        raise UnreadableImageError(f"the image cannot be read ({_reason(e)})") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise UnreadableImageError(f"the image is damaged or truncated ({_reason(e)})") from None
    return image


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any Pillow image to mode "L", transparent parts flattened onto white, or onto black where
    they are the background of light ink (see `_flatten`)."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit or float pixels: Pillow's conversion to "L" clips rather than scales
        a = np.asarray(image, dtype=np.float64)
        if not np.isfinite(a).all():  # a float image made in Python can hold them
            raise BadPixelsError("pixels hold NaN or infinite values")
        top = 65535.0 if mode != "F" and a.max(initial=0) > 255 else 255.0
        if mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8))
    if mode == "LAB":  # Pillow converts it to nothing: its L band is the lightness
        return image.getchannel("L")
    if mode == "La":  # premultiplied: Pillow undoes that only on the way to LA
        image, mode = image.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        return _flatten(image if mode == "RGBA" else image.convert("RGBA"))
    return image.convert("L")


def _flatten(rgba: Image.Image) -> Image.Image:
    """A picture with transparency to mode "L": its transparent part filled so the ink shows.

    Transparency is nothing, not a colour, so what fills it is a choice, and the ink must stand
    out from it. When the transparent part covers most of the picture, it is the background and
    the opaque part is the ink drawn on it (a canvas, a drawing app's export): the fill must
    contrast with that ink, so light ink (alpha-weighted mean grey level 128 or more: white
    strokes from a dark-mode app) goes onto black, and dark ink (a web page's canvas) onto white.
    When the opaque part covers most of it, it holds its own background (a scan with transparent
    corners after rotating, a screenshot's rounded corners), and the margins go onto white, as
    paper is: onto black they would be the ink. So does a picture whose alpha does not vary,
    which holds no shape of its own.
    """
    alpha = rgba.getchannel("A")
    low, high = alpha.getextrema()
    if low == 255:  # opaque: the colours are the picture; no composite needed
        return rgba.convert("L")
    if low != high:
        levels = np.arange(256, dtype=np.int64)
        opacity = int(np.dot(alpha.histogram(), levels))  # the sum of alpha, from 256 counts
        if 2 * opacity < 255 * rgba.width * rgba.height:  # the transparent part is the background
            on_black = ImageChops.multiply(rgba.convert("L"), alpha)  # grey * alpha / 255
            # the sum of grey * alpha over the sum of alpha: the ink's mean level, 128 or more
            if 255 * int(np.dot(on_black.histogram(), levels)) >= 128 * opacity:
                return on_black
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("L")


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

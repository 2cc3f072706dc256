"""From a person's picture of a digit to the 28x28 input MNIST itself was made of.

MNIST's digits were written dark on light, scanned, size-normalised to fit a 20x20 box keeping
their aspect ratio (the anti-aliasing of that scaling gives the grey levels), then placed in a
28x28 field so that their centre of mass falls at its centre (LeCun et al.). A model trained on
MNIST knows nothing else: light ink on black, about 20 pixels tall, centred by mass. The steps
here rebuild exactly that from any picture:

1. grayscale, with transparency flattened onto white (`images.to_grayscale`);
2. find the background (the median of the border) and which way the ink goes from it, so that
   dark-on-light and light-on-dark pictures both end up light ink on a zero background;
3. Otsu's threshold separates ink from background noise; pixels within the border's noise level
   become 0, and the rest keep their grey levels (the anti-aliasing), stretched so that the
   strongest ink is full white: a faint pencil stroke reads as well as a marker;
4. connected components of the thresholded ink: specks are ignored, pieces that overlap
   horizontally (the two strokes of a 4 or a 5) belong to one digit;
5. crop, thicken strokes that the scaling would thin to nothing (a 1-pixel line on a large
   canvas), scale into the 20x20 box with Lanczos, place by centre of mass in 28x28.

Pillow and numpy only: the per-pixel work is vectorised, and large pictures are max-pooled to at
most ANALYSIS_SIZE pixels a side first (max keeps thin strokes, which averaging would fade).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mnistlab.inference.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    EmptyImageError,
    ImageError,
    decode_image,
    load_image,
    to_grayscale,
)

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "EmptyImageError",
    "ImageError",
    "decode_image",
    "from_pixels",
    "load_image",
    "split_digits",
    "to_mnist",
]

SIZE = 28  # the field
BOX = 20  # the box the digit is scaled into
CENTRE = 14.0  # where MNIST's centres of mass lie, in pixel indices (measured: 13.99, 14.00)
ANALYSIS_SIZE = 512  # larger pictures are max-pooled to this many pixels a side
MIN_CONTRAST = 16  # of 255: less than this between ink and background is no ink at all
TARGET_STROKE = 2.0  # thinnest stroke in the 20x20 box; MNIST's own are about 2 to 3 pixels
SPECK = 0.03  # a component under this fraction of the largest one's area is a speck
MAX_PIECES = 64  # at most this many of the largest components are grouped into digits
FRINGE = 2  # pixels around the thresholded ink kept for its anti-aliased edge
SHORT = 0.75  # a piece under this fraction of another's height can be a stroke of its digit
MIN_DIGIT_HEIGHT = 0.35  # of the tallest digit: anything shorter in a number is a mark, not a digit


# ---- the public steps ----------------------------------------------------------------------


def to_mnist(image: Image.Image) -> np.ndarray:
    """One digit, as MNIST would have it: (28, 28) uint8, light ink on 0, max 255.

    Raises EmptyImageError when there is no ink to read.
    """
    ink = _find_ink(image)
    comps = _components(ink.mask)
    solid = comps.area >= SPECK * comps.area.max()
    return _normalise(ink.gray, comps.bbox(solid))


def split_digits(image: Image.Image) -> list[np.ndarray]:
    """A written number: each digit, left to right, as `to_mnist` would make it."""
    ink = _find_ink(image)
    comps = _components(ink.mask)
    digits = []
    for group in _digit_groups(comps):
        region = _max_filter(comps.paint(group), FRINGE)  # this digit and its anti-aliased edge
        digits.append(_normalise(ink.gray * region, comps.bbox(group)))
    return digits


def from_pixels(pixels) -> np.ndarray:
    """A 28x28 array of numbers already laid out like MNIST (light ink on 0) to uint8.

    Values are 0-255, or 0-1 when none is above 1 (a canvas's floats). Nothing is moved or
    rescaled beyond that: the caller promises MNIST's layout. An all-zero array is empty.
    """
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ImageError(f"pixels must be a 28x28 array of numbers ({_first_line(e)})") from None
    if a.shape != (SIZE, SIZE):
        raise ImageError(f"pixels must be a 28x28 array of numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ImageError("pixels hold NaN or infinite values")
    low, high = float(a.min()), float(a.max())
    if low < 0 or high > 255:
        raise ImageError(f"pixels must lie in 0-255 (or 0-1), got values from {low:g} to {high:g}")
    if high <= 1.0:
        a = a * 255.0
    out = np.rint(a).astype(np.uint8)
    if not out.any():
        raise EmptyImageError("no ink found: every pixel is 0")
    return out


# ---- finding the ink -----------------------------------------------------------------------


@dataclass
class _Ink:
    gray: np.ndarray  # float32 (H, W) in [0, 1]: 1 is the strongest ink, 0 the background
    mask: np.ndarray  # bool (H, W): surely ink, above Otsu's threshold


def _find_ink(image: Image.Image) -> _Ink:
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a Pillow image, got {type(image).__name__}")
    a = np.asarray(to_grayscale(image), dtype=np.uint8)
    h, w = a.shape
    band = max(1, min(h, w) // 50)
    border = np.concatenate([a[:band].ravel(), a[-band:].ravel(),
                             a[:, :band].ravel(), a[:, -band:].ravel()]).astype(np.int16)
    background, sign, samples = _background(a, border)
    v = np.clip(sign * (a.astype(np.int16) - background), 0, 255).astype(np.uint8)
    # the background's own variation (paper grain, JPEG noise): 4.5 median absolute deviations
    # are 3 standard deviations of Gaussian noise, and the median is blind to the ink and edges
    # that reach into the samples
    noise = 4.5 * float(np.median(np.abs(samples - background)))
    if int(v.max()) < max(MIN_CONTRAST, 3 * noise):
        raise EmptyImageError("no digit found (empty image)")
    threshold = max(_otsu(np.bincount(v.ravel(), minlength=256)), int(noise))
    mask = v > threshold
    if not mask.any():
        raise EmptyImageError("no digit found (empty image)")
    strong = float(np.percentile(v[mask], 99))
    floor = min(noise, float(threshold))
    if max(h, w) > ANALYSIS_SIZE:
        k = math.ceil(max(h, w) / ANALYSIS_SIZE)
        v, mask = _block_max(v, k), _block_max(mask, k)
    gray = np.clip((v.astype(np.float32) - floor) / max(strong - floor, 1.0), 0.0, 1.0)
    return _Ink(gray, mask)


def _background(a: np.ndarray, border: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The background's grey level, the sign that turns ink positive, background samples."""
    split = _otsu(np.bincount(a.ravel(), minlength=256))
    dark_border = float((border <= split).mean())
    if 0.2 < dark_border < 0.8:
        # as much ink as paper on the border: a picture cropped tight around its digit. The
        # background is then the class covering more of the picture; near a tie, dark ink on
        # light paper, the commoner case
        dark = a <= split
        dark_ink = bool(dark.mean() < 0.6)
        samples = (a[~dark] if dark_ink else a[dark]).astype(np.int16)
        return int(np.median(samples)), -1 if dark_ink else 1, samples
    background = int(np.median(border))
    # the ink lies on the side of the background where the picture reaches farther
    sign = -1 if background - int(a.min()) > int(a.max()) - background else 1
    return background, sign, border


def _otsu(hist: np.ndarray) -> int:
    """Otsu's threshold: the level that best splits the histogram in two (ink is above it)."""
    p = hist.astype(np.float64) / max(1, hist.sum())
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = 0.0
    return int(np.argmax(between))


def _block_max(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape
    padded = np.zeros((-(-h // k) * k, -(-w // k) * k), dtype=a.dtype)
    padded[:h, :w] = a
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).max(axis=(1, 3))


def _max_filter(a: np.ndarray, r: int) -> np.ndarray:
    """Grey dilation by a (2r+1)-pixel square: thickens strokes, keeps their soft edges."""
    out = a.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, r + 1):
            if d >= a.shape[axis]:
                break
            lead = [slice(None)] * 2
            lag = [slice(None)] * 2
            lead[axis], lag[axis] = slice(d, None), slice(None, -d)
            np.maximum(out[tuple(lead)], src[tuple(lag)], out=out[tuple(lead)])
            np.maximum(out[tuple(lag)], src[tuple(lead)], out=out[tuple(lag)])
    return out


# ---- connected components, from horizontal runs --------------------------------------------


@dataclass
class _Components:
    shape: tuple[int, int]
    run_y: np.ndarray  # each run of ink pixels in a row: its row, first column, end column
    run_x0: np.ndarray
    run_x1: np.ndarray  # exclusive
    run_label: np.ndarray  # the component each run belongs to
    area: np.ndarray  # per component: pixel count and bounding box (y1, x1 exclusive)
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray

    def bbox(self, select: np.ndarray) -> tuple[int, int, int, int]:
        return (int(self.y0[select].min()), int(self.y1[select].max()),
                int(self.x0[select].min()), int(self.x1[select].max()))

    def paint(self, select: np.ndarray) -> np.ndarray:
        """The mask of the chosen components (a boolean or index array over components)."""
        chosen = np.zeros(len(self.area), dtype=bool)
        chosen[select] = True
        runs = chosen[self.run_label]
        h, w = self.shape
        edges = np.zeros((h, w + 1), dtype=np.int32)
        np.add.at(edges, (self.run_y[runs], self.run_x0[runs]), 1)
        np.add.at(edges, (self.run_y[runs], self.run_x1[runs]), -1)
        return np.cumsum(edges, axis=1)[:, :w] > 0


def _components(mask: np.ndarray) -> _Components:
    """8-connected components. Runs, not pixels, are joined: a few thousand Python steps."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    ys, x0 = np.nonzero(step == 1)
    _, x1 = np.nonzero(step == -1)  # row-major order pairs each end with its start
    n = len(ys)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(ys, np.arange(h + 1)).tolist()
    xs0, xs1 = x0.tolist(), x1.tolist()
    for y in range(1, h):
        i, i_end = row_start[y], row_start[y + 1]
        j, j_end = row_start[y - 1], row_start[y]
        while i < i_end and j < j_end:
            # touching, diagonals included: each starts no later than the other's end
            if xs0[i] <= xs1[j] and xs0[j] <= xs1[i]:
                ri, rj = root(i), root(j)
                if ri != rj:
                    parent[ri] = rj
            if xs1[i] < xs1[j]:
                i += 1
            else:
                j += 1
    _, labels = np.unique(np.array([root(i) for i in range(n)], dtype=np.int64),
                          return_inverse=True)
    count = int(labels.max()) + 1 if n else 0
    y0 = np.full(count, h, dtype=np.int64)
    x0c = np.full(count, w, dtype=np.int64)
    y1 = np.zeros(count, dtype=np.int64)
    x1c = np.zeros(count, dtype=np.int64)
    np.minimum.at(y0, labels, ys)
    np.maximum.at(y1, labels, ys + 1)
    np.minimum.at(x0c, labels, x0)
    np.maximum.at(x1c, labels, x1)
    area = np.bincount(labels, weights=x1 - x0, minlength=count).astype(np.int64)
    return _Components((h, w), ys, x0, x1, labels, area, y0, y1, x0c, x1c)


def _digit_groups(comps: _Components) -> list[np.ndarray]:
    """Components grouped into digits, left to right, each an array of component indices."""
    solid = np.flatnonzero(comps.area >= SPECK * comps.area.max())
    # handwriting has a few pieces per digit; past MAX_PIECES the rest count as specks, which
    # keeps the pairwise merging below cheap even on a picture of noise
    solid = solid[np.argsort(-comps.area[solid], kind="stable")][:MAX_PIECES]
    solid = solid[np.argsort(comps.x0[solid], kind="stable")]
    groups = [[int(i)] for i in solid]
    boxes = [comps.bbox(np.array(g)) for g in groups]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if _same_digit(boxes[a], boxes[b]):
                    groups[a] += groups.pop(b)
                    box_b = boxes.pop(b)
                    boxes[a] = (min(boxes[a][0], box_b[0]), max(boxes[a][1], box_b[1]),
                                min(boxes[a][2], box_b[2]), max(boxes[a][3], box_b[3]))
                    merged = True
                    break
            if merged:
                break
    tallest = max(y1 - y0 for y0, y1, _, _ in boxes)
    kept = [(box, g) for box, g in zip(boxes, groups) if box[1] - box[0] >= MIN_DIGIT_HEIGHT * tallest]
    kept.sort(key=lambda item: (item[0][2] + item[0][3]) / 2)
    # a speck whose centre lies over a digit is part of it (a broken stroke), not noise
    specks = np.setdiff1d(np.arange(len(comps.area)), solid)
    centres = (comps.x0[specks] + comps.x1[specks]) / 2
    return [np.concatenate([np.array(g), specks[(centres >= box[2]) & (centres < box[3])]])
            for box, g in kept]


def _same_digit(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two pieces overlapping horizontally are strokes of one digit.

    Most of the narrower one must lie over the other; and either one is much shorter (the bar of
    a 5, one stroke of a 4) or the overlap covers most of both (the halves of a broken 0). Two
    digits of a number touch at most at their edges, or as a tall 1 under a 7's long bar.
    """
    wa, wb = a[3] - a[2], b[3] - b[2]
    ha, hb = a[1] - a[0], b[1] - b[0]
    overlap = min(a[3], b[3]) - max(a[2], b[2])
    if overlap < 0.5 * min(wa, wb):
        return False
    return min(ha, hb) < SHORT * max(ha, hb) or overlap >= 0.5 * max(wa, wb)


# ---- into the 20x20 box, centred by mass ---------------------------------------------------


def _normalise(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    h, w = gray.shape
    # widen the box by the anti-aliased fringe, then tighten it to the ink really there
    crop = gray[max(0, y0 - FRINGE):min(h, y1 + FRINGE), max(0, x0 - FRINGE):min(w, x1 + FRINGE)]
    crop = _tight(crop)
    side = max(crop.shape)
    if side > BOX:
        # strokes thinner than TARGET_STROKE after scaling would fade into grey dust: widen them
        # first, by as much as the scaling will take away
        width = _stroke_width(crop > 0.5)
        grow = round((TARGET_STROKE * side / BOX - width) / 2)
        if grow >= 1:
            crop = _tight(_max_filter(np.pad(crop, grow), grow))
            side = max(crop.shape)
    scale = BOX / side
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    picture = Image.fromarray(crop.astype(np.float32) * 255.0)
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(picture, dtype=np.float32), 0.0, 255.0)
    top = float(digit.max())
    if top <= 0:
        raise EmptyImageError("no digit found (empty image)")
    digit *= 255.0 / top  # Lanczos averages a thin stroke down; its strongest pixel is ink
    return _centre(np.rint(digit).astype(np.uint8))


def _tight(a: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(a.any(axis=1))
    cols = np.flatnonzero(a.any(axis=0))
    if len(rows) == 0:
        raise EmptyImageError("no digit found (empty image)")
    return a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width: area over half the perimeter, for a stroke long next to its width."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    m = np.pad(mask, 1).astype(np.int8)
    edges = int(np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum())
    return 2.0 * area / max(1, edges)


def _centre(digit: np.ndarray) -> np.ndarray:
    """Place the digit in 28x28 with its centre of mass at MNIST's centre, never cut off."""
    h, w = digit.shape
    mass = digit.astype(np.float64)
    total = mass.sum()
    cy = float((mass.sum(axis=1) * np.arange(h)).sum() / total)
    cx = float((mass.sum(axis=0) * np.arange(w)).sum() / total)
    top = min(max(round(CENTRE - cy), 0), SIZE - h)
    left = min(max(round(CENTRE - cx), 0), SIZE - w)
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[top:top + h, left:left + w] = digit
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

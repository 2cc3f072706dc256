"""From a person's picture of a digit to the 28x28 input MNIST itself was made of.

MNIST's digits were written dark on light, scanned, size-normalised to fit a 20x20 box keeping
their aspect ratio (the anti-aliasing of that scaling gives the grey levels), then placed in a
28x28 field so that their centre of mass falls at its centre (LeCun et al.). A model trained on
MNIST knows nothing else: light ink on black, about 20 pixels tall, centred by mass. The steps
here rebuild exactly that from any picture:

1. grayscale, with transparency flattened onto white, or onto black where it is the
   background of light ink (`images.to_grayscale`);
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
Steps 2 and 3 work on the picture's histogram (256 counts) and per-level lookup tables, so the
pixels themselves are passed over only a few times; `read_digits` runs steps 2-4 once and makes
either the one digit `to_mnist` makes or the digits `split_digits` makes from that analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mnistlab.inference.errors import (
    BadPixelsError,
    EmptyImageError,
    ImageError,
    UnsupportedImageError,
)
from mnistlab.inference.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    _reason,
    decode_image,
    load_image,
    to_grayscale,
)

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "BadPixelsError",
    "EmptyImageError",
    "ImageError",
    "decode_image",
    "from_pixels",
    "load_image",
    "read_digits",
    "split_digits",
    "to_mnist",
]

SIZE = 28  # the field
BOX = 20  # the box the digit is scaled into
CENTRE = 14.0  # where MNIST's centres of mass lie, in pixel indices (measured: 13.99, 14.00)
ANALYSIS_SIZE = 512  # larger pictures are max-pooled to this many pixels a side
MIN_CONTRAST = 16  # of 255: less than this between ink and background is no ink at all
MIN_INK_PIXELS = 4  # fewer pixels of ink than this are a speck, not a digit
GRAIN_ROWS = 64  # rows of a picture enough to measure its grain (every row of a smaller one)
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
    return _whole(ink, _components(ink.mask))


def split_digits(image: Image.Image) -> list[np.ndarray]:
    """A written number: each digit, left to right, as `to_mnist` would make it."""
    ink = _find_ink(image)
    comps = _components(ink.mask)
    return [_piece(ink, comps, group) for group in _digit_groups(comps)]


def read_digits(image: Image.Image, *, number: bool = False) -> list[np.ndarray]:
    """The digits of a picture, left to right, from one analysis of its ink.

    When it holds one digit-sized group of ink (and `number` is false), that is `[to_mnist(image)]`;
    otherwise it is `split_digits(image)`: the same arrays as those calls give, for the cost of
    one. `number=True` cuts a lone digit as `split_digits` does, for a picture that is a number.
    Raises EmptyImageError when there is no ink to read.
    """
    ink = _find_ink(image)
    comps = _components(ink.mask)
    groups = _digit_groups(comps)
    if len(groups) == 1 and not number:
        return [_whole(ink, comps)]
    return [_piece(ink, comps, group) for group in groups]


def from_pixels(pixels) -> np.ndarray:
    """A 28x28 array of numbers already laid out like MNIST (light ink on 0) to uint8.

    Values are 0-255, or 0-1 when none is above 1 (a canvas's floats). Nothing is moved or
    rescaled beyond that: the caller promises MNIST's layout. An all-zero array is empty.
    """
    if isinstance(pixels, (list, tuple)):  # rows of several lengths: say so, not numpy's words
        lengths = {len(row) for row in pixels if isinstance(row, (list, tuple))}
        if len(lengths) > 1:
            raise BadPixelsError(f"pixels must be 28 rows of 28 numbers, got rows of "
                                 f"{min(lengths)} to {max(lengths)} numbers")
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except OverflowError:  # an integer beyond any float (JSON allows 400 digits): not a pixel
        raise BadPixelsError("pixels must lie in 0-255 (or 0-1), got an integer too large "
                             "for any number type") from None
    except (TypeError, ValueError) as e:
        raise BadPixelsError(f"pixels must be a 28x28 array of numbers ({_reason(e)})") from None
    if a.shape != (SIZE, SIZE):
        raise BadPixelsError(f"pixels must be a 28x28 array of numbers, got shape {a.shape}")
    out = pixel_bytes(a)
    if not out.any():
        raise EmptyImageError("no digit found (empty image): no ink found: every pixel is 0")
    return out


def pixel_bytes(a: np.ndarray) -> np.ndarray:
    """Float pixel values to uint8: 0-255 as they are, 0-1 (a canvas's floats, say) scaled up.
    NaN, infinities and values outside 0-255 are refused."""
    if not np.isfinite(a).all():
        raise BadPixelsError("pixels hold NaN or infinite values")
    low, high = float(a.min()), float(a.max())
    if low < 0 or high > 255:
        raise BadPixelsError(f"pixels must lie in 0-255 (or 0-1), got values from {low:.12g} "
                             f"to {high:.12g}")
    if high <= 1.0:
        a = a * 255.0
    return np.rint(a).astype(np.uint8)


# ---- finding the ink -----------------------------------------------------------------------


@dataclass
class _Ink:
    level: np.ndarray  # uint8 (H, W): the ink's strength, 0 on the background
    mask: np.ndarray  # bool (H, W): surely ink, above Otsu's threshold
    floor: float  # levels up to this are background noise, 0 in gray
    span: float  # levels from floor + span on are full ink, 1 in gray

    def gray(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """float32 in [0, 1] over a window: 1 is the strongest ink, 0 the background. Only the
        windows of digits are ever needed, so the rest of the picture is never converted."""
        gray = self.level[top:bottom, left:right].astype(np.float32)
        gray -= self.floor
        gray /= self.span
        return np.clip(gray, 0.0, 1.0, out=gray)


_LEVELS = np.arange(256, dtype=np.int16)  # the grey levels, for per-level lookup tables
_LEVELS_F64 = _LEVELS.astype(np.float64)


def _find_ink(image: Image.Image) -> _Ink:
    if not isinstance(image, Image.Image):
        raise UnsupportedImageError(f"expected a Pillow image, got {type(image).__name__}")
    grey = to_grayscale(image)
    a = np.asarray(grey, dtype=np.uint8)
    h, w = a.shape
    band = max(1, min(h, w) // 50)
    border = np.concatenate([a[:band].ravel(), a[-band:].ravel(),
                             a[:, :band].ravel(), a[:, -band:].ravel()])
    # everything up to the mask is decided on histograms: the picture's, its border's, and the
    # ink's (each grey level of the picture maps to one ink level)
    if a.size > 10_000:  # Pillow counts a large picture faster; numpy a small one
        hist = np.array(grey.histogram(), dtype=np.int64)
    else:
        hist = np.bincount(a.ravel(), minlength=256)
    background, sign, samples = _background(hist, np.bincount(border, minlength=256))
    to_ink = np.clip(sign * (_LEVELS - background), 0, 255).astype(np.uint8)
    ink_hist = np.bincount(to_ink, weights=hist, minlength=256).astype(np.int64)
    # the background's own variation (paper grain, JPEG noise): 4.5 median absolute deviations
    # are 3 standard deviations of Gaussian noise, and the median is blind to the ink and edges
    # that reach into the samples
    noise = 4.5 * _median(_deviations(samples, background))
    # ink is what stands 6 standard deviations of the noise off the background, which Gaussian
    # noise reaches in about one pixel in a billion, in a few pixels at least: a faint pencil
    # stroke on grainy paper is ink, a lone speck of dust is not. The grain between neighbours
    # measures the noise too where `noise` cannot: a picture of noise alone looks cropped
    # tight, half "ink", to _background
    visible = max(MIN_CONTRAST, math.ceil(2 * max(noise, _grain(a))))
    if ink_hist[visible:].sum() < MIN_INK_PIXELS:  # none at all when visible is past 255
        # past 255 even black on white would not stand out: static, not a blank sheet
        why = "the picture is noise: no stroke could stand out from it" if visible > 255 else "empty image"
        raise EmptyImageError(f"no digit found ({why})")
    threshold = max(_otsu(ink_hist), int(noise))
    strong_hist = ink_hist.copy()
    strong_hist[:threshold + 1] = 0  # the levels of the mask's pixels
    if not strong_hist.any():
        raise EmptyImageError("no digit found (empty image)")
    strong = _percentile_99(strong_hist)
    floor = min(noise, float(threshold))
    # the ink, as to_ink maps it, in two uint8 passes (cheaper than indexing the table)
    if sign < 0:
        v = np.minimum(a, background)
        np.subtract(background, v, out=v)
    else:
        v = np.maximum(a, background)
        v -= background
    if max(h, w) > ANALYSIS_SIZE:
        # max-pooling the ink and then thresholding it is the same as pooling the mask
        v = _block_max(v, math.ceil(max(h, w) / ANALYSIS_SIZE))
    return _Ink(v, v > threshold, floor, max(strong - floor, 1.0))


def _background(hist: np.ndarray, border: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The background's grey level, the sign that turns ink positive, and the histogram of the
    background's samples; from the histograms of the picture and of its border."""
    split = _otsu(hist)
    dark_border = float(border[:split + 1].sum() / border.sum())
    if 0.2 < dark_border < 0.8:
        # as much ink as paper on the border: a picture cropped tight around its digit. The
        # background is then the class covering more of the picture; near a tie, dark ink on
        # light paper, the commoner case
        dark_ink = bool(hist[:split + 1].sum() / hist.sum() < 0.6)
        samples = hist.copy()
        if dark_ink:
            samples[:split + 1] = 0
        else:
            samples[split + 1:] = 0
        return int(_median(samples)), -1 if dark_ink else 1, samples
    background = int(_median(border))
    # the ink lies on the side of the background where the picture reaches farther
    present = np.flatnonzero(hist)
    low, high = int(present[0]), int(present[-1])
    sign = -1 if background - low > high - background else 1
    return background, sign, border


def _grain(a: np.ndarray) -> float:
    """3 standard deviations of a picture's pixel-to-pixel noise, from the median absolute
    difference of horizontal neighbours (0.954 standard deviations for Gaussian noise): blind
    to the few differences at the ink's edges, and to how much of the picture is ink."""
    rows = a[:: max(1, a.shape[0] // GRAIN_ROWS)]
    left, right = rows[:, :-1], rows[:, 1:]
    steps = np.maximum(left, right)
    steps -= np.minimum(left, right)  # |difference|, in uint8 without a wider copy
    if steps.size == 0:
        return 0.0
    return 3 / 0.954 * _median(np.bincount(steps.ravel(), minlength=256))


def _median(hist: np.ndarray) -> float:
    """The median of the values a histogram counts, as np.median gives it (the mean of the two
    middle values for an even count)."""
    n = int(hist.sum())
    cumulative = np.cumsum(hist)
    low, high = np.searchsorted(cumulative, [(n - 1) // 2, n // 2], side="right")
    return (int(low) + int(high)) / 2


def _deviations(hist: np.ndarray, centre: int) -> np.ndarray:
    """The histogram of |value - centre| for the values `hist` counts."""
    out = np.zeros(256, dtype=np.int64)
    above = hist[centre:]  # deviations 0, 1, ...
    out[:len(above)] += above
    below = hist[centre::-1]  # deviations 0, 1, ... again; 0 is counted above
    out[1:len(below)] += below[1:]
    return out


def _percentile_99(hist: np.ndarray) -> float:
    """np.percentile(values, 99) of the values a histogram counts, computed as numpy computes it
    (its default 'linear' method, numpy 1.22 and later): between the order statistics at
    floor((n - 1) * 0.99) and the next, each end interpolated from its own side."""
    n = int(hist.sum())
    virtual = (n - 1) * 0.99
    below = math.floor(virtual)
    low, high = np.searchsorted(np.cumsum(hist), [below, min(below + 1, n - 1)], side="right")
    low, high = int(low), int(high)
    gamma = virtual - below
    step = float(high - low)
    return high - step * (1 - gamma) if gamma >= 0.5 else low + step * gamma


def _otsu(hist: np.ndarray) -> int:
    """Otsu's threshold: the level that best splits the histogram in two (ink is above it)."""
    p = hist.astype(np.float64) / max(1, hist.sum())
    w0 = np.cumsum(p)
    mu = np.cumsum(p * _LEVELS_F64[:len(p)])
    spread = w0 * (1.0 - w0)
    between = np.zeros_like(spread)  # 0 where one class is empty
    np.divide((mu[-1] * w0 - mu) ** 2, spread, out=between, where=spread != 0)
    return int(np.argmax(between))


def _block_max(a: np.ndarray, k: int) -> np.ndarray:
    """Max over k x k blocks of uint8 `a` (partial blocks at the edges), by elementwise maxima
    of strided views: many times faster than a max over the axes of a (h/k, k, w/k, k) reshape.
    Nothing is padded to a multiple of k: a picture 1 pixel tall and 16 million wide would
    make that k times its own size."""
    h, w = a.shape
    rows = np.zeros((-(-h // k), w), dtype=a.dtype)  # 0 is the least uint8: neutral for max
    for i in range(min(k, h)):
        part = a[i::k]
        np.maximum(rows[:len(part)], part, out=rows[:len(part)])
    out = np.zeros((len(rows), -(-w // k)), dtype=a.dtype)
    for i in range(min(k, w)):
        part = rows[:, i::k]
        np.maximum(out[:, :part.shape[1]], part, out=out[:, :part.shape[1]])
    return out


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

    def paint(self, select: np.ndarray,
              window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The mask of the chosen components (a boolean or index array over components), of the
        whole picture or of a window (top, bottom, left, right) holding all of them."""
        chosen = np.zeros(len(self.area), dtype=bool)
        chosen[select] = True
        runs = chosen[self.run_label]
        top, bottom, left, right = window or (0, self.shape[0], 0, self.shape[1])
        # +1 where a run starts, -1 where it ends: a run ends at least a pixel before the next
        # one in its row starts, so no two marks fall on one place
        edges = np.zeros((bottom - top, right - left + 1), dtype=np.int8)
        rows = self.run_y[runs] - top
        edges[rows, self.run_x0[runs] - left] = 1
        edges[rows, self.run_x1[runs] - left] = -1
        return np.cumsum(edges, axis=1, dtype=np.int8)[:, :right - left] > 0


def _components(mask: np.ndarray) -> _Components:
    """8-connected components. Runs, not pixels, are joined, and numpy finds which touch.

    The components are numbered in the order of their roots in a union-find that takes the
    pairs of touching runs row by row, left to right, and hangs the lower run's tree under the
    upper one's; that order settles ties later on, so it is kept exactly. A run meets its first
    touching run above while still alone, which makes no choice of root: numpy links all those
    at once. Only a run touching several above (the foot of a U, a loop closing) merges two
    trees; Python does just those merges, in the sweep's order.
    """
    h, w = mask.shape
    stride = w + 2  # each row with a blank column either side, the rows end to end
    padded = np.zeros((h, stride), dtype=bool)
    padded[:, 1:-1] = mask
    flat = padded.ravel()
    # the changes alternate: a run's start (blank to ink), then its end (ink to blank); as
    # positions in the flat picture, row * stride + column, the end exclusive
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    start, end = changes[0::2], changes[1::2]
    ys = start // stride
    x0, x1 = start - ys * stride, end - ys * stride
    n = len(ys)
    # for each run, the runs of the row above touching it (diagonals included: each starts no
    # later than the other's end): `count` of them from `first`
    first = np.searchsorted(end, start - stride)
    count = np.maximum(np.searchsorted(start, end - stride, side="right") - first, 0)
    linked = np.flatnonzero(count)
    roots = np.arange(n)
    roots[linked] = first[linked]
    roots = _merge_trees(_to_roots(roots), first, count)
    is_root = roots == np.arange(n)
    labels = (np.cumsum(is_root) - 1)[roots]  # components numbered in the order of their roots
    count = int(is_root.sum())
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


def _merge_trees(roots: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The roots once each run touching several runs above (`count` of them from `first`)
    has joined the trees of all of them: in the sweep's order, the lower tree under the upper."""
    several = np.flatnonzero(count > 1)
    if not len(several):
        return roots
    more = count[several] - 1  # each one's touching runs above after its first
    lower = np.repeat(several, more)
    upper = np.repeat(first[several] + 1 - (np.cumsum(more) - more), more) \
        + np.arange(int(more.sum()))
    parent = roots.tolist()

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(lower.tolist(), upper.tolist()):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[ri] = rj
    return _to_roots(np.array(parent, dtype=np.int64))


def _to_roots(parent: np.ndarray) -> np.ndarray:
    """Each node's root in a forest of parent pointers (a root is its own parent)."""
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def _digit_groups(comps: _Components) -> list[np.ndarray]:
    """Components grouped into digits, left to right, each an array of component indices."""
    solid = np.flatnonzero(comps.area >= SPECK * comps.area.max())
    # handwriting has a few pieces per digit; past MAX_PIECES the rest count as specks, which
    # keeps the pairwise merging below cheap even on a picture of noise
    solid = solid[np.argsort(-comps.area[solid], kind="stable")][:MAX_PIECES]
    solid = solid[np.argsort(comps.x0[solid], kind="stable")]
    groups = [[i] for i in solid.tolist()]
    boxes = list(zip(comps.y0[solid].tolist(), comps.y1[solid].tolist(),
                     comps.x0[solid].tolist(), comps.x1[solid].tolist()))
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
    is_speck = np.ones(len(comps.area), dtype=bool)
    is_speck[solid] = False
    specks = np.flatnonzero(is_speck)
    centres = (comps.x0[specks] + comps.x1[specks]) / 2
    return [np.concatenate([np.array(g, dtype=np.int64),
                            specks[(centres >= box[2]) & (centres < box[3])]])
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


def _whole(ink: _Ink, comps: _Components) -> np.ndarray:
    """All the picture's ink as one digit (specks left out of its box)."""
    solid = comps.area >= SPECK * comps.area.max()
    top, bottom, left, right = _window(comps, solid)
    return _normalise(ink.gray(top, bottom, left, right))


def _piece(ink: _Ink, comps: _Components, group: np.ndarray) -> np.ndarray:
    """One digit of a number: only its own components and their anti-aliased edge."""
    window = _window(comps, group)
    region = _max_filter(comps.paint(group, window), FRINGE)
    return _normalise(ink.gray(*window) * region)


def _window(comps: _Components, select: np.ndarray) -> tuple[int, int, int, int]:
    """The box of the chosen components widened by the anti-aliased fringe, in the picture:
    (top, bottom, left, right), bottom and right exclusive."""
    y0, y1, x0, x1 = comps.bbox(select)
    h, w = comps.shape
    return max(0, y0 - FRINGE), min(h, y1 + FRINGE), max(0, x0 - FRINGE), min(w, x1 + FRINGE)


def _normalise(crop: np.ndarray) -> np.ndarray:
    """A digit's window of gray (float32 in [0, 1]) into MNIST's 28x28."""
    crop = _tight(crop)  # the window tightened to the ink really there
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
    digit = crop * np.float32(255.0)  # float32, a new array
    if size != (crop.shape[1], crop.shape[0]):
        digit = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.LANCZOS),
                           dtype=np.float32)
    digit = np.clip(digit, 0.0, 255.0)
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
    m = np.pad(mask, 1)
    edges = np.count_nonzero(m[1:] != m[:-1]) + np.count_nonzero(m[:, 1:] != m[:, :-1])
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


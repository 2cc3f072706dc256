"""Images as people hand them to us, through the steps that make MNIST's input of them."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlab.data.registry import load_arrays
from mnistlab.inference.errors import (
    BadPixelsError,
    ImageFileError,
    ImageTooLargeError,
    UnreadableImageError,
    UnsupportedImageError,
)
from mnistlab.inference.preprocess import (
    MAX_IMAGE_BYTES,
    EmptyImageError,
    ImageError,
    decode_image,
    from_pixels,
    load_image,
    read_digits,
    split_digits,
    to_mnist,
)


def drawn_zero(size=200, ink=0, paper=255, width=None, mode="L"):
    """A hand-drawn-looking 0: an upright ellipse, like a marker on paper."""
    image = Image.new(mode, (size, size), paper)
    width = max(1, size // 14) if width is None else width
    ImageDraw.Draw(image).ellipse((size * 0.3, size * 0.15, size * 0.7, size * 0.85),
                                  outline=ink, width=width)
    return image


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def assert_mnist_like(out):
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() == 255
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert rows[-1] - rows[0] + 1 <= 20 and cols[-1] - cols[0] + 1 <= 20
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 19  # the longer side fills the box
    mass = out.astype(float)
    ys, xs = np.mgrid[:28, :28]
    assert abs((mass * ys).sum() / mass.sum() - 14) <= 0.75
    assert abs((mass * xs).sum() / mass.sum() - 14) <= 0.75
    # the background is exactly 0, as MNIST's own is
    assert (out == 0).mean() > 0.5 and out[[0, 0, -1, -1], [0, -1, 0, -1]].max() == 0


def similarity(a, b):
    """Correlation of two digits, allowing a shift of one pixel (centring rounds to pixels)."""
    a = a.astype(float)
    return max(float(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.astype(float).ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


# ---- to_mnist ------------------------------------------------------------------------------


def test_both_polarities_give_light_ink_on_black():
    dark_on_light = to_mnist(drawn_zero(ink=0, paper=255))
    light_on_dark = to_mnist(drawn_zero(ink=255, paper=0))
    assert_mnist_like(dark_on_light)
    assert_mnist_like(light_on_dark)
    assert similarity(dark_on_light, light_on_dark) > 0.99
    assert dark_on_light[14, 14] == 0  # the hole of the 0 stays background


def test_transparent_canvas_is_flattened_onto_white():
    canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))  # transparent black: a web canvas
    ImageDraw.Draw(canvas).line([(150, 40), (150, 260)], fill=(20, 20, 20, 255), width=24)
    image = decode_image(encode(canvas))
    assert image.mode == "L" and image.getpixel((0, 0)) == 255
    out = to_mnist(image)
    assert_mnist_like(out)
    cols = np.flatnonzero(out.any(0))
    assert cols[-1] - cols[0] < 8  # a 1 stays a narrow upright stroke


def drawn_one(mode, background, ink, size=64):
    """A "1": one upright stroke, drawn in `ink` on `background` (both with alpha)."""
    image = Image.new(mode, (size, size), background)
    ImageDraw.Draw(image).line([(size // 2, size * 10 // 64), (size // 2, size * 54 // 64)],
                               fill=ink, width=max(2, size * 6 // 64))
    return image


@pytest.mark.parametrize("mode, background, ink", [
    ("RGBA", (0, 0, 0, 0), (255, 255, 255, 255)),  # transparent black: a dark-mode canvas
    ("RGBA", (255, 255, 255, 0), (255, 255, 255, 255)),  # transparent white
    ("RGBA", (0, 0, 0, 0), (255, 230, 0, 255)),  # yellow: light ink, in colour
    ("LA", (0, 0), (255, 255)),
    ("LA", (255, 0), (255, 255)),
], ids=["rgba-on-black", "rgba-on-white", "rgba-yellow", "la-on-black", "la-on-white"])
def test_light_ink_on_a_transparent_canvas_is_found(mode, background, ink):
    image = decode_image(encode(drawn_one(mode, background, ink)))
    # the transparent background goes onto black, where the light ink shows
    assert image.mode == "L" and image.getpixel((0, 0)) == 0 and image.getpixel((32, 32)) > 200
    out = to_mnist(image)
    assert_mnist_like(out)
    cols = np.flatnonzero(out.any(0))
    assert cols[-1] - cols[0] < 8  # a 1 stays a narrow upright stroke


def test_ink_drawn_only_in_alpha_reads_as_the_digit_itself():
    """MNIST digits as white ink whose shape is all in the alpha channel: flattened onto black,
    each is its own grey levels again, so it makes exactly what the digit itself makes."""
    mnist = load_arrays("mnist")
    for x in mnist.test_images[:5]:
        white = np.full_like(x, 255)
        pictures = [Image.fromarray(np.dstack([white, white, white, x]), "RGBA"),
                    Image.fromarray(np.dstack([white, x]), "LA")]
        for picture in pictures:
            assert np.array_equal(to_mnist(picture), to_mnist(Image.fromarray(x)))


def test_a_light_page_with_transparent_margins_still_goes_onto_white():
    """A scan rotated into a larger transparent picture: the opaque page covers most of it and
    holds its own background, so the corners become paper, not black ink around the page."""
    page = Image.new("RGBA", (300, 400), (250, 250, 250, 255))
    ImageDraw.Draw(page).line([(150, 80), (150, 320)], fill=(20, 20, 20, 255), width=20)
    rotated = page.rotate(12, expand=True, resample=Image.Resampling.BICUBIC)
    image = decode_image(encode(rotated))
    assert image.getpixel((0, 0)) == 255
    out = to_mnist(image)
    assert_mnist_like(out)
    cols = np.flatnonzero(out.any(0))
    assert cols[-1] - cols[0] < 10  # the stroke, not the page


def test_exif_orientation_is_honoured():
    upright = Image.new("L", (120, 240), 255)
    ImageDraw.Draw(upright).line([(60, 20), (60, 220)], fill=0, width=16)  # tall stroke
    stored = upright.rotate(90, expand=True)  # as a sideways camera stores it: a wide stroke
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (120, 240)
    out = to_mnist(image)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert rows[-1] - rows[0] > 2 * (cols[-1] - cols[0])


def test_faint_strokes_are_stretched_to_full_ink():
    strong = to_mnist(drawn_zero(ink=0, paper=255))
    faint = to_mnist(drawn_zero(ink=200, paper=228))  # light pencil on grey paper
    assert_mnist_like(faint)
    assert similarity(strong, faint) > 0.98


def test_thin_strokes_on_a_large_canvas_survive():
    image = drawn_zero(size=1400, width=1)  # 1-pixel line: 1/70 of a pixel once scaled to 20
    started = time.perf_counter()
    out = to_mnist(image)
    assert time.perf_counter() - started < 2.0
    assert_mnist_like(out)
    assert (out > 128).sum() >= 40  # a solid ring, not grey dust
    # the ring is closed: every row it spans has ink on both sides of the centre
    rows = np.flatnonzero(out.any(1))
    for r in rows[3:-3]:
        line = out[r]
        assert line[:14].max() > 100 and line[14:].max() > 100


def test_noisy_photo_of_a_digit():
    rng = np.random.default_rng(0)
    paper = np.asarray(drawn_zero(size=240, ink=60, paper=200), dtype=float)
    photo = np.clip(paper + rng.normal(0, 6, paper.shape), 0, 255).astype(np.uint8)
    photo[5, 5] = photo[230, 17] = 0  # specks of dirt far from the digit
    out = to_mnist(decode_image(encode(Image.fromarray(photo), "JPEG", quality=80)))
    assert_mnist_like(out)
    assert similarity(out, to_mnist(drawn_zero(size=240))) > 0.9


def test_faint_digit_on_grainy_paper_is_read():
    # grey ink 55 levels from the paper, under noise of sd 11: plain to a person, and once
    # refused as empty (its strongest ink was under 9 standard deviations of the noise)
    rng = np.random.default_rng(0)
    paper = np.asarray(drawn_zero(size=120, ink=180, paper=235), dtype=float)
    photo = np.clip(paper + rng.normal(0, 11, paper.shape), 0, 255).astype(np.uint8)
    out = to_mnist(Image.fromarray(photo))
    assert_mnist_like(out)
    assert similarity(out, to_mnist(drawn_zero(size=120))) > 0.8


@pytest.mark.parametrize("size", [64, 512])
def test_grainy_paper_alone_is_empty(size):
    photo = np.random.default_rng(2).normal(200, 11, (size, size)).clip(0, 255).astype(np.uint8)
    with pytest.raises(EmptyImageError, match="empty"):
        to_mnist(Image.fromarray(photo))


def test_a_speck_of_dust_is_not_a_digit():
    paper = np.full((64, 64), 240, dtype=np.uint8)
    paper[30:32, 40] = 0  # two dark pixels
    with pytest.raises(EmptyImageError, match="empty"):
        to_mnist(Image.fromarray(paper))


def test_mnist_digits_come_back_as_they_were():
    images = load_arrays("mnist").test_images[:50]
    for x in images:
        out = to_mnist(Image.fromarray(255 - x))  # as a person would save it: dark on light
        assert np.abs(out.astype(int) - x).mean() < 1.0


@pytest.mark.parametrize("image", [
    Image.new("L", (64, 64), 255),
    Image.new("L", (64, 64), 0),
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
    Image.fromarray(np.random.default_rng(1).normal(128, 3, (64, 64)).clip(0, 255).astype(np.uint8)),
], ids=["white", "black", "transparent", "plain-noise"])
def test_no_ink_is_reported_empty(image):
    with pytest.raises(EmptyImageError, match="empty"):
        to_mnist(image)
    with pytest.raises(EmptyImageError):
        split_digits(image)


def test_a_picture_of_static_is_noise_not_an_empty_sheet():
    static = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8))
    for read in (to_mnist, split_digits):
        with pytest.raises(EmptyImageError, match=r"^no digit found \(the picture is noise: no "
                                                  r"stroke could stand out from it\)$"):
            read(static)


def test_not_an_image():
    with pytest.raises(UnsupportedImageError, match="Pillow image"):
        to_mnist(np.zeros((28, 28)))
    with pytest.raises(UnsupportedImageError, match="Pillow image"):
        read_digits("a picture")


# ---- split_digits --------------------------------------------------------------------------


def test_a_number_of_mnist_digits_left_to_right():
    mnist = load_arrays("mnist")
    picks = [0, 1, 2]  # 7, 2, 1
    number = np.concatenate([255 - mnist.test_images[i] for i in picks], axis=1)
    digits = split_digits(Image.fromarray(number))
    assert len(digits) == 3
    for digit, i in zip(digits, picks):
        assert_mnist_like(digit)
        assert np.abs(digit.astype(int) - mnist.test_images[i]).mean() < 1.0


def test_strokes_of_one_digit_stay_together_and_specks_are_ignored():
    image = Image.new("L", (420, 200), 255)
    draw = ImageDraw.Draw(image)
    # a 5 in two strokes that do not touch: its bar, then its body
    draw.line([(60, 30), (130, 30)], fill=0, width=12)
    draw.line([(60, 45), (58, 95)], fill=0, width=12)
    draw.arc((40, 70, 135, 170), start=-150, end=140, fill=0, width=12)
    # a 1, and dust
    draw.line([(250, 30), (250, 170)], fill=0, width=12)
    draw.point([(190, 100), (330, 20), (400, 180)], fill=0)
    digits = split_digits(image)
    assert len(digits) == 2
    for digit in digits:
        assert_mnist_like(digit)
    narrow = [np.ptp(np.flatnonzero(d.any(0))) for d in digits]
    assert narrow[0] > 10 and narrow[1] < 6  # the 5 first, then the 1


# ---- read_digits: one analysis for both ----------------------------------------------------


def same_arrays(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def pictures_of_one_and_several_digits():
    mnist = load_arrays("mnist")
    for i in range(0, 40, 3):
        digit = 255 - mnist.test_images[i]
        yield Image.fromarray(digit)  # 28x28, dark on light: what the load test sends
        yield Image.fromarray(digit).resize((280, 280), Image.Resampling.LANCZOS)
        yield Image.fromarray(255 - digit).resize((700, 600))  # over ANALYSIS_SIZE: pooled
        number = np.concatenate([255 - mnist.test_images[i + k] for k in range(3)], axis=1)
        yield Image.fromarray(np.pad(number, 6, constant_values=255)).resize((336, 80))
    pad = Image.new("L", (560, 280), 255)  # the drawing page's pad: one digit, then two
    ImageDraw.Draw(pad).line([(200, 40), (260, 40), (230, 240)], fill=17, width=22)
    yield pad.copy()
    ImageDraw.Draw(pad).line([(360, 40), (360, 240)], fill=17, width=22)
    yield pad


def test_read_digits_is_to_mnist_for_one_digit_and_split_digits_for_several():
    counts = set()
    for image in pictures_of_one_and_several_digits():
        pieces = split_digits(image)
        read = read_digits(image)
        counts.add(len(read))
        if len(pieces) == 1:
            assert same_arrays(read, [to_mnist(image)])
        else:
            assert same_arrays(read, pieces)
        assert same_arrays(read_digits(image, number=True), pieces)
    assert counts == {1, 2, 3}


def test_read_digits_of_nothing_is_empty():
    with pytest.raises(EmptyImageError):
        read_digits(Image.new("L", (60, 40), 200))


# ---- from_pixels ---------------------------------------------------------------------------


def test_from_pixels_takes_0_255_or_0_1():
    x = load_arrays("mnist").test_images[0]
    assert np.array_equal(from_pixels(x.tolist()), x)
    assert np.array_equal(from_pixels((x / 255.0).tolist()), x)
    assert from_pixels(np.eye(28)).max() == 255  # 0-1 values are scaled


@pytest.mark.parametrize("pixels, message", [
    ([[0] * 28] * 27, "shape"),
    ([[0] * 27] * 28, "shape"),
    ([[0] * 28] * 27 + [[0] * 27], "28 rows of 28 numbers, got rows of 27 to 28"),  # ragged
    ([[1, 2], [3]], "got rows of 1 to 2 numbers"),
    ([["a"] * 28] * 28, "28x28"),
    ([[float("nan")] * 28] * 28, "NaN"),
    ([[float("inf")] + [0] * 27] * 28, "infinite"),
    ([[300] + [0] * 27] * 28, "0-255"),
    ([[-1] + [0] * 27] * 28, "0-255"),
    (None, "shape"),
])
def test_from_pixels_refuses_bad_arrays(pixels, message):
    with pytest.raises(BadPixelsError, match=message):
        from_pixels(pixels)


def test_from_pixels_all_zero_is_empty():
    with pytest.raises(EmptyImageError, match=r"^no digit found \(empty image\)"):
        from_pixels(np.zeros((28, 28)))


# ---- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, mode", [
    ("PNG", "L"), ("PNG", "RGB"), ("PNG", "LA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "L"),
    ("BMP", "RGB"), ("BMP", "1"), ("GIF", "P"), ("WEBP", "RGB"), ("WEBP", "RGBA"),
])
def test_every_format_decodes(fmt, mode):
    base = drawn_zero(size=120)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)
    else:
        image = base.convert(mode)
    decoded = decode_image(encode(image, fmt))
    assert decoded.mode == "L" and decoded.size == (120, 120)
    assert decoded.getpixel((0, 0)) > 200  # white paper stays white (16-bit scaled, not clipped)
    # lossy codecs ring around strokes; the ringing widens the crop by a pixel or so
    assert similarity(to_mnist(decoded), to_mnist(base)) > (0.9 if fmt in ("JPEG", "WEBP") else 0.98)


def test_animated_gif_first_frame():
    frames = [drawn_zero(size=100), Image.new("L", (100, 100), 255)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert_mnist_like(to_mnist(decode_image(data)))


def test_palette_transparency_flattens_onto_white():
    image = drawn_zero(size=100).convert("P")
    data = encode(image, "PNG", transparency=255)  # the paper is the transparent colour
    assert decode_image(data).getpixel((0, 0)) == 255


def png_header_claiming(width, height):
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def png_with_text(chunks=1, size=None):
    """A PNG of a drawn 0 carrying compressed text chunks of `size` characters each: a small
    file whose text decompresses past Pillow's limits (one chunk, or all of them together)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for i in range(chunks):
        info.add_text(f"note{i}", "x" * (size or PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    return encode(drawn_zero(), "PNG", pnginfo=info)


HOSTILE_FILES = [
    # (data, the error's type, words of its message)
    (b"", UnreadableImageError, "empty"),
    (np.random.default_rng(2).bytes(5000), UnsupportedImageError, "not a PNG, JPEG, BMP, GIF or WebP image"),
    (b"\x89PNG\r\n\x1a\n not really", UnreadableImageError, "the PNG image is damaged"),  # a signature, no header
    (b"GIF89a" + bytes(40), UnreadableImageError, "the GIF image is damaged"),
    (encode(drawn_zero(), "PNG")[:600], UnreadableImageError, "truncated"),
    (png_header_claiming(100_000, 100_000), ImageTooLargeError, "too large"),  # Pillow's own bomb check
    (png_header_claiming(5_000, 5_000), ImageTooLargeError, "5000x5000"),  # ours, below Pillow's
    (encode(drawn_zero(), "TIFF"), UnsupportedImageError, "not a PNG"),  # a format we do not open
    (b"\0" * (MAX_IMAGE_BYTES + 1), ImageTooLargeError, "too large"),
    (png_with_text(), ImageTooLargeError, "MAX_TEXT_CHUNK"),  # a text chunk's own bomb
    (png_with_text(70, 1 << 20), ImageTooLargeError, "MAX_TEXT_MEMORY"),  # 70 MB of text in 70 kB
]


@pytest.mark.parametrize("data, kind, message", HOSTILE_FILES,
                         ids=[f"{i}-{h[1].__name__}" for i, h in enumerate(HOSTILE_FILES)])
def test_hostile_files_are_image_errors_of_their_kind(data, kind, message):
    with pytest.raises(ImageError, match=message) as caught:
        decode_image(data)
    assert type(caught.value) is kind


def test_decode_refuses_non_bytes():
    with pytest.raises(UnsupportedImageError, match="bytes"):
        decode_image("picture.png")


def test_load_image_names_the_file(tmp_path):
    good = tmp_path / "digit.png"
    good.write_bytes(encode(drawn_zero()))
    assert load_image(good).mode == "L"
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not really a picture")
    with pytest.raises(UnsupportedImageError, match=r"notes\.png: not a PNG"):
        load_image(bad)  # the type of decode_image's error, with the file's name
    with pytest.raises(ImageFileError, match=r"missing\.png: no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageFileError, match=r"not a regular file \(a folder\)"):
        load_image(tmp_path)
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no 10 MB written
    with pytest.raises(ImageTooLargeError, match=r"huge\.png: the file is too large"):
        load_image(huge)


def test_a_picture_of_noise_is_handled_quickly():
    rng = np.random.default_rng(3)
    noise = Image.fromarray(np.where(rng.random((512, 512)) > 0.2, 255, 0).astype(np.uint8))
    started = time.perf_counter()
    for digit in split_digits(noise):  # garbage in, but bounded work and well-formed out
        assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("mode", ["LAB", "La", "HSV", "CMYK"])
def test_pictures_in_any_pillow_mode_become_their_grey_levels(mode):
    from mnistlab.inference.images import to_grayscale

    picture = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(picture).line([(20, 6), (20, 34)], fill=0, width=5)
    converted = picture.convert("LA").convert("La") if mode == "La" else \
        picture.convert("RGB").convert(mode)
    grey = np.asarray(to_grayscale(converted), dtype=np.int16)
    # the same stroke, to within the rounding of the colour conversions
    assert np.abs(grey - np.asarray(picture, dtype=np.int16)).max() <= 3

"""Digits (or letters) rendered from the system's fonts, with distortions, as an image folder.

    python3 docs/experiments/font_digits.py --out /tmp/font-digits
    python3 docs/experiments/font_digits.py --out /tmp/font-letters --letters ABCDE

writes the layout `mnistlab train --data-dir` reads:

    OUT/train/<class>/NNNN.png    --per-class-train images a class (default 35)
    OUT/test/<class>/NNNN.png     --per-class-test images a class (default 100)

The faces are the TrueType files in /usr/share/fonts/truetype/dejavu and .../liberation (DejaVu
Sans, Serif, Mono and their condensed, bold, oblique and italic faces; Liberation Sans, Serif,
Mono, Sans Narrow and theirs; not DejaVu's maths font). Sorted by file name, they alternate
between the two splits, so each family and each style is on both sides but no face is: the
test set is drawn in faces the training set never shows (it measures fonts not yet seen, not
only new draws of seen ones). Each image's random draws come from its own generator, seeded by
(--seed, split, class, index): the splits' draws are disjoint, and the same arguments make the
same pixels on any machine with the same fonts and Pillow.

Each image: one face; the glyph drawn large, its strokes thickened by 0 to 6% of its size
(Pillow's stroke), stretched (x 0.8-1.2), sheared (up to 0.25) and rotated (up to 15 degrees);
scaled to 35-85% of a canvas of 28 to 160 pixels a side (not square), placed anywhere on it;
ink of grey 0-110 on paper of grey 150-255; a Gaussian blur (radius 0-1.5) and Gaussian noise
(sd 0-12). Pillow and numpy only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
LEFT_OUT = ("DejaVuMathTeXGyre",)  # a maths font, not a text face
SPLITS = {"train": 0, "test": 1}  # also the split's index in each image's seed
GLYPH_SIZE = 96  # points the glyph is drawn at before it is distorted and scaled


def faces() -> dict[str, list[Path]]:
    """The font files of each split: sorted by name, alternately train and test."""
    found = sorted((p for d in FONT_DIRS for p in d.glob("*.ttf")
                    if not p.stem.startswith(LEFT_OUT)), key=lambda p: p.name)
    if len(found) < 2:
        sys.exit(f"font_digits: fewer than 2 fonts in {', '.join(map(str, FONT_DIRS))}")
    return {"train": found[0::2], "test": found[1::2]}


def glyph(char: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> Image.Image:
    """The character's ink (L, 255 = ink), thickened, stretched, sheared and rotated, cropped."""
    stroke = int(round(rng.uniform(0, 0.06) * GLYPH_SIZE))
    pad = GLYPH_SIZE
    layer = Image.new("L", (3 * GLYPH_SIZE, 3 * GLYPH_SIZE), 0)
    ImageDraw.Draw(layer).text((pad, pad // 2), char, font=font, fill=255,
                               stroke_width=stroke, stroke_fill=255)
    stretch = rng.uniform(0.8, 1.2)
    shear = rng.uniform(-0.25, 0.25)
    cx, cy = layer.width / 2, layer.height / 2
    # output (x, y) samples input (a x + b y + c, d x + e y + f): stretch and shear about the
    # centre
    a, b = 1 / stretch, shear
    layer = layer.transform(layer.size, Image.Transform.AFFINE,
                            (a, b, cx - a * cx - b * cy, 0, 1, 0), Image.Resampling.BICUBIC)
    layer = layer.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, expand=True)
    return layer.crop(layer.getbbox())


def render(char: str, font_path: Path, rng: np.random.Generator) -> Image.Image:
    font = ImageFont.truetype(str(font_path), GLYPH_SIZE)
    ink = glyph(char, font, rng)
    width, height = (int(v) for v in rng.integers(28, 161, size=2))
    # the glyph's height a fraction of the canvas', its width within the canvas
    scale = min(rng.uniform(0.35, 0.85) * height / ink.height, 0.9 * width / ink.width)
    size = (max(1, round(ink.width * scale)), max(1, round(ink.height * scale)))
    ink = ink.resize(size, Image.Resampling.LANCZOS)
    alpha = Image.new("L", (width, height), 0)
    alpha.paste(ink, (int(rng.integers(0, width - size[0] + 1)),
                      int(rng.integers(0, height - size[1] + 1))))
    paper, dark = rng.uniform(150, 255), rng.uniform(0, 110)
    a = np.asarray(alpha, dtype=np.float64) / 255.0
    page = Image.fromarray(np.clip(paper - (paper - dark) * a, 0, 255).astype(np.uint8))
    page = page.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    noisy = np.asarray(page, dtype=np.float64) + rng.normal(0, rng.uniform(0, 12), page.size[::-1])
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path,
                   help="the image folder to write (new or empty)")
    p.add_argument("--per-class-train", type=int, default=35, metavar="N")
    p.add_argument("--per-class-test", type=int, default=100, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--letters", nargs="?", const="ABCDE", metavar="CHARS",
                   help="render these letters (default ABCDE) instead of the digits 0-9; "
                        "each is a class named by itself")
    args = p.parse_args(argv)
    chars = args.letters if args.letters is not None else "0123456789"
    if len(set(chars)) < 2 or not all(c.isalnum() for c in chars):
        p.error(f"--letters: give two different letters or more, got {chars!r}")
    if len({c.lower() for c in chars}) < len(set(chars)):
        p.error("--letters: upper and lower case of one letter would be one folder on a "
                "case-insensitive file system")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} exists and is not empty")
    counts = {"train": args.per_class_train, "test": args.per_class_test}
    split_faces = faces()
    for split, count in counts.items():
        for label, char in enumerate(chars):
            folder = args.out / split / char
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([args.seed, SPLITS[split], label, i])
                font = split_faces[split][int(rng.integers(len(split_faces[split])))]
                render(char, font, rng).save(folder / f"{i:04d}.png", optimize=False)
    for split, count in counts.items():
        names = ", ".join(f.stem for f in split_faces[split])
        print(f"{split}: {count * len(chars):,} images ({count} of each of {len(chars)} classes) "
              f"in {len(split_faces[split])} faces: {names}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long an image folder takes to be made ready for training: 10,000 images, cold (every
image decoded and put in MNIST's form) and warm (read back from the cache).

    python docs/experiments/imagefolder_bench.py [--images 10000] [--side 112] [--repeats 3]

The images are MNIST's test digits drawn dark on white at SIDE x SIDE pixels, as PNG files in
the ImageFolder layout (one folder per digit), in a temporary folder. Prints the median of the
repeats for each; the cache is emptied before each cold run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

import mnistlab
from mnistlab.data import imagefolder


def write_images(root: Path, count: int, side: int) -> None:
    images, labels = mnistlab.datasets.load("mnist", split="test")
    for i in range(count):
        folder = root / "train" / str(labels[i % len(labels)])
        folder.mkdir(parents=True, exist_ok=True)
        page = Image.fromarray(255 - images[i % len(images)]).resize((side, side), Image.BILINEAR)
        page.save(folder / f"{i:05d}.png")


def timed(root: Path, cold: bool) -> float:
    imagefolder._LOADED.clear()
    if cold:
        imagefolder.cache_file(root).unlink(missing_ok=True)
    started = time.perf_counter()
    imagefolder.load_image_folder(root)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        os.environ["MNISTLAB_CACHE"] = str(Path(work) / "cache")
        root = Path(work) / "digits"
        write_images(root, args.images, args.side)
        cold = [timed(root, cold=True) for _ in range(args.repeats)]
        warm = [timed(root, cold=False) for _ in range(args.repeats)]
    print(f"{args.images:,} PNG images of {args.side}x{args.side}, {os.cpu_count()} cores: "
          f"made ready in {statistics.median(cold):.1f} s (median of {args.repeats}; "
          f"{args.images / statistics.median(cold):,.0f} images/s), read back from the cache in "
          f"{statistics.median(warm):.2f} s")


if __name__ == "__main__":
    main()

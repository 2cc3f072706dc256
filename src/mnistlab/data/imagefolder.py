"""A folder of one's own images as a dataset: the layout torchvision's ImageFolder and Keras'
image_dataset_from_directory read.

    DIR/train/<class>/*.png|jpg|jpeg|bmp|gif|webp
    DIR/test/<class>/...            optional; without it, a seventh of each class is held out

Each class is a folder, named as the class is to be called (digits, letters, words); there are
two classes or more. Every image is made into MNIST's form by `to_mnist`, the same steps
`mnistlab predict` takes, so that training and prediction see the same thing. An image that
cannot be read or holds no ink is left out and named in one warning line; a class left with no
image is an error. The arrays are cached (`cache_dir()/image-folders`), keyed by every file's
name, size and modification time, so a second run reads them back in a moment and an edited,
added or removed file is seen.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_writer
from mnistlab.inference.errors import ImageError
from mnistlab.inference.images import load_image
from mnistlab.inference.preprocess import to_mnist

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_CLASSES = 1000  # as many as a model may have (models/zoo.py)
MAX_NAME = 100  # characters of a class name, as a checkpoint's metadata holds them
MAX_IMAGES = 500_000  # 28x28 each: 392 MB of arrays; MNIST has 70,000
HELD_OUT = 7  # without test/, one image in seven of each class is the test split, as MNIST's
# 10,000 of 70,000
SHUFFLE_SEED = 0  # the order of the training images (the validation split is their tail)
PARALLEL_FROM = 1000  # images; fewer are made ready faster than processes start
CACHE_VERSION = 3  # raise when what `to_mnist` makes changes: cached arrays are then remade
WARNED_PATHS = 3  # bad images named in the warning; the rest are counted


@dataclass(frozen=True)
class ImageFolder:
    """What a folder holds: its classes and, per split, each image file and its class."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]  # "train" and, where the folder has it, "test"


def is_image_folder(folder: Path) -> bool:
    return (folder / "train").is_dir()


def scan(root: Path) -> ImageFolder:
    """The classes and image files of an image folder, or one MnistlabError saying what is
    wrong with its layout."""
    train = root / "train"
    classes = _class_names(train)
    files = {"train": _files(train, classes)}
    if (root / "test").is_dir():
        extra = set(_class_names(root / "test", fewest=1)) - set(classes)
        if extra:
            raise MnistlabError(f"{root / 'test'}: classes with no folder in {train}: "
                                f"{', '.join(sorted(extra))}")
        files["test"] = _files(root / "test", classes, every_class=False)
    total = sum(len(f) for f in files.values())
    if total > MAX_IMAGES:
        raise MnistlabError(f"{root}: {total:,} images, more than the {MAX_IMAGES:,} mnistlab "
                            "reads from a folder")
    return ImageFolder(root, classes, files)


def _class_names(folder: Path, fewest: int = 2) -> tuple[str, ...]:
    try:
        names = [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise MnistlabError(f"{folder}: cannot list: {e.strerror}") from None
    if len(names) < fewest:
        raise MnistlabError(f"{folder}: {len(names)} class folder{'s' * (len(names) != 1)}; "
                            f"a dataset needs at least {fewest}, one per class "
                            f"({folder}/<class>/*.png)")
    if len(names) > MAX_CLASSES:
        raise MnistlabError(f"{folder}: {len(names):,} class folders, more than the "
                            f"{MAX_CLASSES:,} a model may tell apart")
    undecodable = [n for n in names if not _is_text(n)]
    if undecodable:  # its bytes came back as surrogates: no text can show it (figures, JSON)
        raise MnistlabError(f"{os.fsencode(folder / undecodable[0])!r}: a class folder's name "
                            "must be UTF-8 text; rename it")
    long = [n for n in names if len(n) > MAX_NAME]
    if long:
        raise MnistlabError(f"{folder / long[0]}: a class name of {len(long[0])} characters; "
                            f"at most {MAX_NAME} are kept with a model")
    # digits in numeric order (2 before 10); any other names alphabetically
    numeric = all(n.isdecimal() for n in names)
    return tuple(sorted(names, key=(lambda n: (int(n), n)) if numeric else None))


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _files(split: Path, classes: tuple[str, ...], every_class: bool = True) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        folder = split / name
        if not folder.is_dir():
            continue  # a test split may lack a class
        found = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
        if not found and every_class:
            raise MnistlabError(f"{folder}: class {name!r} has no images "
                                f"({', '.join(SUFFIXES)})")
        files += [(p, label) for p in found]
    return files


@dataclass(frozen=True)
class FolderArrays:
    """An image folder made ready: MNIST-form images and labels per split, the class names,
    and the files left out with the reason why."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]]  # (path, reason)


def load_image_folder(root: Path) -> FolderArrays:
    """The folder's images in MNIST's form, from the cache where no file changed; read once
    per process while the folder stays as it is (a run asks for each split)."""
    folder = scan(root)
    key = _key(folder)
    if key not in _LOADED:
        arrays = _read_cache(root, key)
        if arrays is None:
            arrays = _prepare(folder)
            _write_cache(root, key, arrays)
        if arrays.skipped:
            _warn(root, arrays.skipped, sum(len(f) for f in folder.files.values()))
        if len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = arrays
    return _LOADED[key]


_LOADED: dict[str, FolderArrays] = {}  # by `_key`


def _prepare(folder: ImageFolder) -> FolderArrays:
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped: list[tuple[str, str]] = []
    for split, files in folder.files.items():
        images, bad = make_ready([p for p, _ in files])
        skipped += bad
        left_out = {path for path, _ in bad}
        kept = [label for (path, label) in files if str(path) not in left_out]
        arrays[split] = (images, np.array(kept, dtype=np.int64))
    train_images, train_labels = arrays["train"]
    for label, name in enumerate(folder.classes):
        if not (train_labels == label).any():
            raise MnistlabError(f"{folder.root / 'train' / name}: class {name!r} has no image "
                                "that could be read (see the warning above)")
    if "test" in arrays:
        test_images, test_labels = arrays["test"]
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(train_labels))
        train_images, train_labels = train_images[order], train_labels[order]
    else:
        train_images, train_labels, test_images, test_labels = _hold_out(train_images, train_labels)
    if len(test_labels) == 0:
        raise MnistlabError(f"{folder.root}: no test images: add {folder.root / 'test'}/<class>/ "
                            f"or at least {HELD_OUT} images of a class, one in {HELD_OUT} of "
                            "which is held out")
    return FolderArrays(train_images, train_labels, test_images, test_labels, folder.classes,
                        skipped)


def _hold_out(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """One image in HELD_OUT of each class (rounded down) as the test split, chosen by a fixed
    seed; the rest, shuffled by it, for training."""
    rng = np.random.default_rng(SHUFFLE_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test[members[: len(members) // HELD_OUT]] = True
    train = rng.permutation(np.flatnonzero(~test))
    return images[train], labels[train], images[test], labels[test]


def make_ready(paths: list[Path]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each image in MNIST's form, (N, 28, 28) uint8, in order, and the ones that could not be
    (path, reason). Large folders are made ready by a process per core."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PARALLEL_FROM or workers < 2:
        results = [_ready(p) for p in paths]
    else:
        method = "fork" if sys.platform == "linux" else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            results = list(pool.map(_ready, paths, chunksize=256))
    images = [r for r in results if isinstance(r, np.ndarray)]
    bad = [(str(p), r) for p, r in zip(paths, results) if isinstance(r, str)]
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), dtype=np.uint8)
    return stacked, bad


def _ready(path: Path) -> np.ndarray | str:
    """One image in MNIST's form, or why it cannot be."""
    try:
        return to_mnist(load_image(path))
    except ImageError as e:
        message = str(e)
        return message.removeprefix(f"{path}: ")


def _warn(root: Path, skipped: list[tuple[str, str]], total: int) -> None:
    named = "; ".join(f"{path} ({reason})" for path, reason in skipped[:WARNED_PATHS])
    more = f"; and {len(skipped) - WARNED_PATHS:,} more" if len(skipped) > WARNED_PATHS else ""
    print(f"mnistlab: warning: {root}: left out {len(skipped):,} of {total:,} images that "
          f"cannot be read or hold no ink: {named}{more}", file=sys.stderr)


@dataclass(frozen=True)
class ClassCheck:
    ok: bool
    what: str  # "train/7", or a file's path
    message: str


def verify_image_folder(root: Path) -> list[ClassCheck]:
    """Every image of the folder read and made ready, without the cache: a line per split and
    class with how many are ready, and one per image left out (`mnistlab datasets verify
    DIR`). A class of the training split with no image ready fails."""
    folder = scan(root)  # a wrong layout is one MnistlabError
    checks = []
    for split, files in folder.files.items():
        _, bad = make_ready([path for path, _ in files])
        left_out = {path for path, _ in bad}
        for label, name in enumerate(folder.classes):
            paths = [str(path) for path, of in files if of == label]
            ready = sum(path not in left_out for path in paths)
            note = f", {len(paths) - ready:,} left out" if ready < len(paths) else ""
            checks.append(ClassCheck(ready > 0 or split == "test", f"{split}/{name}",
                                     f"{ready:,} images ready{note}"))
        checks += [ClassCheck(False, path, reason) for path, reason in bad]
    return checks


# ---- the cache -------------------------------------------------------------------------


def _key(folder: ImageFolder) -> str:
    """A digest of every file's split, class, name, size and modification time."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{folder.root.resolve()}\n{folder.classes!r}\n".encode())
    for split, files in sorted(folder.files.items()):
        for path, label in files:
            try:
                stat = path.stat()
                stamp = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                stamp = (-1, -1)  # made ready below, where it is reported
            digest.update(f"{split}\t{label}\t{path.name}\t{stamp}\n".encode())
    return digest.hexdigest()


def cache_file(root: Path) -> Path:
    from mnistlab.data.registry import cache_dir

    name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "image-folders" / f"{name}.npz"


ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _read_cache(root: Path, key: str) -> FolderArrays | None:
    """The cached arrays if they are this folder's as it is now, else None (remade)."""
    try:
        with np.load(cache_file(root), allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("key") != key:
                return None
            arrays = {name: saved[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or damaged: made again
    if any(arrays[n].shape[1:] != (28, 28) or arrays[n].dtype != np.uint8
           for n in ("train_images", "test_images")):
        return None
    return FolderArrays(**arrays, classes=tuple(meta["classes"]),
                        skipped=[tuple(s) for s in meta["skipped"]])


def _write_cache(root: Path, key: str, arrays: FolderArrays) -> None:
    """Keep the arrays for the next run; a cache that cannot be written only costs time."""
    meta = {"key": key, "classes": list(arrays.classes), "skipped": arrays.skipped}
    path = cache_file(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as f:
            np.savez(f, meta=np.array(json.dumps(meta)),
                     **{name: getattr(arrays, name) for name in ARRAYS})
    except (OSError, MnistlabError):
        pass

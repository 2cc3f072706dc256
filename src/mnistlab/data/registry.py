"""The registry of MNIST-format datasets: where their files live, their checksums, loading.

MNIST itself ships inside the package and never needs the network. Other registered sets are
downloaded on demand into `cache_dir()/NAME/` from their official mirrors. Any folder holding
the four IDX files can be loaded too (`data_dir`), checked structurally.

Checksums: MNIST's are of the decompressed files (our .gz bytes differ from the mirrors'); the
others' are of the .gz files as their authors publish them. A file is checked against the
decompressed md5 when one is known, else against the published .gz md5 when it is compressed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlab.data.download import DownloadError, download_file
from mnistlab.data.idx import (
    GZIP_MAGIC,
    MAX_COMPRESSED_BYTES,
    MAX_DATA_BYTES,
    MAX_IMAGES,
    IdxError,
    read_idx_and_md5,
)
from mnistlab.data.imagefolder import is_image_folder, load_image_folder
from mnistlab.errors import MnistlabError
from mnistlab.fileio import open_regular

ROLES = ("train-images", "train-labels", "test-images", "test-labels")
SHIPPED_ROOT = Path(__file__).parent  # a shipped dataset's files are in SHIPPED_ROOT/NAME/
IMAGE_SIZE = (28, 28)  # every model here takes MNIST's 28x28 images
# The most bytes of data read from each kind of file: images at idx's cap (700,000 of 28x28), and
# labels of as many images in int32, the widest integer type IDX has. Four files at these caps
# hold at most 1.1 GB, before the labels and images are checked against each other.
LIMITS = {"images": MAX_DATA_BYTES, "labels": MAX_IMAGES * 4}


@dataclass(frozen=True)
class DatasetFile:
    role: str
    filename: str  # as published, e.g. "train-images-idx3-ubyte.gz"
    md5: str | None  # of the decompressed bytes
    gz_md5: str | None  # of the .gz file as published on the mirrors


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    files: tuple[DatasetFile, ...]
    mirrors: tuple[str, ...]  # base URLs; a file's address is mirror + filename
    shipped: bool
    homepage: str
    license: str
    num_classes: int = 10
    class_names: tuple[str, ...] = tuple(str(d) for d in range(10))

    def file(self, role: str) -> DatasetFile:
        return next(f for f in self.files if f.role == role)


def _files(md5: dict[str, str | None], gz_md5: dict[str, str | None]) -> tuple[DatasetFile, ...]:
    names = {
        "train-images": "train-images-idx3-ubyte.gz",
        "train-labels": "train-labels-idx1-ubyte.gz",
        "test-images": "t10k-images-idx3-ubyte.gz",
        "test-labels": "t10k-labels-idx1-ubyte.gz",
    }
    return tuple(DatasetFile(r, names[r], md5.get(r), gz_md5.get(r)) for r in ROLES)


# Checksums: MNIST's decompressed md5s are in data/mnist/README.md; every .gz md5 is the one
# torchvision's datasets/mnist.py pins (and the Fashion-MNIST / KMNIST READMEs publish).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits (LeCun, Cortes, Burges), 28x28 grayscale",
        files=_files(
            {
                "train-images": "6bbc9ace898e44ae57da46a324031adb",
                "train-labels": "a25bea736e30d166cdddb491f175f624",
                "test-images": "2646ac647ad5339dbf082846283269ea",
                "test-labels": "27ae3e4e09519cfbb04c329615203637",
            },
            {
                "train-images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels": "d53e105ee54ea40749a09fcbcd1e9432",
                "test-images": "9fb629c4189551a2d022fa330f9573f3",
                "test-labels": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
        mirrors=(
            "http://yann.lecun.com/exdb/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        shipped=True,
        homepage="http://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        description="Fashion-MNIST (Zalando Research): clothing images in MNIST's format",
        files=_files(
            {},
            {
                "train-images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels": "25c81989df183df01b3e8a0aad5dffbe",
                "test-images": "bef4ecab320f06d8554ea6380940ec79",
                "test-labels": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        shipped=False,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        license="MIT",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        description="Kuzushiji-MNIST (ROIS-CODH): cursive Japanese hiragana in MNIST's format",
        files=_files(
            {},
            {
                "train-images": "bdb82020997e1d708af4cf47b453dcf7",
                "train-labels": "e144d726b3acfaa3e44228e80efcd344",
                "test-images": "5c965bf0a639b31b8f53240b1b52f4d7",
                "test-labels": "7320c461ea6c1c855c0b718fb2a4b134",
            },
        ),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        shipped=False,
        homepage="https://github.com/rois-codh/kmnist",
        license="CC BY-SA 4.0",
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise MnistlabError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
            "(or use --data-dir with a folder of IDX files)"
        ) from None


def cache_dir() -> Path:
    """$MNISTLAB_CACHE, else $XDG_CACHE_HOME/mnistlab, else ~/.cache/mnistlab."""
    if os.environ.get("MNISTLAB_CACHE"):
        return Path(os.environ["MNISTLAB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mnistlab"
    return Path.home() / ".cache" / "mnistlab"


def _candidates(role: str, published: str | None = None) -> list[str]:
    """File names a folder may use for `role`: published name first, then the usual variants."""
    kind, what = role.split("-")
    prefixes = ("train",) if kind == "train" else ("t10k", "test")
    ndim = 3 if what == "images" else 1
    names = [published] if published else []
    for p in prefixes:
        for stem in (f"{p}-{what}-idx{ndim}-ubyte", f"{p}-{what}.idx{ndim}-ubyte"):
            names += [stem, stem + ".gz"]
    return list(dict.fromkeys(names))


def _find(folder: Path, role: str, published: str | None = None) -> Path | None:
    """The first of the names a file for `role` may have that is a regular file; else the first
    that is something else (a folder, a FIFO), which reading then refuses saying what it is."""
    present = [folder / name for name in _candidates(role, published) if (folder / name).exists()]
    return next((p for p in present if p.is_file()), present[0] if present else None)


def _locations(spec: DatasetSpec) -> list[tuple[str, Path]]:
    places = [("shipped", SHIPPED_ROOT / spec.name)] if spec.shipped else []
    return places + [("cached", cache_dir() / spec.name)]


@dataclass(frozen=True)
class FileStatus:
    file: DatasetFile
    state: str  # "shipped" | "cached" | "missing"
    path: Path  # where it is, or where a download would put it


def dataset_status(name: str) -> list[FileStatus]:
    """Where each of a registered dataset's files is, without reading them."""
    spec = get_spec(name)
    out = []
    for file in spec.files:
        for state, folder in _locations(spec):
            path = _find(folder, file.role, file.filename)
            if path is not None:
                out.append(FileStatus(file, state, path))
                break
        else:
            out.append(FileStatus(file, "missing", cache_dir() / spec.name / file.filename))
    return out


def _file_md5(path: Path) -> str:
    """The md5 of a file read whole before (so no longer than MAX_COMPRESSED_BYTES then)."""
    h = hashlib.md5(usedforsecurity=False)
    read = 0
    with open_regular(path, "IDX data") as f:
        while read <= MAX_COMPRESSED_BYTES and (chunk := f.read(1 << 22)):
            h.update(chunk)
            read += len(chunk)
    return h.hexdigest()


def _is_gzip(path: Path) -> bool:
    with open_regular(path, "IDX data") as f:
        return f.read(2) == GZIP_MAGIC


def _what_to_do(state: str) -> str:
    """What to do about a damaged file, by where it is."""
    return {
        "shipped": "the installed package is damaged: reinstall mnistlab",
        "cached": "delete it and run again to download a fresh copy",
    }.get(state, "replace it with a good copy")


def _read(path: Path, state: str, role: str) -> tuple[np.ndarray, str]:
    """read_idx_and_md5 within the limit of the file's kind, its error saying what to do."""
    try:
        return read_idx_and_md5(path, LIMITS[role.split("-")[1]])
    except IdxError as e:
        raise IdxError(f"{e}; {_what_to_do(state)}") from e


def _read_checked(path: Path, file: DatasetFile, state: str) -> tuple[np.ndarray, str]:
    """Read `path` and check it against `file`'s checksum; return the array and what was checked."""
    array, md5 = _read(path, state, file.role)
    if file.md5:
        actual, expected, what = md5, file.md5, "md5 of the decompressed content"
    elif file.gz_md5 and _is_gzip(path):
        actual, expected, what = _file_md5(path), file.gz_md5, "md5 of the .gz file"
    else:
        return array, "not checksummed (no published checksum for this form of the file)"
    if actual != expected:
        raise MnistlabError(
            f"{path}: checksum mismatch: {what} is {actual}, expected {expected}; "
            + _what_to_do(state)
        )
    return array, "checksum ok"


@dataclass(frozen=True)
class FileCheck:
    file: DatasetFile
    path: Path
    ok: bool
    message: str


def verify_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[FileCheck]:
    """Read, validate and checksum every available file of a dataset (missing ones fail)."""
    spec = get_spec(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        why = "is not a folder" if os.path.lexists(data_dir) else "does not exist"
        raise MnistlabError(f"--data-dir {data_dir} {why}: give the folder that holds "
                            f"{name}'s IDX files")
    checks = []
    for file in spec.files:
        if data_dir is not None:
            state, path = "given", _find(Path(data_dir), file.role, file.filename)
        else:
            status = next(s for s in dataset_status(name) if s.file == file)
            state, path = status.state, status.path
        if path is None or state == "missing":
            where = path or Path(data_dir or ".") / file.filename
            checks.append(FileCheck(file, where, False, "missing"))
            continue
        try:
            array, checked = _read_checked(path, file, state)
        except MnistlabError as e:
            checks.append(FileCheck(file, path, False, str(e)))
            continue
        shape = "x".join(map(str, array.shape))
        checks.append(FileCheck(file, path, True, f"{shape} {array.dtype}, {checked}"))
    return checks


@dataclass(frozen=True)
class DatasetArrays:
    name: str
    train_images: np.ndarray  # uint8 (N, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str  # where the files came from, for logs and reports


def _put_files_message(spec: DatasetSpec, folder: Path, missing: list[str]) -> str:
    where = f" (from {spec.mirrors[0]})" if spec.mirrors else ""
    return (
        f"put these files in {folder}: {', '.join(missing)}{where}, "
        "or pass --data-dir with a folder that holds them"
    )


def _ensure_files(spec: DatasetSpec, download: bool) -> dict[str, tuple[str, Path]]:
    """Locate each file of `spec`, downloading missing ones into the cache when allowed."""
    found: dict[str, tuple[str, Path]] = {}
    for s in dataset_status(spec.name):
        if s.state != "missing":
            found[s.file.role] = (s.state, s.path)
    missing = [f for f in spec.files if f.role not in found]
    if not missing:
        return found
    folder = cache_dir() / spec.name
    names = [f.filename for f in missing]
    if not download:
        raise MnistlabError(
            f"dataset {spec.name!r} is not available offline; "
            + _put_files_message(spec, folder, names)
        )
    for file in missing:
        errors = []
        for mirror in spec.mirrors:
            try:
                download_file(mirror + file.filename, folder / file.filename, file.gz_md5,
                              max_bytes=MAX_COMPRESSED_BYTES)
                found[file.role] = ("cached", folder / file.filename)
                break
            except DownloadError as e:
                errors.append(str(e))
        else:
            raise MnistlabError(
                f"cannot download {file.filename} for {spec.name!r} ({'; '.join(errors)}); "
                + _put_files_message(
                    spec, folder, [f.filename for f in spec.files if f.role not in found]
                )
            )
    return found


def _validate(arrays: dict[str, np.ndarray], paths: dict[str, Path], num_classes: int) -> None:
    """Structural checks that make four IDX files one dataset the models can take."""
    for kind in ("train", "test"):
        images, labels = arrays[f"{kind}-images"], arrays[f"{kind}-labels"]
        ip, lp = paths[f"{kind}-images"], paths[f"{kind}-labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise MnistlabError(
                f"{ip}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                f"{'x'.join(map(str, images.shape))}"
            )
        if images.shape[1:] != IMAGE_SIZE:
            raise MnistlabError(
                f"{ip}: image size {images.shape[1]}x{images.shape[2]}, the models take "
                "28x28 images (MNIST's size): resize the images to 28x28"
            )
        if len(images) == 0:
            raise MnistlabError(f"{ip}: holds 0 images; a dataset needs at least one "
                                "training and one test image")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise MnistlabError(
                f"{lp}: expected 1-dimensional integer labels, got "
                f"{labels.dtype} {'x'.join(map(str, labels.shape))}"
            )
        if len(images) != len(labels):
            raise MnistlabError(
                f"{lp}: {len(labels)} labels for the {len(images)} images in {ip.name}"
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise MnistlabError(
                f"{lp}: labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
            )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # arrays are shared by the per-process cache: nobody may edit them
    return a


# The key holds each file's size and mtime, so an edited file is never served from the cache.
@functools.lru_cache(maxsize=4)
def _load(
    name: str, files: tuple[tuple[str, str, str, int, int], ...], source: str
) -> DatasetArrays:
    spec = DATASETS.get(name)
    arrays, paths = {}, {}
    for role, state, path_str, _, _ in files:
        path = Path(path_str)
        if spec is not None and state != "given":
            arrays[role] = _read_checked(path, spec.file(role), state)[0]
        else:
            arrays[role] = _read(path, state, role)[0]
        paths[role] = path
    # an unregistered folder of IDX files: digits, the classes its labels use up to the
    # largest (a model gets one output each); other classes come as folders of images
    _validate(arrays, paths, spec.num_classes if spec is not None else 10)
    if spec is not None:
        class_names = spec.class_names
    else:
        largest = int(max(arrays["train-labels"].max(), arrays["test-labels"].max()))
        class_names = tuple(str(i) for i in range(largest + 1))
    return DatasetArrays(
        name=name,
        train_images=_frozen(arrays["train-images"]),
        train_labels=_frozen(arrays["train-labels"].astype(np.int64)),
        test_images=_frozen(arrays["test-images"]),
        test_labels=_frozen(arrays["test-labels"].astype(np.int64)),
        class_names=class_names,
        source=source,
    )


def _image_folder_arrays(name: str, folder: Path) -> DatasetArrays:
    """A folder of images per class (imagefolder.py) as a dataset; `name` is not used: the
    classes are the folder's."""
    ready = load_image_folder(folder)
    return DatasetArrays(
        name=folder.name, train_images=_frozen(ready.train_images),
        train_labels=_frozen(ready.train_labels), test_images=_frozen(ready.test_images),
        test_labels=_frozen(ready.test_labels), class_names=ready.classes,
        source=f"the images in {folder}")


def _key(found: dict[str, tuple[str, Path]]) -> tuple[tuple[str, str, str, int, int], ...]:
    out = []
    for role in ROLES:
        state, path = found[role]
        st = path.stat()
        out.append((role, state, str(path.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def load_arrays(
    name: str = "mnist", data_dir: str | os.PathLike | None = None, download: bool = True
) -> DatasetArrays:
    """The four arrays of a dataset, checksummed where checksums are known, cached per process.

    Without `data_dir`: a registered dataset from the package or the cache (downloaded when
    missing and `download`). With `data_dir`: the four IDX files in that folder, under their
    standard names (.gz or not), checked for structure; `name` then only picks class names.
    """
    if data_dir is None:
        spec = get_spec(name)
        found = _ensure_files(spec, download)
        folders = sorted({str(p.parent) for _, p in found.values()})
        source = f"{spec.name} from {', '.join(folders)}"
    else:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            raise MnistlabError(f"{folder}: {what} of IDX files or images")
        if is_image_folder(folder):
            return _image_folder_arrays(name, folder)
        found, missing = {}, []
        for role in ROLES:
            path = _find(folder, role)
            if path is None:
                missing.append(_candidates(role)[0])
            else:
                found[role] = ("given", path)
        if missing:
            raise MnistlabError(
                f"{folder}: missing IDX files; put these files in {folder}: "
                f"{', '.join(missing)} (each may be gzipped, ending in .gz), or images in "
                f"{folder}/train/<class>/"
            )
        source = f"{name} (MNIST-format files in {folder})"
    try:
        return _load(name, _key(found), source)
    except OSError as e:
        raise IdxError(f"{e.filename}: cannot read: {e.strerror}") from e

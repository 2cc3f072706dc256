"""Fuzz targets and their Hypothesis strategies, used by tests/test_fuzz.py (a few hundred
cases each, derandomised; `--fuzz-cases N` for more, with a tally).

A target is what a user's file or request reaches: the IDX reader, the recipe loader, the
checkpoint loader and the image reader with its preprocessing. Each is fed real files made
worse (bits flipped, bytes overwritten with edge values, cut short, lengthened, spliced) and
structured inputs built to be almost right (a valid TOML recipe with a field of another type or
an absurd value, a safetensors header with a lying shape, a picture in an odd mode). The only
exceptions that may come out are the module's own documented errors (`allowed`); any other is a
bug. Successful results are checked too (an IDX read gives the header's shape, a preprocessed
digit is 28x28 uint8 with ink).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import math
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from PIL import Image

from mnistlab.checkpoint import DEFAULT_DIR, MODEL_FILE, CheckpointError, load_model
from mnistlab.data.idx import IdxError, idx_bytes, read_idx_and_md5
from mnistlab.data.registry import load_arrays
from mnistlab.inference.images import ImageError, decode_image, load_image
from mnistlab.inference.preprocess import from_pixels, read_digits
from mnistlab.models import build_model
from mnistlab.recipebook.recipe import (
    RecipeError,
    load_recipe,
    parse_recipe,
    recipe_from_dict,
    recipe_names,
)
from mnistlab.training.state import (
    STATE_FILE,
    read_training_state,
    restore_training_state,
    save_training_state,
)

_WORK = Path(tempfile.mkdtemp(prefix="mnistlab-fuzz-"))  # every target writes its files here
EDGE_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]
EDGE_U32 = [0, 1, 2, 3, 27, 28, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1]


# ---- mutating bytes ------------------------------------------------------------------------


@st.composite
def mutated(draw: Any, base: bytes, hot: int = 64) -> bytes:
    """`base` with one to four edits; half the edits fall in its first `hot` bytes (the header)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        end = len(data) if not data or draw(st.booleans()) else min(len(data), hot)
        at = draw(st.integers(0, max(end - 1, 0)))
        op = draw(st.sampled_from(["flip", "set", "u32", "cut", "insert", "delete", "repeat"]))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(EDGE_BYTES) | st.integers(0, 255))
        elif op == "u32":
            value = draw(st.sampled_from(EDGE_U32) | st.integers(0, 2**32 - 1))
            order = draw(st.sampled_from([">I", "<I"]))
            data[at:at + 4] = struct.pack(order, value)
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


# ---- IDX -----------------------------------------------------------------------------------


@functools.cache
def idx_seeds() -> list[bytes]:
    """Real IDX files (a few MNIST images and labels) and one of every other type code."""
    mnist = load_arrays("mnist")
    rng = np.random.default_rng(0)
    arrays = [mnist.test_images[:3], mnist.test_labels[:8].astype(np.uint8),
              rng.integers(-128, 128, (4, 5), dtype=np.int8),
              rng.integers(-2**15, 2**15, (3, 2, 2), dtype=np.int16),
              rng.integers(-2**31, 2**31, (5,), dtype=np.int32),
              rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 1, 2, 1))]
    return [idx_bytes(a) for a in arrays]


@st.composite
def idx_headers(draw: Any) -> bytes:
    """A header built field by field (any type code, 0 to 6 dimensions, edge sizes) over data
    of about the right length: most values are almost valid."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]) | st.integers(0, 255))
    ndim = draw(st.integers(0, 6))
    small = st.integers(0, 6)
    dims = [draw(small | st.sampled_from(EDGE_U32)) for _ in range(ndim)]
    magic = draw(st.sampled_from([b"\x00\x00"]) | st.binary(min_size=2, max_size=2))
    header = magic + bytes([code, ndim]) + struct.pack(f">{ndim}I", *dims)
    size = {0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1) * math.prod(dims)
    length = min(size, 4096) + draw(st.integers(-3, 3))
    return header + draw(st.binary(min_size=max(length, 0), max_size=max(length, 0)))


def idx_files() -> st.SearchStrategy[tuple[bytes, bool]]:
    """(file content, gzip it before writing): mutated real files and built headers."""
    raw = st.sampled_from(idx_seeds()).flatmap(lambda b: mutated(b, hot=24))
    return st.tuples(raw | idx_headers(), st.booleans()) | st.tuples(
        st.sampled_from([_gzip(b) for b in idx_seeds()]).flatmap(mutated), st.just(False))


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def check_idx(case: tuple[bytes, bool]) -> None:
    data, compress = case
    path = _WORK / "fuzz.idx"
    path.write_bytes(_gzip(data) if compress else data)
    array, md5 = read_idx_and_md5(path)
    # a file that reads is a valid IDX file: written again, it is the same bytes
    assert array.dtype.isnative and hashlib.md5(idx_bytes(array)).hexdigest() == md5


# ---- recipes -------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """`value` as TOML (inline tables and arrays), for the types `tomllib` gives."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "inf" if value == math.inf else \
            "-inf" if value == -math.inf else repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_text(table: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_scalars = (st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, 1, -1, 2, 3, 28, 10**6])
            | st.floats() | st.sampled_from([0.0, 0.5, 1.0, 1e-8, 1e300]) | st.booleans() | _text
            | st.sampled_from(["", "mnistlab-cnn", "adam", "sum", "train", "onecycle", "bf16"])
            | st.datetimes(timezones=st.just(dt.UTC)) | st.dates())
toml_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(_text, inner, max_size=3), max_leaves=8)


@functools.cache
def recipe_tables() -> list[dict[str, Any]]:
    import tomllib

    return [tomllib.loads(load_text(n)) for n in recipe_names()]


def load_text(name: str) -> str:
    from importlib import resources

    return (resources.files("mnistlab.recipebook") / f"{name}.toml").read_text(encoding="utf-8")


@st.composite
def recipe_edits(draw: Any, values: st.SearchStrategy = toml_values) -> dict[str, Any]:
    """A shipped recipe's table with one to three of its keys (or a new one, or a whole
    section) given another value, often of another type, or removed."""
    table = json.loads(json.dumps(draw(st.sampled_from(recipe_tables()))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(table)))
        holder, key = (table[section], None) if isinstance(table[section], dict) else (table, section)
        if key is None:
            key = draw(st.sampled_from(sorted(holder) + ["args", "init", "extra", "epochs", "steps"]))
        how = draw(st.sampled_from(["value", "value", "remove", "section"]))
        if how == "remove":
            holder.pop(key, None)
        elif how == "section":
            table[section] = draw(values)
        else:
            holder[key] = draw(values | st.sampled_from([[0.9, 0.999], [32, 64, 128],
                                                         {"x": 1}, [], 0, -1]))
    return table


def recipe_sources() -> st.SearchStrategy[str]:
    """Edited recipes as TOML, and shipped recipes' text with its characters damaged."""
    damaged = st.sampled_from(recipe_names()).flatmap(
        lambda n: mutated(load_text(n).encode(), hot=200)).map(lambda b: b.decode("latin-1"))
    return recipe_edits().map(toml_text) | damaged


def check_recipe(source: str) -> None:
    recipe = parse_recipe(source, "fuzz.toml")
    assert recipe.train.batch_size >= 1 and recipe.optimizer.lr > 0


def check_recipe_table(table: dict[str, Any]) -> None:
    """A recipe as a training state carries it, in JSON (`--resume` rebuilds it from there)."""
    recipe = recipe_from_dict(table, "training-state.safetensors")
    assert recipe.train.batch_size >= 1 and recipe.optimizer.lr > 0


def check_recipe_file(data: bytes) -> None:
    """The same through `load_recipe` on a file: any bytes, UTF-8 or not."""
    path = _WORK / "fuzz.toml"
    path.write_bytes(data)
    load_recipe(path)


# ---- checkpoints ---------------------------------------------------------------------------


def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_safetensors(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


@functools.cache
def checkpoint_seeds() -> dict[str, bytes]:
    """The shipped model's file, and a real training state (a softmax model, AdamW, one step)."""
    folder = _WORK / "state-seed"
    torch.manual_seed(0)
    model = build_model("softmax")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    meta = {"recipe": load_recipe("quick").to_dict(), "seed": 0, "step": 1, "total_steps": 10,
            "train_seconds": 0.5, "data_dir": None}  # what the engine writes
    save_training_state(folder, model, optimizer, meta)
    return {"model": (DEFAULT_DIR / MODEL_FILE).read_bytes(), "state": (folder / STATE_FILE).read_bytes()}


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                     | _text, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_text, inner, max_size=3), max_leaves=6)
_dims = st.lists(st.integers(0, 4) | st.sampled_from([-1, 3136, 2**31, 2**62]) | _json, max_size=5)


@st.composite
def header_edits(draw: Any, base: bytes) -> bytes:
    """A checkpoint whose header is valid JSON that lies: a tensor's dtype, shape or offsets, or
    a metadata entry (format, model name, model arguments, optimiser groups) changed."""
    header, body = split_safetensors(base)
    meta = json.loads(header["__metadata__"]["mnistlab"])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["tensor", "meta", "model", "args", "drop"]))
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        if where == "tensor":
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            header[name][field] = draw(st.sampled_from(["F16", "I64", "BOOL", "F8_E4M3", "X"])
                                       if field == "dtype" else _dims)
        elif where == "drop":
            del header[name]
        elif where == "meta":
            meta[draw(st.sampled_from(sorted(meta) + ["format"]))] = draw(_json)
        elif where == "model":
            meta["model"] = draw(st.fixed_dictionaries(
                {"name": st.sampled_from(["mnistlab-cnn", "fast-cnn", "softmax", "keras-cnn"]) | _json},
                optional={"args": _json}))
        elif isinstance(meta.get("model"), dict):
            args = meta["model"].setdefault("args", {})
            if isinstance(args, dict):
                args[draw(st.sampled_from(["widths", "dropout", "convs", "x"]))] = draw(
                    _json | st.lists(st.integers(-1, 2**40), max_size=4)
                    | st.sampled_from([[32, 64, 128], [32, 64, 4096], 4, 0.5]))
    metadata = header["__metadata__"] = dict(header["__metadata__"])
    metadata["mnistlab"] = json.dumps(meta)
    return join_safetensors(header, body)


def checkpoint_files(kind: str) -> st.SearchStrategy[bytes]:
    base = checkpoint_seeds()[kind]
    hot = 8 + int.from_bytes(base[:8], "little")
    return mutated(base, hot=hot) | header_edits(base)


def check_model(data: bytes) -> None:
    folder = _WORK / "model"
    folder.mkdir(exist_ok=True)
    (folder / MODEL_FILE).write_bytes(data)
    model, meta = load_model(folder)
    assert isinstance(meta, dict)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def check_state(data: bytes) -> None:
    folder = _WORK / "state"
    folder.mkdir(exist_ok=True)
    (folder / STATE_FILE).write_bytes(data)
    tensors, meta = read_training_state(folder)
    model = build_model("softmax")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = torch.get_rng_state()
    try:
        restore_training_state(tensors, meta, model, optimizer, str(folder))
        model(torch.rand(2, 1, 28, 28)).sum().backward()  # a restored state must train on
        optimizer.step()
    finally:
        torch.set_rng_state(rng)


# ---- images --------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def image_seeds() -> list[bytes]:
    """A real MNIST digit (dark on white, as a scan) in every format and several modes, and a
    three-digit number."""
    mnist = load_arrays("mnist")
    digit = Image.fromarray(255 - mnist.test_images[0])
    number = Image.fromarray(255 - np.hstack(list(mnist.test_images[:3])))
    rgba = digit.convert("RGBA")
    palette = digit.convert("P")
    return [
        _encode(digit, "PNG"), _encode(rgba, "PNG"), _encode(palette, "PNG", transparency=0),
        _encode(Image.fromarray((255 - mnist.test_images[1]).astype(np.uint16) * 257), "PNG"),
        _encode(digit, "JPEG", quality=90), _encode(digit.convert("RGB"), "JPEG", progressive=True),
        _encode(digit, "BMP"), _encode(digit, "GIF"), _encode(digit.convert("RGB"), "WEBP"),
        _encode(rgba, "WEBP", lossless=True), _encode(number, "PNG"),
    ]


MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"]
SAVES = {"PNG": ["L", "RGB", "RGBA", "LA", "P", "1", "I;16"], "JPEG": ["L", "RGB", "CMYK"],
         "BMP": ["L", "RGB", "P", "1"], "GIF": ["L", "P"], "WEBP": ["RGB", "RGBA"]}


@st.composite
def pictures(draw: Any) -> Image.Image:
    """A small picture in any mode: random pixels, or a few strokes on plain paper."""
    w, h = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    if draw(st.booleans()):
        w, h = draw(st.sampled_from([(1, 1), (1, 3000), (3000, 1), (2, 700), (600, 600)]))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    paper, ink = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    a = np.full((h, w), paper, dtype=np.uint8)
    for _ in range(draw(st.integers(0, 5))):  # strokes: rectangles of ink
        y, x = rng.integers(0, h), rng.integers(0, w)
        a[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, max(2, w // 4))] = ink
    if draw(st.booleans()):
        a = np.clip(a + rng.normal(0, draw(st.sampled_from([1, 8, 64])), a.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(a)
    if mode in ("I;16", "I", "F"):
        scale = draw(st.sampled_from([1, 257, 1 / 255]))
        image = Image.fromarray((a.astype(np.float64) * scale).astype({"I;16": np.uint16, "I": np.int32}.get(mode, np.float32)))
        if mode == "I;16":
            image = image.convert("I;16") if image.mode != "I;16" else image
        return image
    return image.convert(mode)


@st.composite
def encoded_pictures(draw: Any) -> bytes:
    image = draw(pictures())
    fmt = draw(st.sampled_from(sorted(SAVES)))
    if image.mode not in SAVES[fmt]:
        image = image.convert(draw(st.sampled_from(SAVES[fmt])))
    if image.width * image.height > 200_000 and fmt == "WEBP":
        fmt = "PNG"
    return _encode(image, fmt)


def image_files() -> st.SearchStrategy[bytes]:
    real = st.sampled_from(image_seeds()).flatmap(lambda b: mutated(b, hot=80))
    return real | encoded_pictures() | encoded_pictures().flatmap(lambda b: mutated(b, hot=80))


def check_image(data: bytes, number: bool = False) -> None:
    digits = read_digits(decode_image(data), number=number)
    assert digits and all(d.shape == (28, 28) and d.dtype == np.uint8 and d.any() for d in digits)


def check_image_file(data: bytes) -> None:
    path = _WORK / "fuzz.png"
    path.write_bytes(data)
    read_digits(load_image(path))


def check_picture(image: Image.Image) -> None:
    """Preprocessing of a Pillow image in any mode, without the encoder between."""
    for number in (False, True):
        digits = read_digits(image, number=number)
        assert all(d.shape == (28, 28) and d.dtype == np.uint8 and d.any() for d in digits)


_pixel = (st.integers(-1, 256) | st.floats() | st.sampled_from([0, 0.5, 1, 255, 1.5])
          | st.booleans() | st.none() | _text)
pixel_arrays = (st.lists(st.lists(_pixel, min_size=27, max_size=29), min_size=27, max_size=29)
                | st.lists(st.lists(st.integers(0, 255), min_size=28, max_size=28), min_size=28,
                           max_size=28) | toml_values)


def check_pixels(pixels: Any) -> None:
    out = from_pixels(pixels)
    assert out.shape == (28, 28) and out.dtype == np.uint8 and out.any()


# ---- the targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy]
    check: Callable[[Any], None]
    allowed: type[Exception]  # the module's documented error: anything else is a bug


TARGETS = [
    Target("idx", idx_files, check_idx, IdxError),
    Target("recipe", recipe_sources, check_recipe, RecipeError),
    Target("recipe-file", lambda: st.binary(max_size=64) | recipe_sources().map(
        lambda s: s.encode("utf-8", "surrogatepass")), check_recipe_file, RecipeError),
    Target("recipe-json", lambda: recipe_edits(_json), check_recipe_table, RecipeError),
    Target("checkpoint-model", lambda: checkpoint_files("model"), check_model, CheckpointError),
    Target("checkpoint-state", lambda: checkpoint_files("state"), check_state, CheckpointError),
    Target("image", image_files, check_image, ImageError),
    Target("image-file", lambda: st.sampled_from(image_seeds()).flatmap(mutated), check_image_file,
           ImageError),
    Target("picture", pictures, check_picture, ImageError),
    Target("pixels", lambda: pixel_arrays, check_pixels, ImageError),
]


def run_case(target: Target, case: Any) -> bool:
    """Run one case: a documented error is a clean refusal, and returns normally. Returns whether
    the case was accepted (False: refused with the documented error)."""
    try:
        target.check(case)
    except target.allowed:
        return False
    return True

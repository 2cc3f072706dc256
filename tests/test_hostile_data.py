"""Hostile data met through the commands: IDX folders, images and metrics logs.

Each test is one class of problem, met where a user meets it (`main([...])`): the command exits
with status 1 and one `mnistlab: error:` line that names the file, never a traceback, a hang or
memory taken on a file's word.
"""

import dataclasses
import gzip
import json
import os
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import write_mnist_slice
from PIL import Image

from mnistlab.checkpoint import DEFAULT_DIR, load_model, save_model
from mnistlab.cli import main
from mnistlab.data import idx
from mnistlab.data.idx import write_idx
from mnistlab.data.registry import load_arrays
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import evaluate_checkpoint, format_evaluation
from mnistlab.report import run as run_folder
from mnistlab.training.engine import METRICS_FILE

TRAIN_IMAGES = "train-images-idx3-ubyte"


def one_error(capsys, *argv) -> str:
    """Run `mnistlab ARGV`: it must fail with exactly one error line; return that line."""
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("mnistlab: error: ")
    return err


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A small MNIST-format folder (240 training, 60 test images) to damage."""
    return write_mnist_slice(tmp_path / "data", 240, 60)


def test_special_files_are_refused_by_type_without_blocking(tmp_path, data_dir, capsys):
    # a FIFO with no writer: opened blocking, any of these would wait for ever
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (data_dir / TRAIN_IMAGES).unlink()
    os.mkfifo(data_dir / TRAIN_IMAGES)
    err = one_error(capsys, "evaluate", "default", "--data-dir", data_dir, "--device", "cpu")
    assert f"{data_dir / TRAIN_IMAGES}: not a regular file (a FIFO)" in err

    # predict says so for the FIFO and the folder, and reads the good image between them
    good = tmp_path / "seven.png"
    Image.fromarray(load_arrays().test_images[0]).save(good)
    assert main(["predict", str(fifo), str(good), str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: 7 ")
    assert err.splitlines() == [
        f"mnistlab: error: {fifo}: not a regular file (a FIFO); the image must be a file",
        f"mnistlab: error: {tmp_path}: not a regular file (a folder); the image must be a file"]

    run = shipped_model_copy(tmp_path / "run")
    for make, remove in [(os.mkfifo, os.unlink), (os.mkdir, os.rmdir)]:
        make(run / METRICS_FILE)
        err = one_error(capsys, "report", run, "--device", "cpu")
        assert f"{run / METRICS_FILE}: not a regular file" in err and "move it aside" in err
        remove(run / METRICS_FILE)


def gzip_of(header_dims: tuple[int, ...], zeros: int) -> bytes:
    """A gzip IDX file of uint8 whose header declares `header_dims` and whose data is `zeros`
    zero bytes, built of concatenated members a 16 MiB one at a time: a few KB a gigabyte."""
    header = bytes([0, 0, 8, len(header_dims)]) + struct.pack(f">{len(header_dims)}I", *header_dims)
    block = gzip.compress(bytes(1 << 24), compresslevel=9)
    parts = [gzip.compress(header)] + [block] * (zeros >> 24)
    return b"".join(parts) + gzip.compress(bytes(zeros % (1 << 24)))


def test_idx_files_are_bounded_by_what_is_read_and_inflated(data_dir, capsys, monkeypatch):
    path = data_dir / (TRAIN_IMAGES + ".gz")
    (data_dir / TRAIN_IMAGES).unlink()
    # a header claiming 2.7 million images of 28x28: refused before anything is inflated
    path.write_bytes(gzip_of((2_700_000, 28, 28), 1 << 24))
    err = one_error(capsys, "evaluate", "default", "--data-dir", data_dir, "--device", "cpu")
    assert f"{path}: header declares 2700000x28x28 uint8" in err
    assert f"more than the {idx.MAX_DATA_BYTES:,} bytes" in err and "replace it" in err

    # a header claiming 240 images in front of 2 GiB of zeros (a 2 MB file): reading stops one
    # byte past the 188,160 declared, a few MB at a time
    path.write_bytes(gzip_of((240, 28, 28), 2 << 30))
    assert path.stat().st_size < 3_000_000
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError, match="trailing bytes"):
            load_arrays(data_dir=data_dir)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000

    # the compressed bytes are counted too: empty gzip members yield nothing, yet are read
    monkeypatch.setattr(idx, "MAX_COMPRESSED_BYTES", 1 << 20)
    path.write_bytes(gzip_of((240, 28, 28), 0) + gzip.compress(b"") * 60_000)
    err = one_error(capsys, "evaluate", "default", "--data-dir", data_dir, "--device", "cpu")
    assert f"{path}: the compressed file is larger than the 1,048,576 bytes" in err


def test_images_not_28x28_are_refused_when_loaded(data_dir, tmp_path, capsys):
    for shape in [(240, 1, 1), (240, 0, 28), (240, 32, 32)]:
        write_idx(data_dir / TRAIN_IMAGES, np.zeros(shape, np.uint8))
        for command in (["evaluate", "default"], ["train", "--recipe", "quick", "--out",
                                                  tmp_path / "run"]):
            err = one_error(capsys, *command, "--data-dir", data_dir, "--device", "cpu")
            size = f"{shape[1]}x{shape[2]}"
            assert f"{data_dir / TRAIN_IMAGES}: image size {size}, the models take 28x28" in err
            assert not (tmp_path / "run").exists()


def test_empty_splits_are_refused_before_training(data_dir, tmp_path, capsys):
    train = ["train", "--recipe", "quick", "--out", tmp_path / "run", "--data-dir", data_dir,
             "--device", "cpu"]
    for role, name in [("test", "t10k"), ("train", "train")]:
        write_mnist_slice(data_dir, 240, 60)
        write_idx(data_dir / f"{name}-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
        write_idx(data_dir / f"{name}-labels-idx1-ubyte", np.zeros(0, np.uint8))
        err = one_error(capsys, *train)
        assert f"{data_dir / name}-images-idx3-ubyte: holds 0 images" in err, role
        assert not (tmp_path / "run").exists()

    # 11 training images leave none (their last twelfth) for validation
    write_mnist_slice(data_dir, 11, 60)
    err = one_error(capsys, *train)
    assert "the validation split of mnist (MNIST-format files in" in err and "is empty" in err
    assert not (tmp_path / "run").exists()
    err = one_error(capsys, "evaluate", "default", "--split", "validation", "--data-dir",
                    data_dir, "--device", "cpu")
    assert "is empty" in err


def shipped_model_copy(folder: Path, **meta) -> Path:
    """A run folder holding the shipped model, with `meta` in its checkpoint's metadata."""
    if not meta:
        shutil.copytree(DEFAULT_DIR, folder)
        return folder
    model, recorded = load_model(DEFAULT_DIR)
    save_model(folder, model, {**recorded, **meta})
    return folder


def test_a_damaged_metrics_log_is_one_error_line(tmp_path, capsys, monkeypatch):
    run = shipped_model_copy(tmp_path / "run")
    good = json.dumps({"event": "train", "step": 1, "loss": 2.0, "accuracy": 0.5}) + "\n"
    damage = {  # a line 2, and what the error says of it
        b"[1, 2, 3]": "not a metrics record",
        b'{"event": "train", "step": "abc", "loss": 1, "accuracy": 0.5}': "no number 'step'",
        b'{"event": "train", "step": 1e400, "loss": 1, "accuracy": 0.5}': "step inf is not",
        b'{"event": "train", "step": 1' + b"0" * 400 + b', "loss": 1, "accuracy": 0.5}':
            "is not between 0 and 9,007,199,254,740,992",
        b'{"event": "train", "step": 3, "loss": 1, "accuracy": 0.5, "time": 1e300}':
            "time 1e+300 is not between",
        b'{"event": "test", "loss": 1, "accuracy": 0.5, "lr": "fast"}': "no number 'lr'",
        b'{"event": "train", "step": 2, "loss": 1, "accuracy": 0.5, "note": "\xff"}':
            "not UTF-8 text (byte 0xff at column 68)",
        b"[" * 100_000 + b"]" * 100_000: "not valid JSON (nested too deeply)",
    }
    for line, said in damage.items():
        (run / METRICS_FILE).write_bytes(good.encode() + line + b"\n" + good.encode())
        err = one_error(capsys, "report", run, "--device", "cpu")
        assert f"{run / METRICS_FILE} line 2: " in err and said in err, (line[:40], err)
    # a log longer than the cap (made small here, for a light test) is refused as it is read
    monkeypatch.setattr(run_folder, "MAX_METRICS_BYTES", 4096)
    (run / METRICS_FILE).write_text(good * 100)
    err = one_error(capsys, "report", run, "--device", "cpu")
    assert f"{run / METRICS_FILE}: the metrics log is larger than the 4,096 bytes" in err


def test_evaluate_says_which_folder_it_measured_on(tmp_path, data_dir, capsys):
    run = shipped_model_copy(tmp_path / "run", data_dir=str(data_dir))
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("on mnist test (60 images)")
    assert lines[1] == f"on the IDX files in {data_dir} (the folder this model was trained on)"
    assert main(["evaluate", "default", "--data-dir", str(data_dir), "--device", "cpu",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(data_dir)
    shipped = evaluate_checkpoint(run, device="cpu", data_dir=str(data_dir))
    assert "IDX files" not in format_evaluation(dataclasses.replace(shipped, data_dir=None))

    # the recorded folder is bounded as any --data-dir is, and the error says whose it is
    write_idx(data_dir / "t10k-images-idx3-ubyte", np.zeros((60, 32, 32), np.uint8))
    err = one_error(capsys, "evaluate", run, "--device", "cpu")
    assert "image size 32x32" in err and f"the data folder {run} was trained on" in err

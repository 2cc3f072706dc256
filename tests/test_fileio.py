import os
import sys
from pathlib import Path

import pytest

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_writer, read_limited


def test_read_limited_reads_a_file_up_to_its_limit(tmp_path):
    (tmp_path / "r.toml").write_bytes(b"x" * 10)
    assert read_limited(tmp_path / "r.toml", 10, "recipe") == b"x" * 10
    with pytest.raises(MnistlabError, match=r"r.toml: the recipe is larger than the 9 bytes allowed"):
        read_limited(tmp_path / "r.toml", 9, "recipe")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_the_limit_counts_what_is_read_not_what_stat_says():
    # /proc files report a size of 0 and still hold text
    assert os.stat("/proc/self/status").st_size == 0
    assert b"Name:" in read_limited("/proc/self/status", 1 << 20, "recipe")
    with pytest.raises(MnistlabError, match="larger than the 10 bytes allowed"):
        read_limited("/proc/self/status", 10, "recipe")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX special files")
def test_special_files_are_refused_by_their_type_without_reading(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: reading it would block for ever
    cases = {"/dev/zero": "a character device", fifo: "a FIFO", tmp_path: "a folder"}
    for path, kind in cases.items():
        with pytest.raises(MnistlabError, match=f"not a regular file \\({kind}\\); the model must be a file"):
            read_limited(path, 1 << 30, "model")
    with pytest.raises(MnistlabError, match="no such model file"):
        read_limited(tmp_path / "missing", 10, "model")


def test_an_exclusive_write_creates_and_never_replaces(tmp_path):
    path = tmp_path / "new" / "a.png"
    with atomic_writer(path, exclusive=True) as f:
        f.write(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        with atomic_writer(path, exclusive=True) as f:
            f.write(b"second")
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]  # no temporary file left
    with atomic_writer(path) as f:  # without it, the file is replaced as before
        f.write(b"third")
    assert path.read_bytes() == b"third"

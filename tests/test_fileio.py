import os
import sys
from pathlib import Path

import pytest

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_text, atomic_writer, check_writable, read_limited


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


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and special files")
def test_a_write_replaces_the_file_a_link_names_and_nothing_but_a_file(tmp_path):
    """A results file given as a link, a FIFO or a device (--json out.json, /dev/full) was
    replaced by a new file: the link, the FIFO, the device node lost."""
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    (tmp_path / "pipe-link.json").symlink_to(fifo)
    for path, kind in [(fifo, "a FIFO"), (tmp_path / "pipe-link.json", "a FIFO"),
                       (tmp_path, "a folder")]:
        for write in (check_writable, lambda p: atomic_write_text(p, "x")):
            with pytest.raises(MnistlabError, match=f"cannot write {path}: {kind} is in its place"):
                write(path)
    assert fifo.is_fifo() and (tmp_path / "pipe-link.json").is_symlink()
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(MnistlabError, match=r"afile/out.onnx: .*afile is a file, not a folder"):
        atomic_write_text(tmp_path / "afile" / "out.onnx", "x")
    assert (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "link.json", "pipe-link.json",
                                                          "pipe.json", "real.json"]


def test_text_naming_a_path_that_is_no_utf8_is_written_with_it_escaped(tmp_path):
    """A run folder named in Latin-1 (its bytes come to Python as lone surrogates) made the
    report's page a UnicodeEncodeError after training, the page left unwritten."""
    name = os.fsdecode(b"o\xffut")
    atomic_write_text(tmp_path / "page.html", f"<p>{name}</p>")
    assert (tmp_path / "page.html").read_text(encoding="utf-8") == "<p>o\\udcffut</p>"

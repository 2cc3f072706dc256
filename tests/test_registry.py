import functools
import gzip
import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mnistlab.data import registry
from mnistlab.data.download import DownloadError, download_file
from mnistlab.data.idx import write_idx
from mnistlab.data.registry import (
    DATASETS,
    DatasetSpec,
    cache_dir,
    dataset_status,
    get_spec,
    load_arrays,
    verify_dataset,
)
from mnistlab.errors import MnistlabError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
STANDARD = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))
    # No test may wait for real backoff delays.
    monkeypatch.setattr(registry, "download_file", functools.partial(download_file, backoff=0))


def tiny_arrays(n_train=24, n_test=12, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test-labels": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_set(folder: Path, arrays: dict[str, np.ndarray], suffix=".gz", names=STANDARD) -> None:
    for role, a in arrays.items():
        write_idx(folder / (names[role] + suffix), a)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tiny_spec(served: Path, base_url: str, monkeypatch) -> DatasetSpec:
    """Register a dataset 'tiny' whose files are in `served`, published at `base_url`."""
    files = tuple(
        registry.DatasetFile(
            role, STANDARD[role] + ".gz", None, md5(served / f"{STANDARD[role]}.gz")
        )
        for role in registry.ROLES
    )
    spec = DatasetSpec(
        "tiny", "test set", files, (base_url,), False, "", "", 10, tuple("abcdefghij")
    )
    monkeypatch.setitem(DATASETS, "tiny", spec)
    return spec


class Server:
    def __init__(self, root: Path):
        self.failures = 0  # answer this many next requests with 503
        self.requests = 0
        self.released = threading.Event()  # ends the stalled answers of /stall/NAME
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                if self.path == "/short":  # promises 100 bytes, sends 10, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(bytes(10))
                    self.close_connection = True
                    return
                if self.path.startswith("/stall/"):  # half of NAME, then nothing until released
                    data = (root / self.path[len("/stall/"):]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    outer.released.wait(30)
                    self.close_connection = True
                    return
                if outer.failures > 0:
                    outer.failures -= 1
                    self.send_error(503)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    write_set(root, tiny_arrays())
    server = Server(root)
    yield root, server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --- the registry ---------------------------------------------------------------------------


def test_registered_sets():
    assert {"mnist", "fashion-mnist", "kmnist"} <= set(DATASETS)
    for spec in DATASETS.values():
        assert [f.role for f in spec.files] == list(registry.ROLES)
        assert len(spec.class_names) == spec.num_classes == 10
        assert spec.mirrors and all(m.endswith("/") for m in spec.mirrors)
    assert get_spec("fashion-mnist").class_names[0] == "T-shirt/top"
    assert get_spec("kmnist").class_names[-1] == "wo"
    assert all(f.md5 for f in get_spec("mnist").files)
    assert get_spec("mnist").shipped and not get_spec("kmnist").shipped


def test_unknown_dataset_lists_known():
    with pytest.raises(MnistlabError, match="unknown dataset 'emnist'; known: mnist, fashion"):
        get_spec("emnist")


def test_cache_dir(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MNISTLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mnistlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mnistlab"


# --- shipped MNIST --------------------------------------------------------------------------


def test_shipped_mnist_loads():
    a = load_arrays("mnist")
    assert a.train_images.shape == (60000, 28, 28) and a.train_images.dtype == np.uint8
    assert a.test_images.shape == (10000, 28, 28) and a.test_images.dtype == np.uint8
    assert a.train_labels.dtype == np.int64 and a.test_labels.dtype == np.int64
    assert np.bincount(a.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(a.test_labels).tolist() == MNIST_TEST_COUNTS
    assert a.class_names == tuple("0123456789")
    assert load_arrays("mnist") is a  # cached per process
    assert not a.train_images.flags.writeable  # so that nobody corrupts the shared copy


def test_shipped_mnist_status_and_verify():
    assert [s.state for s in dataset_status("mnist")] == ["shipped"] * 4
    checks = verify_dataset("mnist")
    assert all(c.ok for c in checks), checks
    assert checks[0].message.startswith("60000x28x28 uint8")


@pytest.fixture
def mnist_copy(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "pkg"
    shutil.copytree(registry.SHIPPED_ROOT / "mnist", root / "mnist")
    monkeypatch.setattr(registry, "SHIPPED_ROOT", root)
    return root / "mnist"


def test_corrupt_shipped_file_fails_checksum(mnist_copy):
    labels = mnist_copy / "train-labels-idx1-ubyte.gz"
    a = np.frombuffer(gzip.decompress(labels.read_bytes())[8:], np.uint8).copy()
    a[0] = (a[0] + 1) % 10  # structurally perfect, one label wrong
    write_idx(labels, a)
    with pytest.raises(MnistlabError) as info:
        load_arrays("mnist")
    message = str(info.value)
    assert str(labels) in message and "checksum mismatch" in message
    assert "a25bea736e30d166cdddb491f175f624" in message and "reinstall" in message
    assert [c.ok for c in verify_dataset("mnist")] == [True, False, True, True]


# --- data_dir ---------------------------------------------------------------------------------


def test_data_dir_with_good_files(tmp_path):
    arrays = tiny_arrays()
    names = {**STANDARD, "test-images": "test-images-idx3-ubyte"}
    write_set(tmp_path / "d", arrays, suffix="", names=names)
    a = load_arrays("fashion-mnist", data_dir=tmp_path / "d")
    np.testing.assert_array_equal(a.train_images, arrays["train-images"])
    np.testing.assert_array_equal(a.test_labels, arrays["test-labels"])
    assert a.test_labels.dtype == np.int64
    assert a.class_names[0] == "T-shirt/top"
    assert str(tmp_path / "d") in a.source


def test_data_dir_unregistered_name_infers_classes(tmp_path):
    arrays = tiny_arrays()
    arrays["train-labels"] = (np.arange(24) % 3).astype(np.uint8)
    arrays["test-labels"] = (np.arange(12) % 3).astype(np.uint8)
    write_set(tmp_path, arrays)
    assert load_arrays("my-digits", data_dir=tmp_path).class_names == ("0", "1", "2")


def test_data_dir_missing_file_says_what_to_put_where(tmp_path):
    write_set(tmp_path, tiny_arrays())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistlabError) as info:
        load_arrays(data_dir=tmp_path)
    assert f"put these files in {tmp_path}: t10k-labels-idx1-ubyte" in str(info.value)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"train-labels": np.zeros(23, np.uint8)}, "23 labels for the 24 images"),
        ({"test-labels": np.full(12, 10, np.uint8)}, "expected 0..9"),
        ({"train-images": np.zeros((24, 784), np.uint8)}, "expected uint8 images"),
        ({"test-images": np.zeros((12, 28, 28), np.float32)}, "expected uint8 images"),
        ({"test-images": np.zeros((12, 20, 20), np.uint8)}, "image size"),
    ],
)
def test_data_dir_structure_is_checked(tmp_path, change, expected):
    write_set(tmp_path, {**tiny_arrays(), **change})
    with pytest.raises(MnistlabError, match=expected):
        load_arrays("mnist", data_dir=tmp_path)


def test_cache_sees_edited_files(tmp_path):
    write_set(tmp_path, tiny_arrays(seed=1))
    first = load_arrays(data_dir=tmp_path)
    write_set(tmp_path, tiny_arrays(n_train=36, seed=2))
    assert len(load_arrays(data_dir=tmp_path).train_images) == 36 != len(first.train_images)


# --- downloads --------------------------------------------------------------------------------


def test_download_on_demand(served, monkeypatch):
    root, server = served
    tiny_spec(root, server.url, monkeypatch)
    assert [s.state for s in dataset_status("tiny")] == ["missing"] * 4
    a = load_arrays("tiny")
    np.testing.assert_array_equal(a.train_images, tiny_arrays()["train-images"])
    assert a.class_names == tuple("abcdefghij")
    assert [s.state for s in dataset_status("tiny")] == ["cached"] * 4
    assert (cache_dir() / "tiny" / "train-images-idx3-ubyte.gz").is_file()
    assert all(c.ok for c in verify_dataset("tiny"))


def test_download_retries_after_failure(served, tmp_path):
    root, server = served
    server.failures = 2
    dest = tmp_path / "out" / "f.gz"
    name = "train-labels-idx1-ubyte.gz"
    download_file(server.url + name, dest, md5(root / name), backoff=0)
    assert dest.read_bytes() == (root / name).read_bytes()
    assert server.requests == 3


def test_download_gives_up_after_retries(served, tmp_path):
    _, server = served
    server.failures = 10
    with pytest.raises(DownloadError, match="503.*tried 3 times"):
        download_file(server.url + "x", tmp_path / "x", None, retries=2, backoff=0)
    assert server.requests == 3


def test_wrong_checksum_leaves_no_file(served, tmp_path):
    _, server = served
    dest = tmp_path / "out" / "f.gz"
    with pytest.raises(DownloadError, match="expected 0123.*nothing was saved"):
        download_file(server.url + "train-labels-idx1-ubyte.gz", dest, "0123" * 8, backoff=0)
    assert list(dest.parent.iterdir()) == []


def test_interrupted_download_leaves_no_file(served, tmp_path):
    _, server = served
    dest = tmp_path / "out" / "f.gz"
    with pytest.raises(DownloadError, match="received 10 of 100 bytes"):
        download_file(server.url + "short", dest, None, retries=1, backoff=0)
    assert list(dest.parent.iterdir()) == []


def test_not_found_is_not_retried(served, tmp_path):
    _, server = served
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "nope.gz", tmp_path / "nope.gz", None, backoff=0)
    assert server.requests == 1


def test_progress_bar_on_request(served, tmp_path, capsys):
    _, server = served
    download_file(server.url + "t10k-labels-idx1-ubyte.gz", tmp_path / "f", None, progress=True)
    err = capsys.readouterr().err
    assert "t10k" not in err and "f  " in err and "100%" in err and "MB/s" in err


def test_no_server_says_which_files_to_put_where(served, monkeypatch):
    root, _ = served
    tiny_spec(root, closed_port_url(), monkeypatch)
    with pytest.raises(MnistlabError) as info:
        load_arrays("tiny")
    message = str(info.value)
    assert f"put these files in {cache_dir() / 'tiny'}: train-images-idx3-ubyte.gz" in message
    assert "t10k-labels-idx1-ubyte.gz" in message and "--data-dir" in message
    assert not (cache_dir() / "tiny").exists() or not any((cache_dir() / "tiny").iterdir())


def test_no_download_when_told_not_to(served, monkeypatch):
    root, server = served
    tiny_spec(root, server.url, monkeypatch)
    with pytest.raises(MnistlabError, match="not available offline; put these files in"):
        load_arrays("tiny", download=False)
    assert server.requests == 0


def test_corrupt_cached_download_says_delete(served, monkeypatch):
    root, server = served
    tiny_spec(root, server.url, monkeypatch)
    load_arrays("tiny")
    cached = cache_dir() / "tiny" / "t10k-labels-idx1-ubyte.gz"
    write_idx(cached, np.zeros(12, np.uint8))
    with pytest.raises(MnistlabError, match="checksum mismatch.*delete it and run again"):
        load_arrays("tiny")


# --- damaged, cut short or substituted files, wherever they are: detected, with what to do ----


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_shipped_file_says_reinstall(mnist_copy):
    cut_short(mnist_copy / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(MnistlabError, match=r"t10k-labels-idx1-ubyte.gz: corrupt gzip .*; the "
                                            r"installed package is damaged: reinstall mnistlab"):
        load_arrays("mnist")


def test_substituted_shipped_file_fails_its_checksum(mnist_copy):
    # a valid IDX file in the wrong place: the training labels where the test labels belong
    shutil.copy(mnist_copy / "train-labels-idx1-ubyte.gz", mnist_copy / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(MnistlabError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch: .*"
                                            r"expected 27ae3e4e09519cfbb04c329615203637; .*reinstall"):
        load_arrays("mnist")


def test_truncated_cached_file_says_delete_and_download_again(served, monkeypatch):
    root, server = served
    tiny_spec(root, server.url, monkeypatch)
    load_arrays("tiny")
    cut_short(cache_dir() / "tiny" / "train-images-idx3-ubyte.gz")
    with pytest.raises(MnistlabError, match=r"train-images-idx3-ubyte.gz: corrupt gzip .*; delete "
                                            r"it and run again to download a fresh copy"):
        load_arrays("tiny")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_file_in_data_dir_says_replace_it(tmp_path, suffix):
    write_set(tmp_path, tiny_arrays(), suffix=suffix)
    cut_short(tmp_path / f"train-images-idx3-ubyte{suffix}")
    with pytest.raises(MnistlabError, match=r"train-images-idx3-ubyte.*: (truncated|corrupt gzip)"
                                            r".*; replace it with a good copy"):
        load_arrays(data_dir=tmp_path)


def test_substituted_files_in_data_dir_are_caught(tmp_path):
    arrays = tiny_arrays()
    write_set(tmp_path, {**arrays, "train-labels": arrays["test-labels"],
                         "test-labels": arrays["train-labels"]})  # swapped
    with pytest.raises(MnistlabError, match="12 labels for the 24 images"):
        load_arrays(data_dir=tmp_path)


def test_verify_checks_a_data_dir_copy_of_mnist_against_the_checksums(tmp_path):
    mnist = load_arrays("mnist")
    labels = mnist.train_labels.astype(np.uint8)
    labels[123] = (labels[123] + 1) % 10  # a copy that loads perfectly well, one label off
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", mnist.test_labels.astype(np.uint8))
    checks = {c.file.role: c for c in verify_dataset("mnist", tmp_path)}
    assert "checksum mismatch" in checks["train-labels"].message
    assert "replace it with a good copy" in checks["train-labels"].message
    assert checks["test-labels"].ok and "checksum ok" in checks["test-labels"].message
    assert checks["train-images"].message == "missing"


def test_a_download_killed_half_way_leaves_nothing_that_looks_complete(served, monkeypatch):
    root, server = served
    tiny_spec(root, server.url, monkeypatch)
    name = "train-images-idx3-ubyte.gz"
    dest = cache_dir() / "tiny" / name
    # a big file (the reader waits for 64 KB chunks), half of it sent, then the line goes quiet
    write_idx(root / "big.gz", np.random.default_rng(0).integers(0, 256, (400, 28, 28), np.uint8))
    code = ("import sys; from mnistlab.data.download import download_file; "
            "download_file(sys.argv[1], sys.argv[2], None, retries=0)")
    child = subprocess.Popen([sys.executable, "-c", code, f"{server.url}stall/big.gz", str(dest)])
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size >= 1 << 16 for p in dest.parent.glob(".*.tmp")):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert not dest.exists() and len(list(dest.parent.glob(f".{name}.*.tmp"))) == 1
    assert [s.state for s in dataset_status("tiny")] == ["missing"] * 4
    a = load_arrays("tiny")  # downloads it again, whole, and checks it
    np.testing.assert_array_equal(a.train_images, tiny_arrays()["train-images"])
    assert all(c.ok for c in verify_dataset("tiny"))

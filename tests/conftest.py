from pathlib import Path

import pytest

from mnistlab.data.idx import write_idx
from mnistlab.data.registry import load_arrays
from mnistlab.inference.predictor import Predictor


def pytest_addoption(parser):
    """Longer runs of two tests, for docs/RELIABILITY.md; the defaults keep the suite's length."""
    group = parser.getgroup("mnistlab", "mnistlab's long runs (print their tally with -s)")
    group.addoption("--fuzz-cases", type=int, default=None, metavar="N",
                    help="cases per target in tests/test_fuzz.py (default: 60 to 200 a target)")
    group.addoption("--kills", type=int, default=24, metavar="N",
                    help="SIGKILLs in tests/test_reliability.py's kill test (default: 24)")


def write_mnist_slice(folder: Path, train: int, test: int, test_suffix: str = "") -> Path:
    """The first `train` training and `test` test images of the real MNIST, as IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    mnist = load_arrays("mnist")
    write_idx(folder / "train-images-idx3-ubyte", mnist.train_images[:train])
    write_idx(folder / "train-labels-idx1-ubyte", mnist.train_labels[:train].astype("uint8"))
    write_idx(folder / f"t10k-images-idx3-ubyte{test_suffix}", mnist.test_images[:test])
    write_idx(folder / f"t10k-labels-idx1-ubyte{test_suffix}", mnist.test_labels[:test].astype("uint8"))
    return folder


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory) -> Path:
    """A folder holding a small MNIST-format dataset: the first 2,400 training and 600 test
    images of the real MNIST, so that training tests run whole epochs in a second."""
    return write_mnist_slice(tmp_path_factory.mktemp("small-mnist"), 2400, 600, test_suffix=".gz")


@pytest.fixture
def recipe_file(tmp_path):
    """Write a recipe TOML into a temporary file and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="module")
def mnist():
    """MNIST's test images (uint8, N x 28 x 28) and labels, as numpy arrays."""
    data = load_arrays("mnist")
    return data.test_images, data.test_labels


@pytest.fixture(scope="module")
def predictor():
    """The shipped default model's predictor (PyTorch), one per test module."""
    return Predictor.load("default")

from pathlib import Path

import pytest

from mnistlab.data.idx import write_idx
from mnistlab.data.registry import load_arrays


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory) -> Path:
    """A folder holding a small MNIST-format dataset: the first 2,400 training and 600 test
    images of the real MNIST, so that training tests run whole epochs in a second."""
    folder = tmp_path_factory.mktemp("small-mnist")
    mnist = load_arrays("mnist")
    write_idx(folder / "train-images-idx3-ubyte", mnist.train_images[:2400])
    write_idx(folder / "train-labels-idx1-ubyte", mnist.train_labels[:2400].astype("uint8"))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", mnist.test_images[:600])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", mnist.test_labels[:600].astype("uint8"))
    return folder


@pytest.fixture
def recipe_file(tmp_path):
    """Write a recipe TOML into a temporary file and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write

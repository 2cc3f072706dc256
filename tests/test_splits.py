import numpy as np
import pytest
import torch

from mnistlab.data.idx import write_idx
from mnistlab.data.splits import SPLITS, load_split, validation_size
from mnistlab.errors import MnistlabError


def test_mnist_split_sizes():
    sizes = {name: len(load_split(name)) for name in SPLITS}
    assert sizes == {"train": 55000, "validation": 5000, "train-full": 60000, "test": 10000}


def test_validation_is_the_tail_of_train_full():
    full, train, val = (load_split(s) for s in ("train-full", "train", "validation"))
    assert torch.equal(val.images, full.images[-5000:])
    assert torch.equal(val.labels, full.labels[-5000:])
    assert torch.equal(train.images, full.images[:55000])


def test_split_tensors():
    s = load_split("test")
    assert s.images.dtype == torch.uint8 and s.images.shape == (10000, 28, 28)
    assert s.labels.dtype == torch.int64 and s.labels.shape == (10000,)
    assert s.images.device.type == "cpu"
    assert s.to("cpu").name == "test"
    s.images[0] = 0  # each split owns its tensors: the shared cache stays untouched
    assert load_split("test").images[0].any()


@pytest.mark.parametrize("n, val", [(60000, 5000), (10000, 5000), (9999, 833), (1200, 100)])
def test_validation_size(n, val):
    assert validation_size(n) == val


def test_small_dataset_split(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((120, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", (np.arange(120) % 10).astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((30, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(30, np.uint8))
    assert len(load_split("validation", data_dir=tmp_path)) == 10
    assert len(load_split("train", data_dir=tmp_path)) == 110
    assert load_split("train", data_dir=tmp_path).images.shape[1:] == (28, 28)


def test_unknown_split_lists_valid_names():
    with pytest.raises(MnistlabError, match="unknown split 'valid'.*train, validation, train-full"):
        load_split("valid")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_split_on_gpu():
    s = load_split("validation", device="cuda")
    assert s.images.is_cuda and s.labels.is_cuda

"""Datasets as numpy arrays: `mnistlab.datasets.load` and `mnistlab.datasets.names`.

MNIST ships inside the package (no download); the other registered MNIST-format datasets are
downloaded into the cache on first use, and any folder of four IDX files can stand in for one.
"""

from __future__ import annotations

import os

import numpy as np

from mnistlab.data.registry import DATASETS
from mnistlab.data.splits import SPLITS, load_split
from mnistlab.errors import MnistlabError, brief
from mnistlab.fileio import optional_path_argument

__all__ = ["SPLITS", "load", "names"]


def names() -> list[str]:
    """The registered datasets, as `mnistlab datasets` lists them.

    >>> "mnist" in mnistlab.datasets.names()
    True
    """
    return list(DATASETS)


def load(name: str = "mnist", split: str = "test", *,
         data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split of a dataset: images, uint8 (N, 28, 28) with light ink on 0, and labels,
    int64 (N,). The splits are "train" (the first 55,000 of MNIST's training file, as the
    tutorials split it), "validation" (its last 5,000), "train-full" (all 60,000) and "test"
    (the 10,000 test images). `data_dir` reads the IDX files in that folder instead.

    >>> images, labels = mnistlab.datasets.load("mnist", split="test")
    >>> images.shape, images.dtype, labels[:10].tolist()
    ((10000, 28, 28), dtype('uint8'), [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    """
    if not isinstance(name, str):  # the registry looks names up in a dict: a list is unhashable
        raise MnistlabError(f"name: expected a dataset's name, such as 'mnist', got {brief(name)}")
    folder = optional_path_argument("data_dir", data_dir, "a folder")
    data = load_split(split, name, folder, "cpu")
    return data.images.numpy(), data.labels.numpy()

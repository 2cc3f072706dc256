"""Named splits of a dataset, each as two whole tensors on a device.

The validation split is the tail of the training file, as TensorFlow's `input_data` made it
for the tutorials (55,000 train, 5,000 validation); the test file is only ever the test split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mnistlab.data.registry import load_arrays
from mnistlab.errors import MnistlabError

SPLITS = ("train", "validation", "train-full", "test")


def validation_size(num_train: int) -> int:
    """5,000 like input_data when the training file is big enough, else its last twelfth."""
    return 5000 if num_train >= 10000 else num_train // 12


@dataclass
class Split:
    name: str
    images: torch.Tensor  # uint8 (N, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> Split:
        return Split(self.name, self.images.to(device), self.labels.to(device))


def as_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 images (N, H, W) to the float (N, 1, H, W) in [0, 1] every model takes."""
    x = images.unsqueeze(1).to(torch.float32).div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _tensor(a: np.ndarray) -> torch.Tensor:
    # The cached arrays are read-only and shared: each split gets its own copy.
    return torch.from_numpy(np.array(a))


def load_split(
    split: str,
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    classes: Sequence[str] | None = None,
) -> Split:
    """One split of a dataset (see SPLITS), whole, on `device`. With `classes` (a model's),
    labels index those: a folder holding some of a model's classes (only the digits a person
    corrected, say) is measured or fine-tuned against all of them."""
    if split not in SPLITS:
        raise MnistlabError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    arrays = load_arrays(dataset, data_dir)
    if split == "test":
        images, labels = arrays.test_images, arrays.test_labels
    else:
        images, labels = arrays.train_images, arrays.train_labels
        cut = len(labels) - validation_size(len(labels))
        if split == "train":
            images, labels = images[:cut], labels[:cut]
        elif split == "validation":
            images, labels = images[cut:], labels[cut:]
    if len(labels) == 0:  # the files hold images (registry checks): only a validation split
        raise MnistlabError(  # of fewer than 12 training images can be empty
            f"the validation split of {arrays.source} is empty: it is the last twelfth of its "
            f"{len(arrays.train_labels)} training images; give at least 12 training images, or "
            'train without a validation split ([train] split = "train-full")'
        )
    if classes is not None and tuple(classes) != arrays.class_names:
        labels = _relabelled(labels, arrays.class_names, classes, arrays.source)
    return Split(split, _tensor(images), _tensor(labels)).to(device)


def _relabelled(labels: np.ndarray, names: Sequence[str], classes: Sequence[str],
                source: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise MnistlabError(f"{source}: classes the model does not have: "
                            f"{', '.join(unknown[:5])} (it has {', '.join(classes[:12])}"
                            f"{', ...' if len(classes) > 12 else ''})")
    return np.array([index[name] for name in names], dtype=np.int64)[labels]

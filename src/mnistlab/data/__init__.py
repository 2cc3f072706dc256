"""The data layer: IDX files, the dataset registry (MNIST shipped), checksums, splits."""

from mnistlab.data.download import DownloadError, download_file
from mnistlab.data.idx import IdxError, idx_bytes, read_idx, read_idx_and_md5, write_idx
from mnistlab.data.registry import (
    DATASETS,
    DatasetArrays,
    DatasetFile,
    DatasetSpec,
    FileCheck,
    FileStatus,
    cache_dir,
    dataset_status,
    get_spec,
    load_arrays,
    verify_dataset,
)
from mnistlab.data.splits import SPLITS, Split, load_split, validation_size

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetArrays",
    "DatasetFile",
    "DatasetSpec",
    "DownloadError",
    "FileCheck",
    "FileStatus",
    "IdxError",
    "Split",
    "cache_dir",
    "dataset_status",
    "download_file",
    "get_spec",
    "idx_bytes",
    "load_arrays",
    "load_split",
    "read_idx",
    "read_idx_and_md5",
    "validation_size",
    "verify_dataset",
    "write_idx",
]

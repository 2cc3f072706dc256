"""Keep the memory that a training step or a model call frees, so that the next one reuses it.

PyTorch's CPU tensors come from the C library's malloc, and glibc serves every block over a
threshold (128 KiB at first) with a fresh mmap, returned to the kernel when freed. A small
network's step allocates and frees the same few megabytes of activations and gradients every
time, so each step then faults in its pages anew: about 500 to 1,200 page faults a step of
`fast`, 6 to 11% of its training time on a 2-core CPU (docs/BENCHMARKS.md). Raising the mmap
threshold to glibc's maximum (32 MiB) and the trim threshold above it keeps those blocks in the
heap for reuse. What the process holds is then its peak, as with PyTorch's GPU allocator.
Inference gains as much: the shipped model answering batches of every size from 1 to 256 took
12.4 s with the default thresholds and 8.5 s with these (inference/predictor.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc refuses more on 64-bit systems
TRIM_THRESHOLD = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; False (and nothing changed) where the C
    library is not glibc (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own function: is this glibc?
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

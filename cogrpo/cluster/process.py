"""How every computing process starts (trainer, Ray actor, CLI command): torch's thread count, and glibc malloc's
reuse of freed memory."""

from __future__ import annotations

import ctypes

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters (malloc.h)
KEPT_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc malloc serve large blocks from its heap and keep what is freed (up to 1 GiB at the top), instead
    of an mmap() per large block and a munmap() per free. A training step allocates and frees the same large
    tensors every time; by default each one comes back as fresh pages that fault in again: half the smoke config's
    kernel time, and more in Ray actors (benchmarks/pipeline.py, BENCHMARKS.md). False where malloc is not glibc's."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEPT_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))


def configure_compute(threads: int) -> None:
    """What every computing process (trainer, Ray actor, CLI command) sets first: torch's thread count and
    malloc's reuse of freed memory."""
    torch.set_num_threads(threads)
    keep_freed_memory()


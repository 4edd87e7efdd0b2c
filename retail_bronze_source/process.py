"""Process-wide tuning for programs that own their process (the command line, the benchmark), never applied by the
library: a host process such as an Airflow worker keeps its own allocator settings."""

from __future__ import annotations

import ctypes
import gc
import sys

MALLOC_ARENAS = 2
MALLOC_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
"""glibc `mallopt` parameter numbers (malloc.h)."""


def tune_malloc() -> bool:
    """Make glibc's malloc give memory back: at most `MALLOC_ARENAS` arenas, and blocks of `MALLOC_MMAP_THRESHOLD`
    bytes or more mapped on their own. Returns False where there is no glibc (nothing to tune).

    By default each thread of the readers, DuckDB and DataFusion may get an arena of its own, and the mmap threshold
    grows with the largest block freed, so freed read buffers stay in the heap. It applies to the whole process, like
    `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_`.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # a libc without glibc's mallopt (musl)
    libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    return True


def freeze_imports() -> None:
    """Keep the objects alive now out of the cyclic garbage collector's full collections, for a program that has done
    its imports and then runs: the modules, classes and functions of dlt, DuckDB, pyarrow and deltalake (about 140k
    objects) are never garbage, and each full collection during a run would walk them all again."""
    gc.collect()
    gc.freeze()

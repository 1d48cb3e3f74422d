"""The worker's memory allocator settings: keep freed memory for the next batch.

Every batch allocates its outputs (an accepted item is ~1.3 KB: above pymalloc's 512
bytes, so glibc's ``malloc`` serves it) and frees them once they are delivered. With
glibc's defaults the heap's free top is returned to the kernel as soon as it passes
128 KiB, so the next batch faults fresh pages in again: measured, keeping 1,000
accepted items cost 2.4–3.5 µs each instead of 0.5–0.7 (bench/ANALYSIS.md, "Memory").
``M_TRIM_THRESHOLD`` keeps up to :data:`TRIM_THRESHOLD` bytes of free heap for reuse;
``M_MMAP_THRESHOLD`` serves a batch's larger numpy arrays from that heap too instead
of a fresh ``mmap`` each time. Setting either also turns off glibc's own adjustment
of these thresholds.

The cost is memory the worker keeps after a peak: at most :data:`TRIM_THRESHOLD` of
free heap. On a C library other than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: free heap kept for reuse, bytes (glibc's default: 128 KiB, adjusted upwards)
TRIM_THRESHOLD = 64 * 1024 * 1024
#: allocations at least this large get their own mapping (glibc's default: 128 KiB)
MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Apply the settings above to this process's ``malloc``; False where it is not
    glibc's (nothing changed)."""
    if platform.libc_ver()[0] != "glibc":  # musl's mallopt ignores these
        log.debug("malloc settings unchanged: the C library is not glibc")
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("malloc settings unchanged: no mallopt in the C library")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
    if not ok:
        log.warning("malloc settings: glibc refused mallopt; its defaults stay")
    return ok

"""Keeping a ZeRO-3 worker's C heap from holding memory it has freed (glibc).

Under ZeRO-3 a worker gathers and frees each layer's parameters over and over, and every forward
allocates and frees activations of about a megabyte each. glibc keeps freed heap blocks for reuse,
and a fragmented heap cannot give them back. Its default mmap threshold adapts upwards (to 32 MB)
as large blocks are freed, moving ever larger blocks into the heap: building a partitioned 0.27B
model left a worker holding 2.4x its partition. With the threshold fixed at 1 MiB, a 1B model's
forward on 2 workers still left 0.4-0.7 GB of freed blocks in the heap per step, memory no tensor
held; fixed at 128 KiB, anonymous memory follows the live tensors (bench/README.md).
On another C library both calls do nothing.
"""

from __future__ import annotations

import ctypes
from functools import cache

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's starting value, kept from adapting


@cache
def glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def return_freed_blocks() -> None:
    """Map every block of 128 KiB or more on its own, so that freeing it returns it."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_heap() -> None:
    """Return the free pages inside the heaps (the smaller blocks) to the system."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)

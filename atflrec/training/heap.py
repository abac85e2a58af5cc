"""Keeping a ZeRO-3 worker's C heap from holding memory it has freed (glibc).

Under ZeRO-3 a worker gathers and frees each layer's parameters over and over, and every step
allocates and frees its activations. glibc keeps freed blocks inside its heaps for reuse, and a
fragmented heap cannot give them back: building a partitioned 0.27B model left a worker holding
2.4x its partition, and training a 1B model on 2 workers grew each worker by 0.9-1.2 GB over the
partition in 2 steps (bench/zero3_memory.py), memory no tensor held (``malloc_trim`` returned it).
On another C library both calls do nothing.
"""

from __future__ import annotations

import ctypes
from functools import cache

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@cache
def glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def return_freed_blocks() -> None:
    """Map every block of 1 MiB or more on its own, so that freeing it returns it. glibc's default
    threshold adapts upwards (to 32 MB) and then serves a layer's gathered weights from its heap."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def trim_heap() -> None:
    """Return the free pages inside the heaps (smaller blocks: activations, gathered norms and
    adapters) to the system. Takes ~20 ms at a 1B model's heap: call it per optimizer step, not per
    micro-batch."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)

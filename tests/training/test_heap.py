"""The heap calls ZeRO-3 workers make, on this machine's C library (glibc)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atflrec.training.heap import glibc


def heap_after_freeing(trim: bool) -> dict[str, float]:
    """In a fresh process (mallopt changes a process for good): 200 MB in 512 KiB tensors, every
    tenth kept (the last too, so the heap's top cannot shrink by itself), the rest freed; the
    growth of anonymous memory (MB) after each."""
    script = f"""
import json
import torch
from atflrec.training.heap import return_freed_blocks, trim_heap

def anonymous_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon"))

return_freed_blocks()
before = anonymous_mb()
blocks = [torch.ones(128 * 1024) for _ in range(400)]  # 512 KiB each: heap blocks, under the 1 MiB threshold
allocated = anonymous_mb()
kept = [b for i, b in enumerate(blocks) if i % 10 == 9]
del blocks
freed = anonymous_mb()
if {trim}:
    trim_heap()
print(json.dumps({{"allocated": allocated - before, "freed": freed - before, "after": anonymous_mb() - before}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc() is None, reason="trimming is glibc's")
def test_trimming_gives_freed_heap_blocks_back_that_freeing_alone_keeps() -> None:
    untrimmed, trimmed = heap_after_freeing(trim=False), heap_after_freeing(trim=True)
    assert untrimmed["allocated"] > 150  # the blocks were in the heap (200 MB)
    assert untrimmed["after"] > 150, untrimmed  # freed, yet held: the kept blocks pin the heap
    assert trimmed["freed"] > 150, trimmed
    assert trimmed["after"] < 50, trimmed  # 20 MB are still in use

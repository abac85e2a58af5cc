"""The heap calls ZeRO-3 workers make, on this machine's C library (glibc): freed memory goes back
to the system with them and stays in the process without them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atflrec.training.heap import glibc

pytestmark = pytest.mark.skipif(glibc() is None, reason="these are glibc's settings")


def growth_after_freeing(block_kib: int, *, fixed_threshold: bool, trim: bool) -> dict[str, float]:
    """In a fresh process (mallopt changes a process for good): one 2 MiB block freed first (it
    raises glibc's adaptive mmap threshold, as a gathered layer does), then 200 MB in blocks of
    ``block_kib``, every tenth kept (the last too, so the heap's top cannot shrink by itself), the
    rest freed. The growth of anonymous memory (MB) once allocated and at the end."""
    script = f"""
import json
import torch
from atflrec.testing import memory_status
from atflrec.training.heap import return_freed_blocks, trim_heap

def anonymous_mb():
    return memory_status()["RssAnon"] / 2**20

if {fixed_threshold}:
    return_freed_blocks()
before = anonymous_mb()
torch.ones(512 * 1024).sum()  # allocated and freed
blocks = [torch.ones({block_kib} * 256) for _ in range(200 * 1024 // {block_kib})]
allocated = anonymous_mb()
kept = [b for i, b in enumerate(blocks) if i % 10 == 9]
del blocks
if {trim}:
    trim_heap()
print(json.dumps({{"allocated": allocated - before, "after": anonymous_mb() - before}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fixed_mmap_threshold_returns_freed_blocks_the_adaptive_one_keeps() -> None:
    adaptive = growth_after_freeing(512, fixed_threshold=False, trim=False)
    fixed = growth_after_freeing(512, fixed_threshold=True, trim=False)
    assert adaptive["allocated"] > 150 and fixed["allocated"] > 150
    assert adaptive["after"] > 150, adaptive  # freed, yet held in the heap
    assert fixed["after"] < 50, fixed  # 20 MB are still in use


def test_trimming_returns_freed_heap_blocks_below_the_threshold() -> None:
    untrimmed = growth_after_freeing(64, fixed_threshold=True, trim=False)
    trimmed = growth_after_freeing(64, fixed_threshold=True, trim=True)
    assert untrimmed["allocated"] > 150 and trimmed["allocated"] > 150
    assert untrimmed["after"] > 150, untrimmed
    assert trimmed["after"] < 50, trimmed

"""bench/gpu_check.sh fails clearly and at once where no GPU is present (this suite runs on CPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run bench/gpu_check.sh itself")
@pytest.mark.timeout(120)
def test_without_a_gpu_it_exits_2_with_the_reason_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 2, done.stderr
    assert "no CUDA device" in done.stderr
    assert not out.exists()

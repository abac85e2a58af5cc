"""bench/zero3_memory.py at its tiny size: a real 2-worker ZeRO-3 run, each worker's peak memory
sampled, and the result file with the keys the issue names."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench_scripts import load_script


def llama_params(hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Embedding and head (untied), per layer four attention and three MLP matrices and two norms, a final norm."""
    return 2 * vocab * hidden + layers * (4 * hidden**2 + 3 * hidden * intermediate + 2 * hidden) + hidden


def test_a_tiny_run_reports_each_workers_peak_beside_the_whole_model(tmp_path: Path) -> None:
    bench = load_script("zero3_memory")
    result = bench.run_benchmark("tiny", tmp_path / "work", interval=0.2)
    out = tmp_path / "results" / "zero3_memory.json"
    bench.write_result(result, out, note=None)

    written = json.loads(out.read_text())
    shape = bench.SIZES["tiny"]
    assert written["params"] == llama_params(shape.hidden, shape.layers, shape.intermediate, shape.vocab)
    assert written["full_model_gb"] == round(written["params"] * 4 / 1e9, 3)
    assert written["workers"] == 2
    peaks = written["peak_rss_gb_per_worker"]
    assert len(peaks) == len(written["peak_anon_gb_per_worker"]) == len(written["samples"]) == 2
    assert all(peak > 0.1 for peak in peaks)  # a worker is at least its Python, torch and Ray
    assert written["baseline"]["peak_rss_gb"] > 0.1
    assert written["settings"]["optimizer_steps_per_worker"] == 2
    assert all(math.isfinite(loss) for loss in written["losses"]["shared"])
    assert {"machine", "date", "versions"} <= set(written)
    assert out.with_suffix(".png").stat().st_size > 0


def test_the_1b_shape_has_about_a_billion_parameters() -> None:
    shape = load_script("zero3_memory").SIZES["1b"]
    assert 0.95e9 < llama_params(shape.hidden, shape.layers, shape.intermediate, shape.vocab) < 1.1e9

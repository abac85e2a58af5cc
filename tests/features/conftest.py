"""Helpers for the feature tests: deterministic test signals and tiny format-v1 datasets on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from atflrec.data.format import interactions_table, items_table, write_dataset

Tone = Callable[..., np.ndarray]
MakeDataset = Callable[[Path, dict[str, str]], Path]


def _tone(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Two tones plus noise band-limited below 7 kHz (so resampling to 16 kHz keeps all of it)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / sample_rate) > 7000] = 0
    noise = np.fft.irfft(spectrum, n)
    base = 220 * (1 + seed % 5)
    wave = 0.3 * np.sin(2 * np.pi * base * t) + 0.2 * np.sin(2 * np.pi * 2.7 * base * t) + 0.05 * noise / noise.std()
    return wave.astype(np.float32)


def _make_dataset(root: Path, audio_paths: dict[str, str]) -> Path:
    """A format-v1 dataset whose items are ``item_id -> audio_path``; the audio files are the caller's."""
    ids = list(audio_paths)
    items = items_table(ids, [f"title {i}" for i in ids], [["tag"] for _ in ids], list(audio_paths.values()))
    interactions = interactions_table(["u1"] * len(ids), ids, [1] * len(ids), list(range(len(ids))))
    return write_dataset(root, items, interactions)


@pytest.fixture(scope="session")
def tone() -> Tone:
    return _tone


@pytest.fixture(scope="session")
def make_dataset() -> MakeDataset:
    return _make_dataset

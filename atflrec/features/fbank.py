"""Kaldi Mel filter-bank features for several Mel-bin counts from one power spectrum.

The result equals ``torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=n, **KALDI_OPTIONS)``
for every ``n`` (all other options at torchaudio's defaults): 25 ms Povey-windowed frames every
10 ms, no dither, pre-emphasis 0.97, power spectrum, log Mel energies. Framing, windowing and the
FFT do not depend on the Mel-bin count, so they run once per clip; only the Mel matrix product
and the log run once per count. The Mel matrices are built once per process.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import cache

import torch
from torchaudio.compliance import kaldi

SAMPLE_RATE = 16000
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WINDOW_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400
SHIFT_SAMPLES = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160
MIN_MELS, MAX_MELS = 4, 256  # get_mel_banks needs > 3 bins; a 512-point FFT has 256 useful bins

# The options we set; everything else stays at torchaudio's defaults.
KALDI_OPTIONS: dict[str, float] = {
    "frame_length": FRAME_LENGTH_MS,
    "frame_shift": FRAME_SHIFT_MS,
    "dither": 0.0,
    "sample_frequency": float(SAMPLE_RATE),
}
# torchaudio's own defaults, read from its signature so the two can never disagree.
_OPTIONS = {
    name: param.default
    for name, param in inspect.signature(kaldi.fbank).parameters.items()
    if param.default is not inspect.Parameter.empty
} | KALDI_OPTIONS


def frame_count(samples: int) -> int:
    """Frames Kaldi computes for ``samples`` samples (``snip_edges``: whole frames only)."""
    return 0 if samples < WINDOW_SAMPLES else 1 + (samples - WINDOW_SAMPLES) // SHIFT_SAMPLES


def power_spectrum(wave: torch.Tensor) -> torch.Tensor:
    """Per-frame power spectrum ``(frames, padded_window // 2 + 1)`` of a mono 16 kHz wave.

    Uses torchaudio's own framing helpers (private, but pinned with torchaudio and checked by
    the equality tests) so that each step matches ``kaldi.fbank`` exactly.
    """
    o = _OPTIONS
    waveform, window_shift, window_size, padded_window_size = kaldi._get_waveform_and_window_properties(
        wave.reshape(1, -1), o["channel"], o["sample_frequency"], o["frame_shift"], o["frame_length"],
        o["round_to_power_of_two"], o["preemphasis_coefficient"],
    )
    frames, _ = kaldi._get_window(
        waveform, padded_window_size, window_size, window_shift, o["window_type"], o["blackman_coeff"],
        o["snip_edges"], o["raw_energy"], o["energy_floor"], o["dither"], o["remove_dc_offset"],
        o["preemphasis_coefficient"],
    )
    spectrum = torch.fft.rfft(frames).abs()
    return spectrum.pow(2.0) if o["use_power"] else spectrum


@cache
def _mel_banks(n_mels: int, padded_window_size: int) -> torch.Tensor:
    """Mel filters ``(n_mels, padded_window_size // 2 + 1)``, zero in the Nyquist column as in fbank."""
    o = _OPTIONS
    banks, _ = kaldi.get_mel_banks(
        n_mels, padded_window_size, o["sample_frequency"], o["low_freq"], o["high_freq"],
        o["vtln_low"], o["vtln_high"], o["vtln_warp"],
    )
    return torch.nn.functional.pad(banks, (0, 1), mode="constant", value=0)


def mel_features(spectrum: torch.Tensor, n_mels: Sequence[int]) -> dict[int, torch.Tensor]:
    """Log Mel energies ``(frames, n)`` for each count in ``n_mels`` from one power spectrum."""
    padded_window_size = 2 * (spectrum.shape[1] - 1)
    floor = torch.tensor(torch.finfo(spectrum.dtype).eps, dtype=spectrum.dtype)
    return {n: torch.max(torch.mm(spectrum, _mel_banks(n, padded_window_size).T), floor).log() for n in n_mels}


def multi_fbank(wave: torch.Tensor, n_mels: Sequence[int]) -> dict[int, torch.Tensor]:
    """``kaldi.fbank`` of a mono 16 kHz float32 wave for every count in ``n_mels``, in one pass."""
    return mel_features(power_spectrum(wave), n_mels)

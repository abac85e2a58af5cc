"""#18 findings 2 and 8: hostile audio costs no more than a normal clip and is refused with a reason.

Sample-rate range, declared duration checked from the header before decoding, crop before
resampling (only the crop's frames are decoded), a bounded resampling kernel, and files that are
not regular files; the same code path serves the feature store and uploads.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torchaudio
from torchaudio.compliance import kaldi

from atflrec.features import audio
from atflrec.features.audio import REASONS, BadAudio, decode, read_regular_file, resample_terms
from atflrec.features.clip import featurise_file, featurise_samples
from atflrec.features.pipeline import FeatureConfig, _process_item

N_MELS = [40, 80]
# torchaudio's kernel for a reduced ratio orig -> new has new * (orig + 2 * width) elements; the
# bound below is what the largest allowed approximation needs (about 2.1 M, 16 MB as float64).
# 16001 -> 16000 Hz exactly would need 16000 x 16015 (256 M elements, 2 GiB as float64).
KERNEL_BOUND = 2_200_000


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def sines(seconds: float, rate: int, top: float = 6500) -> np.ndarray:
    """The same continuous signal sampled at any rate: 60 sines from 30 Hz to ``top``."""
    rng = np.random.default_rng(7)
    freqs = np.geomspace(30, top, 60)
    phases, amps = rng.uniform(0, 2 * np.pi, 60), rng.uniform(0.2, 1.0, 60)
    t = np.arange(int(round(seconds * rate))) / rate
    wave = sum(a * np.sin(2 * np.pi * f * t + p) for f, p, a in zip(freqs, phases, amps))
    return (0.5 * wave / amps.sum()).astype(np.float32)


def kernel_elements(orig: int, new: int) -> int:
    """torchaudio's sinc kernel size for resample(x, orig, new), computed independently."""
    gcd = math.gcd(orig, new)
    orig, new = orig // gcd, new // gcd
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    return new * (orig + 2 * width)


@pytest.fixture
def resample_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Records every torchaudio resample as (orig, new, input samples); refuses, without
    allocating it, a kernel over KERNEL_BOUND (the old code built GiB kernels for odd rates)."""
    calls: list[tuple[int, int, int]] = []
    real = torchaudio.functional.resample

    def guarded(waveform, orig_freq, new_freq, *args, **kwargs):
        calls.append((int(orig_freq), int(new_freq), int(waveform.shape[-1])))
        elements = kernel_elements(int(orig_freq), int(new_freq))
        assert elements <= KERNEL_BOUND, f"resample {orig_freq} -> {new_freq} Hz builds a {elements:,}-element kernel"
        return real(waveform, orig_freq, new_freq, *args, **kwargs)

    monkeypatch.setattr(torchaudio.functional, "resample", guarded)
    return calls


def close_below(top: float, a: np.ndarray, b: np.ndarray, n: int) -> tuple[float, float]:
    """Mean and largest difference over the Mel bands centred below ``top`` Hz."""
    _, centres = kaldi.get_mel_banks(n, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    keep = (centres.squeeze(1) < top).numpy()
    diff = np.abs(a - b)[:, keep]
    return float(diff.mean()), float(diff.max())


@pytest.mark.parametrize("rate", [16001, 44101, 22051, 8003, 191999])
def test_odd_sample_rates_use_a_bounded_kernel_and_match_the_16k_reference(resample_calls, rate: int) -> None:
    top = min(6500, 0.4 * rate)  # below the source's Nyquist frequency and the resampler's roll-off
    reference = featurise_file(encode(sines(3.0, 16000, top), 16000), ".wav", N_MELS, clip_seconds=2.0)
    got = featurise_file(encode(sines(3.0, rate, top), rate), ".wav", N_MELS, clip_seconds=2.0)
    assert got.n_frames == reference.n_frames == 198
    for orig, new, length in resample_calls:
        assert kernel_elements(orig, new) <= KERNEL_BOUND
        assert length < 2.5 * rate  # crop before resampling: the 2 s kept and filter margins, not 3 s
    for n in N_MELS:
        mean, peak = close_below(top, got.features[n], reference.features[n], n)
        assert mean < 0.05 and peak < 0.5, (rate, n, mean, peak)


def test_the_rate_approximation_is_within_a_tenth_of_a_percent() -> None:
    for rate in range(audio.MIN_SAMPLE_RATE, audio.MAX_SAMPLE_RATE + 1, 7):
        orig, new = resample_terms(rate)
        assert abs(new / orig * rate / 16000 - 1) < 1e-3, rate
        assert kernel_elements(orig, new) <= KERNEL_BOUND, rate
    # Every common rate keeps its exact ratio (features of normal clips are unchanged).
    for rate in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000):
        orig, new = resample_terms(rate)
        assert new * rate == orig * 16000, rate


@pytest.mark.parametrize("rate", [1, 100, 7999, 192001])
def test_sample_rates_out_of_range_are_refused(resample_calls, rate: int) -> None:
    samples = np.random.default_rng(0).normal(0, 0.1, max(rate * 4, 64)).astype(np.float32)
    with pytest.raises(BadAudio) as caught:
        featurise_file(encode(samples, rate), ".wav", N_MELS, clip_seconds=2.0)
    assert caught.value.reason == "sample-rate" and str(rate) in caught.value.detail
    with pytest.raises(BadAudio) as caught:
        featurise_samples(samples, rate, N_MELS, clip_seconds=2.0)
    assert caught.value.reason == "sample-rate"
    assert not resample_calls and "sample-rate" in REASONS


def flac_declaring(seconds: float) -> bytes:
    """A one-second FLAC whose STREAMINFO claims ``seconds`` of audio (36-bit total-samples field)."""
    data = encode(sines(1.0, 16000), 16000, fmt="FLAC", subtype="PCM_16")
    assert data[:4] == b"fLaC"
    bits = int.from_bytes(data[18:26], "big")
    bits = (bits & ~((1 << 36) - 1)) | int(seconds * 16000)
    return data[:18] + bits.to_bytes(8, "big") + data[26:]


def test_a_header_declaring_hours_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file whose header is over the limit")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(BadAudio) as caught:
        featurise_file(flac_declaring(10 * 3600), ".flac", N_MELS, clip_seconds=2.0)
    assert caught.value.reason == "too-long" and "36000.0 s" in caught.value.detail
    assert "too-long" in REASONS


def test_a_constant_flac_bomb_is_refused_or_only_its_crop_decoded() -> None:
    bomb = encode(np.full(700 * 8000, 0.25, np.float32), 8000, fmt="FLAC", subtype="PCM_16")
    assert len(bomb) < 40_000  # 700 s: decoded it would be 1000x the file
    with pytest.raises(BadAudio) as caught:
        featurise_file(bomb, ".flac", N_MELS, clip_seconds=2.0)  # the default limit is 600 s
    assert caught.value.reason == "too-long"
    with pytest.raises(BadAudio, match="too-long"):
        featurise_file(bomb, ".flac", N_MELS, clip_seconds=2.0, max_seconds=60)
    # Allowed a longer limit, only the frames of the centre crop are decoded.
    decoded = decode(bomb, ".flac", clip_samples=32000, max_seconds=800)
    assert decoded.total == 700 * 8000 and len(decoded.samples) < 2.1 * 8000
    assert decoded.start > 300 * 8000  # the centre
    assert featurise_file(bomb, ".flac", N_MELS, clip_seconds=2.0, max_seconds=800).n_frames == 198


def test_too_many_channels_are_refused() -> None:
    samples = np.random.default_rng(0).normal(0, 0.1, (16000, 33)).astype(np.float32)
    with pytest.raises(BadAudio) as caught:
        featurise_file(encode(samples, 16000), ".wav", N_MELS, clip_seconds=1.0)
    assert caught.value.reason == "channels" and "channels" in REASONS


def test_max_audio_seconds_is_a_feature_config_key() -> None:
    assert FeatureConfig().max_audio_seconds == 600.0 and FeatureConfig().max_audio_bytes == 2 * 1024**3
    assert FeatureConfig(max_audio_seconds=30).max_audio_seconds == 30.0
    with pytest.raises(ValueError, match="max_audio_seconds"):
        FeatureConfig(max_audio_seconds=0)


def test_a_file_over_max_audio_bytes_is_quarantined_unread(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "big.wav").write_bytes(encode(sines(1.0, 16000), 16000))
    outcome = _process_item("audio/big.wav", "", str(tmp_path), N_MELS, 1.0, max_bytes=1000)
    assert (outcome.status, outcome.reason) == ("quarantined", "too-large") and "too-large" in REASONS
    assert _process_item("audio/big.wav", "", str(tmp_path), N_MELS, 1.0).status == "featurised"


@pytest.mark.timeout(60)
def test_a_fifo_named_wav_is_quarantined_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    os.mkfifo(tmp_path / "audio" / "x.wav")
    outcome = _process_item("audio/x.wav", "", str(tmp_path), N_MELS, 1.0)
    assert (outcome.status, outcome.reason) == ("quarantined", "not-a-file")
    assert "FIFO" in outcome.detail and "not-a-file" in REASONS
    with pytest.raises(BadAudio, match="not-a-file"):
        read_regular_file(tmp_path / "audio")  # a directory is not read either
    outcome = _process_item("audio", "", str(tmp_path), N_MELS, 1.0)
    assert outcome.reason == "not-a-file"


def test_ffmpeg_decoding_is_bounded_by_max_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MP3/MP4/M4A: ffmpeg is told to stop after max_seconds + 1 s (-t), and more than max_seconds
    of output is too-long. A stand-in ffmpeg records its arguments and writes 11 s of float32."""
    args = tmp_path / "args.txt"
    fake = tmp_path / "ffmpeg"
    fake.write_text(f'#!/bin/sh\necho "$@" > {args}\n{shutil.which("head")} -c {11 * 16000 * 4} /dev/zero\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BadAudio) as caught:
        featurise_file(b"ID3 pretend mp3", ".mp3", N_MELS, clip_seconds=2.0, max_seconds=10)
    assert caught.value.reason == "too-long"
    assert " -t 11.000 " in f" {args.read_text().strip()} "

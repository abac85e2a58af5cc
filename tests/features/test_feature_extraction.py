"""One clip to features, without Ray: equality with torchaudio, crop/pad, resampling, bad audio."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from torchaudio.compliance import kaldi

from atflrec.config import ConfigError, load_config
from atflrec.features.audio import REASONS, BadAudio
from atflrec.features.clip import featurise_file, featurise_samples
from atflrec.features.fbank import KALDI_OPTIONS, multi_fbank
from atflrec.features.pipeline import FeatureConfig

N_MELS = [40, 64, 80, 128]


def wav_bytes(samples: np.ndarray, sample_rate: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def reference(wave: np.ndarray, n_mels: int) -> np.ndarray:
    """torchaudio's fbank with the project's options, for comparison."""
    return kaldi.fbank(torch.from_numpy(wave).unsqueeze(0), num_mel_bins=n_mels, **KALDI_OPTIONS).numpy()


def test_one_pass_equals_torchaudio_fbank_for_every_mel_count(tone) -> None:
    wave = torch.from_numpy(tone(1.3, seed=1))
    features = multi_fbank(wave, N_MELS)
    assert sorted(features) == N_MELS
    for n in N_MELS:
        expected = kaldi.fbank(wave.unsqueeze(0), num_mel_bins=n, **KALDI_OPTIONS)
        assert torch.equal(features[n], expected), n


def test_long_clip_keeps_its_centre(tone) -> None:
    wave = tone(3.0, seed=2)
    data = wav_bytes(wave, subtype="FLOAT")
    result = featurise_file(data, ".wav", N_MELS, clip_seconds=2.0)
    centre = wave[8000:40000]  # 3 s at 16 kHz, the middle 2 s
    assert result.n_frames == 198
    for n in N_MELS:
        np.testing.assert_array_equal(result.features[n], reference(centre, n))


def test_short_clip_is_padded_at_the_end_and_counts_its_real_frames(tone) -> None:
    wave = tone(0.5, seed=3)
    result = featurise_samples(wave, 16000, [40], clip_seconds=1.0)
    assert result.features[40].shape == (98, 40)
    assert result.n_frames == 48
    # Frames of real audio equal fbank of the unpadded clip (framing and DC removal are per frame).
    np.testing.assert_array_equal(result.features[40][:48], reference(wave, 40))


def test_stereo_44k_matches_its_mono_16k_version(tone) -> None:
    mono = tone(2.0, seed=4)
    up = torchaudio.functional.resample(torch.from_numpy(mono), 16000, 44100).numpy()
    stereo = np.stack([1.2 * up, 0.8 * up], axis=1)  # averages back to the mono signal
    a = featurise_file(wav_bytes(mono), ".wav", N_MELS, clip_seconds=2.0)
    b = featurise_file(wav_bytes(stereo, 44100), ".wav", N_MELS, clip_seconds=2.0)
    assert a.n_frames == b.n_frames == 198
    for n in N_MELS:
        # Resampling's anti-alias roll-off starts near 7.9 kHz: compare the bands below 6.5 kHz.
        _, centres = kaldi.get_mel_banks(n, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
        keep = (centres.squeeze(1) < 6500).numpy()
        diff = np.abs(a.features[n] - b.features[n])[:, keep]
        assert diff.mean() < 0.05 and diff.max() < 0.5, (n, diff.mean(), diff.max())


def _truncated_wav(tone) -> bytes:
    data = wav_bytes(tone(1.0))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("kind", "suffix", "reason"),
    [
        ("empty", ".wav", "empty"),
        ("corrupt", ".wav", "unreadable"),
        ("corrupt", ".flac", "unreadable"),
        ("truncated", ".wav", "truncated"),
        ("tiny", ".wav", "too-short"),
        ("silent", ".wav", "silent"),
        ("nan", ".wav", "non-finite"),
        ("inf", ".wav", "non-finite"),
        ("text", ".txt", "unsupported-format"),
        ("text", ".xyz", "unsupported-format"),
    ],
)
def test_bad_audio_raises_its_reason(tone, kind: str, suffix: str, reason: str) -> None:
    wave = tone(1.0)
    nan_wave, inf_wave = wave.copy(), wave.copy()
    nan_wave[100] = np.nan
    inf_wave[200] = np.inf
    data = {
        "empty": b"",
        "corrupt": b"this is not audio at all " * 40,
        "truncated": _truncated_wav(tone),
        "tiny": wav_bytes(wave[:300]),
        "silent": wav_bytes(np.zeros(16000, np.float32)),
        "nan": wav_bytes(nan_wave, subtype="FLOAT"),
        "inf": wav_bytes(inf_wave, subtype="FLOAT"),
        "text": b"just some notes\n",
    }[kind]
    with pytest.raises(BadAudio) as caught:
        featurise_file(data, suffix, [40], clip_seconds=1.0)
    assert caught.value.reason == reason
    assert reason in REASONS


def test_mp3_without_ffmpeg_says_ffmpeg_is_needed(tone, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no ffmpeg to find
    with pytest.raises(BadAudio) as caught:
        featurise_file(wav_bytes(tone(1.0), fmt="MP3", subtype="MPEG_LAYER_III"), ".mp3", [40], 1.0)
    assert caught.value.reason == "needs-ffmpeg"
    assert "ffmpeg" in caught.value.detail


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_mp3_decodes_through_ffmpeg_close_to_the_wav(tone) -> None:
    wave = tone(2.0, seed=5)
    mp3 = featurise_file(wav_bytes(wave, fmt="MP3", subtype="MPEG_LAYER_III"), ".mp3", [80], 1.0)
    wav = featurise_file(wav_bytes(wave), ".wav", [80], 1.0)
    # Lossy coding and encoder delay shift things a little; the spectra stay close on average.
    assert mp3.features[80].shape == wav.features[80].shape
    assert np.abs(mp3.features[80] - wav.features[80]).mean() < 1.0


def test_feature_config_defaults_and_errors_name_the_key() -> None:
    config = load_config(FeatureConfig, overrides=["n_mels=[128,40,40]"])
    assert config.n_mels == [40, 128] and config.clip_seconds == 4.0 and config.address is None
    with pytest.raises(ConfigError, match="n_mels"):
        load_config(FeatureConfig, overrides=["n_mels=[2]"])
    with pytest.raises(ConfigError, match="clip_seconds"):
        load_config(FeatureConfig, overrides=["clip_seconds=0"])
    with pytest.raises(ConfigError, match="n_mel: unknown key"):
        load_config(FeatureConfig, overrides=["n_mel=[40]"])

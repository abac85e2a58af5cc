"""Decode one audio file and bring it to what the features expect: mono, 16 kHz, fixed length.

Decoding: soundfile for WAV, FLAC, OGG/Opus and AIFF; ffmpeg for MP3, MP4 and M4A when
``ffmpeg`` is on PATH (it also down-mixes and resamples those to mono 16 kHz). Other
extensions are unsupported.

Preparation (:func:`prepare`): reject non-finite samples, down-mix by averaging the channels,
resample to 16 kHz with torchaudio, then crop or pad to the clip length:

* a clip **longer** than the clip length keeps its **centre** (intros and fade-outs are the least
  typical part of a track);
* a **shorter** clip is zero-padded at the end; ``valid_samples`` says how much is real audio so
  readers can ignore the padded frames.

Every problem raises :class:`BadAudio` with a short reason code (``REASONS``) and a detail; the
pipeline quarantines the item with both. **Silence policy**: a clip whose kept segment never
exceeds one 16-bit step (2**-15) in magnitude is quarantined as ``silent`` -- its features would be
the constant log floor everywhere and tell a model nothing.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

from atflrec.features.fbank import SAMPLE_RATE, WINDOW_SAMPLES

SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff"})
FFMPEG_SUFFIXES = frozenset({".mp3", ".mp4", ".m4a"})
SILENCE_PEAK = 2.0**-15
FFMPEG_TIMEOUT_S = 120

# Every quarantine reason of the feature stage, with what it means. The pipeline sets the first
# two and "failed" itself; the rest come from BadAudio raised here.
REASONS: dict[str, str] = {
    "missing": "the audio file does not exist",
    "unsafe-path": "audio_path is absolute, contains '..' or resolves outside the dataset (symlink)",
    "unsupported-format": "the file extension is not a format we decode",
    "needs-ffmpeg": "MP3/MP4/M4A need ffmpeg, which is not on PATH",
    "empty": "zero-byte file",
    "unreadable": "the decoder rejected the file (corrupt or not audio), or it could not be read",
    "truncated": "the file ends before the audio its header declares",
    "non-finite": "NaN or infinite samples",
    "too-short": "shorter than one 25 ms analysis frame",
    "silent": "the kept segment is digital silence (peak <= one 16-bit step)",
    "failed": "decoding or featurising raised an unexpected error (the detail names it)",
}


class BadAudio(Exception):
    """A clip that cannot be featurised; ``reason`` is a key of ``REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Clip:
    """A prepared clip: mono 16 kHz float32 of exactly the clip length."""

    wave: torch.Tensor
    valid_samples: int


def decode(data: bytes, suffix: str) -> tuple[np.ndarray, int]:
    """Decode file bytes to float32 samples ``(channels, samples)`` and their sample rate."""
    suffix = suffix.lower()
    if suffix not in SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES:
        supported = ", ".join(sorted(SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES))
        raise BadAudio("unsupported-format", f"{suffix or 'no extension'!r} is not one of {supported}")
    if not data:
        raise BadAudio("empty", "zero-byte file")
    if suffix in FFMPEG_SUFFIXES:
        return _decode_ffmpeg(data, suffix)
    if suffix in {".wav", ".wave"}:
        problem = _wav_truncation(data)
        if problem:
            raise BadAudio("truncated", problem)
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile reports corrupt input through several exception types
        raise BadAudio("unreadable", f"{type(exc).__name__}: {exc}") from None
    return np.ascontiguousarray(samples.T), int(rate)


def _wav_truncation(data: bytes) -> str | None:
    """A message if a RIFF/WAVE file's data chunk is cut short (libsndfile reads such files silently)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None  # not RIFF: soundfile decides
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF):  # streamed WAV: length left unknown by the writer
                return None
            held = len(data) - pos - 8
            return f"data chunk declares {size} bytes but the file holds {held}" if held < size else None
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return None  # no data chunk: soundfile reports that


def _decode_ffmpeg(data: bytes, suffix: str) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise BadAudio("needs-ffmpeg", f"decoding {suffix} needs ffmpeg, which is not on PATH (install ffmpeg)")
    # A file, not a pipe: MP4/M4A may keep their index at the end, which a pipe cannot seek to.
    with tempfile.NamedTemporaryFile(suffix=suffix) as source:
        source.write(data)
        source.flush()
        command = [ffmpeg, "-nostdin", "-v", "error", "-i", source.name, "-map", "0:a:0",
                   "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
        try:
            done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise BadAudio("unreadable", f"ffmpeg did not finish within {FFMPEG_TIMEOUT_S} s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise BadAudio("unreadable", f"ffmpeg failed: {message[-1] if message else done.returncode}")
    return np.frombuffer(done.stdout, dtype="<f4").astype(np.float32).reshape(1, -1), SAMPLE_RATE


def prepare(samples: np.ndarray, sample_rate: int, clip_samples: int) -> Clip:
    """Check, down-mix, resample to 16 kHz and crop (centre) or pad (end) to ``clip_samples``."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None, :]
    bad = int(samples.size - np.isfinite(samples).sum())
    if bad:
        raise BadAudio("non-finite", f"{bad} NaN or infinite sample(s)")
    wave = torch.from_numpy(samples.mean(axis=0))
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, sample_rate, SAMPLE_RATE)
    if wave.numel() < WINDOW_SAMPLES:
        raise BadAudio("too-short", f"{wave.numel()} samples at 16 kHz; one frame needs {WINDOW_SAMPLES}")
    valid = min(wave.numel(), clip_samples)
    if wave.numel() > clip_samples:
        start = (wave.numel() - clip_samples) // 2
        wave = wave[start : start + clip_samples]
    elif wave.numel() < clip_samples:
        wave = torch.nn.functional.pad(wave, (0, clip_samples - wave.numel()))
    peak = float(wave.abs().max())
    if peak <= SILENCE_PEAK:
        raise BadAudio("silent", f"peak amplitude {peak:.2e} in the kept segment")
    return Clip(wave=wave.contiguous(), valid_samples=valid)

"""Decode one audio file and bring it to what the features expect: mono, 16 kHz, fixed length.

Decoding: soundfile for WAV, FLAC, OGG/Opus and AIFF; ffmpeg for MP3, MP4 and M4A when
``ffmpeg`` is on PATH (it also down-mixes and resamples those to mono 16 kHz). Other
extensions are unsupported.

Preparation: reject non-finite samples, down-mix by averaging the channels, resample to 16 kHz
with torchaudio, then crop or pad to the clip length:

* a clip **longer** than the clip length keeps its **centre** (intros and fade-outs are the least
  typical part of a track);
* a **shorter** clip is zero-padded at the end; ``valid_samples`` says how much is real audio so
  readers can ignore the padded frames.

**Bounds** (the same for the offline feature store and serving uploads; hostile files must not
cost more than a normal clip):

* the header is read first (``soundfile``'s info: sample rate, frames, channels) and the file is
  refused before any decoding when its sample rate lies outside ``MIN_SAMPLE_RATE`` ..
  ``MAX_SAMPLE_RATE`` (8000 .. 192000 Hz: ``sample-rate``), it has more than ``MAX_CHANNELS``
  channels (``channels``) or it declares more than ``max_seconds`` of audio (``too-long``;
  ``max_audio_seconds`` in the feature config and the serving limits, default 600 s);
* **crop before resampling**: only the source frames that the centre crop needs (plus the
  resampling filter's reach) are decoded, block by block, down-mixed as they are read, so memory
  and time are bounded by the clip length, not by the file;
* **bounded resampling kernel**: torchaudio's sinc kernel has ``new x (orig + 2 * width)``
  elements for the rate ratio ``orig/new`` reduced by its gcd, so 16001 -> 16000 Hz would need a
  16000 x 16013 kernel (GiBs). Every common rate (8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 88.2, 96,
  176.4, 192 kHz...) reduces to small terms and is resampled exactly as before; a rate whose
  reduced terms exceed ``MAX_RESAMPLE_TERM`` (1000 for orig, twice that for new) is resampled with
  the nearest ratio whose denominator is at most 1000 (``Fraction.limit_denominator``): at most
  ~2.1 M kernel elements, and a pitch/tempo error below 0.06 % over the whole allowed range
  (16001 Hz is read as 16000 Hz: 0.006 %);
* ffmpeg (MP3/MP4/M4A) decodes at most ``max_seconds`` plus one second (``-t``), under a timeout;
  anything longer is ``too-long``;
* a path that is not a regular file (FIFO, device, directory) is refused before it is read
  (``not-a-file``, see :func:`read_regular_file`): reading a FIFO would block for ever; offline, a
  file over ``max_audio_bytes`` (default 2 GiB) is refused unread (``too-large``; serving has its
  own ``limits.max_audio_bytes``, answered 413).

Every problem raises :class:`BadAudio` with a short reason code (``REASONS``) and a detail; the
pipeline quarantines the item with both and serving answers 422 naming the ``audio`` field.
**Silence policy**: a clip whose kept segment never exceeds one 16-bit step (2**-15) in magnitude
is quarantined as ``silent`` -- its features would be the constant log floor everywhere and tell
a model nothing.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from atflrec.features.fbank import SAMPLE_RATE, WINDOW_SAMPLES

SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff"})
FFMPEG_SUFFIXES = frozenset({".mp3", ".mp4", ".m4a"})
SILENCE_PEAK = 2.0**-15
FFMPEG_TIMEOUT_S = 120
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 32
MAX_AUDIO_SECONDS = 600.0  # default of max_audio_seconds (feature config and serving limits)
MAX_AUDIO_BYTES = 2 * 1024**3  # default of the feature config's max_audio_bytes (serving has its own)
MAX_RESAMPLE_TERM = 1000  # largest reduced source term of an exact resampling ratio (see the docstring)
LOWPASS_FILTER_WIDTH, ROLLOFF = 6, 0.99  # torchaudio.functional.resample's defaults, used as they are
READ_BLOCK_FRAMES = 1 << 16

# Every quarantine reason of the feature stage, with what it means. The pipeline sets "missing",
# "unsafe-path" and "failed" itself; the rest come from BadAudio raised here.
REASONS: dict[str, str] = {
    "missing": "the audio file does not exist",
    "unsafe-path": "audio_path is absolute, contains '..' or resolves outside the dataset (symlink)",
    "not-a-file": "the audio path is not a regular file (FIFO, device, directory); it is never read",
    "unsupported-format": "the file extension is not a format we decode",
    "needs-ffmpeg": "MP3/MP4/M4A need ffmpeg, which is not on PATH",
    "empty": "zero-byte file",
    "unreadable": "the decoder rejected the file (corrupt or not audio), or it could not be read",
    "truncated": "the file ends before the audio its header declares",
    "sample-rate": f"sample rate outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz",
    "channels": f"more than {MAX_CHANNELS} channels",
    "too-long": "declares (or decodes to) more than max_audio_seconds of audio; refused before decoding",
    "too-large": "the file is larger than max_audio_bytes; refused before reading",
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


@dataclass(frozen=True)
class Decoded:
    """Mono float32 ``samples`` of frames ``[start, start + len(samples))`` of a stream of ``total``
    frames at ``sample_rate``: only the part the centre crop needs when the clip length was given."""

    samples: np.ndarray
    sample_rate: int
    start: int
    total: int


@dataclass(frozen=True)
class _Window:
    """What to read and how to resample: source frames ``[src_start, src_stop)`` resampled with the
    reduced ratio ``orig -> new`` give output ``[offset, offset + kept)`` = the kept segment."""

    orig: int
    new: int
    kept: int
    src_start: int
    src_stop: int
    offset: int


def read_regular_file(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file (``not-a-file``) without blocking:
    opened non-blocking (a FIFO opens at once instead of waiting for a writer), then checked with
    fstat on the open descriptor; a file over ``max_bytes`` is ``too-large``, unread.
    ``FileNotFoundError``/``OSError`` pass through."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise BadAudio("not-a-file", f"{Path(path).name} is {kind}")
    with open(fd, "rb", closefd=True) as handle:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise BadAudio("too-large", f"{size} bytes; at most max_audio_bytes = {max_bytes}")
        data = handle.read(max_bytes + 1) if max_bytes is not None else handle.read()
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise BadAudio("too-large", f"more than max_audio_bytes = {max_bytes} bytes")
    return data


def resample_terms(sample_rate: int) -> tuple[int, int]:
    """The reduced ratio ``(orig, new)`` torchaudio resamples ``sample_rate`` -> 16 kHz with:
    exact when small, else the nearest ratio with ``orig <= MAX_RESAMPLE_TERM`` (module docstring)."""
    gcd = math.gcd(sample_rate, SAMPLE_RATE)
    orig, new = sample_rate // gcd, SAMPLE_RATE // gcd
    if orig > MAX_RESAMPLE_TERM or new > 2 * MAX_RESAMPLE_TERM:
        ratio = Fraction(SAMPLE_RATE, sample_rate).limit_denominator(MAX_RESAMPLE_TERM)
        orig, new = ratio.denominator, max(ratio.numerator, 1)
    return orig, new


def _filter_width(orig: int, new: int) -> int:
    """torchaudio's sinc filter reach, in source frames, for the reduced ratio ``orig -> new``."""
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))


def _check_format(sample_rate: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise BadAudio("sample-rate", f"{sample_rate} Hz; supported {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadAudio("channels", f"{channels} channels; at most {MAX_CHANNELS}")


def _window(total: int, sample_rate: int, clip_samples: int) -> _Window:
    """The source frames the centre crop needs: the 16 kHz stream has ``n16`` samples, of which the
    centre ``kept`` are kept; they depend on source frames within the filter's reach of their span.
    The window starts on a multiple of ``orig`` so its output grid is the whole stream's."""
    orig, new = resample_terms(sample_rate)
    n16 = -(-new * total // orig)  # torchaudio's output length: ceil(new * total / orig)
    kept = min(n16, clip_samples)
    if kept < WINDOW_SAMPLES:
        raise BadAudio("too-short", f"{n16} samples at 16 kHz; one frame needs {WINDOW_SAMPLES}")
    first = (n16 - kept) // 2
    if orig == new:
        return _Window(1, 1, kept, first, first + kept, 0)
    # Output j comes from filter frame j // new, which reads source [f*orig - width, f*orig + orig + width).
    width = _filter_width(orig, new)
    src_start = max(0, first // new - -(-width // orig)) * orig
    src_stop = min(total, ((first + kept - 1) // new + 1) * orig + width)
    return _Window(orig, new, kept, src_start, src_stop, first - src_start // orig * new)


def _read_window(handle: sf.SoundFile, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` down-mixed to mono as they are read (block by block: memory is the
    mono window plus one block); refuses non-finite samples and a stream that ends early."""
    out = np.empty(stop - start, np.float32)
    got = bad = 0
    if start:
        handle.seek(start)
    while got < len(out):
        block = handle.read(min(READ_BLOCK_FRAMES, len(out) - got), dtype="float32", always_2d=True)
        if not len(block):
            break
        bad += int(block.size - np.isfinite(block).sum())
        out[got : got + len(block)] = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        got += len(block)
    if bad:
        raise BadAudio("non-finite", f"{bad} NaN or infinite sample(s)")
    if got < len(out):
        raise BadAudio("truncated",
                       f"the header declares {handle.frames} frames; frame {start + got} could not be read")
    return out


def decode(data: bytes, suffix: str, clip_samples: int | None = None,
           max_seconds: float = MAX_AUDIO_SECONDS) -> Decoded:
    """Decode file bytes to mono float32 within the bounds (module docstring): only the frames the
    centre crop of ``clip_samples`` (at 16 kHz) needs, or every frame when it is None."""
    suffix = suffix.lower()
    if suffix not in SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES:
        supported = ", ".join(sorted(SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES))
        raise BadAudio("unsupported-format", f"{suffix or 'no extension'!r} is not one of {supported}")
    if not data:
        raise BadAudio("empty", "zero-byte file")
    if suffix in FFMPEG_SUFFIXES:
        return _decode_ffmpeg(data, suffix, max_seconds)
    if suffix in {".wav", ".wave"}:
        problem = _wav_truncation(data)
        if problem:
            raise BadAudio("truncated", problem)
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # libsndfile reports corrupt input through several exception types
        raise BadAudio("unreadable", f"{type(exc).__name__}: {exc}") from None
    with handle:
        rate, total, channels = int(handle.samplerate), int(handle.frames), int(handle.channels)
        _check_format(rate, channels)
        if total > max_seconds * rate:
            raise BadAudio("too-long", f"the header declares {total / rate:.1f} s ({total} frames at {rate} Hz); "
                                       f"at most max_audio_seconds = {max_seconds:g} s")
        start, stop = 0, total
        if clip_samples is not None:
            window = _window(total, rate, clip_samples)
            start, stop = window.src_start, window.src_stop
        try:
            samples = _read_window(handle, start, stop)
        except BadAudio:
            raise
        except Exception as exc:
            raise BadAudio("unreadable", f"{type(exc).__name__}: {exc}") from None
    return Decoded(samples, rate, start, total)


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


def _decode_ffmpeg(data: bytes, suffix: str, max_seconds: float) -> Decoded:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise BadAudio("needs-ffmpeg", f"decoding {suffix} needs ffmpeg, which is not on PATH (install ffmpeg)")
    # A file, not a pipe: MP4/M4A may keep their index at the end, which a pipe cannot seek to.
    # -t bounds the decoded length (and the bytes read back) to max_seconds plus one second.
    with tempfile.NamedTemporaryFile(suffix=suffix) as source:
        source.write(data)
        source.flush()
        command = [ffmpeg, "-nostdin", "-v", "error", "-i", source.name, "-map", "0:a:0",
                   "-ac", "1", "-ar", str(SAMPLE_RATE), "-t", f"{max_seconds + 1:.3f}", "-f", "f32le", "pipe:1"]
        try:
            done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise BadAudio("unreadable", f"ffmpeg did not finish within {FFMPEG_TIMEOUT_S} s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise BadAudio("unreadable", f"ffmpeg failed: {message[-1] if message else done.returncode}")
    samples = np.frombuffer(done.stdout, dtype="<f4").astype(np.float32)
    if len(samples) > max_seconds * SAMPLE_RATE:
        raise BadAudio("too-long", f"decodes to more than max_audio_seconds = {max_seconds:g} s")
    bad = int(samples.size - np.isfinite(samples).sum())
    if bad:
        raise BadAudio("non-finite", f"{bad} NaN or infinite sample(s)")
    return Decoded(samples, SAMPLE_RATE, 0, len(samples))


def prepare(samples: np.ndarray, sample_rate: int, clip_samples: int) -> Clip:
    """Check, down-mix, resample to 16 kHz and crop (centre) or pad (end) to ``clip_samples``;
    ``samples`` are ``(samples,)`` or ``(channels, samples)`` in memory, at any rate in range."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None, :]
    _check_format(int(sample_rate), samples.shape[0])
    bad = int(samples.size - np.isfinite(samples).sum())
    if bad:
        raise BadAudio("non-finite", f"{bad} NaN or infinite sample(s)")
    return prepare_decoded(Decoded(samples.mean(axis=0), int(sample_rate), 0, samples.shape[1]), clip_samples)


def prepare_decoded(decoded: Decoded, clip_samples: int) -> Clip:
    """:func:`prepare` for decoded mono samples that may hold only the window the crop needs:
    the crop comes first, so only that window is resampled."""
    _check_format(decoded.sample_rate, 1)
    window = _window(decoded.total, decoded.sample_rate, clip_samples)
    lo, hi = window.src_start - decoded.start, window.src_stop - decoded.start
    if lo < 0 or hi > len(decoded.samples):
        raise ValueError(f"decoded frames [{decoded.start}, {decoded.start + len(decoded.samples)}) "
                         f"do not cover the window [{window.src_start}, {window.src_stop})")
    wave = torch.from_numpy(np.ascontiguousarray(decoded.samples[lo:hi], dtype=np.float32))
    if window.orig != window.new:
        wave = torchaudio.functional.resample(wave, window.orig, window.new)
    wave = wave[window.offset : window.offset + window.kept]
    if wave.numel() != window.kept:
        raise ValueError(f"resampled window holds {wave.numel()} samples, expected {window.kept}")
    if wave.numel() < clip_samples:
        wave = torch.nn.functional.pad(wave, (0, clip_samples - wave.numel()))
    peak = float(wave.abs().max())
    if peak <= SILENCE_PEAK:
        raise BadAudio("silent", f"peak amplitude {peak:.2e} in the kept segment")
    return Clip(wave=wave.contiguous(), valid_samples=window.kept)

"""One clip to features: the code path shared by the offline feature store and online serving.

``featurise_file`` takes a file's bytes (an item's audio or an upload), ``featurise_decoded`` what
:func:`~atflrec.features.audio.decode` gave, ``featurise_samples`` samples in memory at any rate and
channel count; all decode/prepare with :mod:`.audio` (within its bounds: sample-rate range, at most
``max_seconds`` declared, only the crop's frames decoded, a bounded resampling kernel) and compute
every requested Mel-bin count from one power spectrum with :mod:`.fbank`. Problems raise
:class:`~atflrec.features.audio.BadAudio` with a reason code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atflrec.features.audio import MAX_AUDIO_SECONDS, Clip, Decoded, decode, prepare, prepare_decoded
from atflrec.features.fbank import SAMPLE_RATE, frame_count, multi_fbank


@dataclass(frozen=True)
class ClipFeatures:
    """Features of one clip: ``features[n]`` is float32 ``(frames, n)``; frames fixed by the clip length.

    ``n_frames`` counts the frames made of real audio; the rest (if any) cover end padding.
    """

    features: dict[int, np.ndarray]
    n_frames: int


def clip_samples(clip_seconds: float) -> int:
    return int(round(clip_seconds * SAMPLE_RATE))


def _features(clip: Clip, n_mels: Sequence[int]) -> ClipFeatures:
    features = multi_fbank(clip.wave, n_mels)
    return ClipFeatures(
        features={n: f.numpy() for n, f in features.items()}, n_frames=frame_count(clip.valid_samples)
    )


def featurise_samples(
    samples: np.ndarray, sample_rate: int, n_mels: Sequence[int], clip_seconds: float
) -> ClipFeatures:
    """Features of samples shaped ``(samples,)`` or ``(channels, samples)`` at ``sample_rate``."""
    return _features(prepare(samples, sample_rate, clip_samples(clip_seconds)), n_mels)


def featurise_decoded(decoded: Decoded, n_mels: Sequence[int], clip_seconds: float) -> ClipFeatures:
    """Features of what ``decode(data, suffix, clip_samples(clip_seconds))`` returned."""
    return _features(prepare_decoded(decoded, clip_samples(clip_seconds)), n_mels)


def featurise_file(data: bytes, suffix: str, n_mels: Sequence[int], clip_seconds: float,
                   max_seconds: float = MAX_AUDIO_SECONDS) -> ClipFeatures:
    """Features of an audio file's bytes; ``suffix`` (e.g. ``.wav``) selects the decoder; a file
    declaring more than ``max_seconds`` of audio is refused (``too-long``) before decoding."""
    decoded = decode(data, suffix, clip_samples(clip_seconds), max_seconds)
    return featurise_decoded(decoded, n_mels, clip_seconds)

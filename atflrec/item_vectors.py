"""Content vectors of items from what every item has: its text (title and tags) and its audio.

Both encoders are fitted on a catalogue's item content (no labels), then encode any item, one
added later included, the same way; they are plain arrays (and, for text, a vocabulary), so they
persist as safetensors + JSON. Used by the ``content`` baseline and the serving retrieval index.

- :class:`TextEncoder`: TF-IDF of the words, reduced by truncated SVD, L2-normalised.
- :class:`AudioEncoder`: per-bin mean and standard deviation of the FBank frames, standardised,
  reduced by PCA, L2-normalised; an item without audio sits at the catalogue mean (zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

TOKEN_PATTERN = r"(?u)\b\w+\b"


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def item_text(title: str, tags: Sequence[str] = ()) -> str:
    return " ".join([title, *tags])


@dataclass
class TextEncoder:
    vocabulary: dict[str, int]
    idf: np.ndarray  # [words]
    components: np.ndarray  # [dims, words]

    @classmethod
    def fit(cls, texts: Sequence[str], dims: int, seed: int = 0) -> TextEncoder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN)
        tfidf = vectorizer.fit_transform(texts)
        vocabulary = {word: int(n) for word, n in vectorizer.vocabulary_.items()}
        dims = min(dims, tfidf.shape[1] - 1, len(texts) - 1)
        if dims < 1:
            return cls(vocabulary, vectorizer.idf_, np.zeros((1, tfidf.shape[1])))
        svd = TruncatedSVD(dims, random_state=seed).fit(tfidf)
        return cls(vocabulary, vectorizer.idf_, svd.components_)

    @property
    def dims(self) -> int:
        return self.components.shape[0]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

        counts = TfidfVectorizer(token_pattern=TOKEN_PATTERN, vocabulary=self.vocabulary, use_idf=False,
                                 norm=None).fit_transform(texts)
        transformer = TfidfTransformer()
        transformer.idf_ = self.idf
        return unit(np.asarray(transformer.transform(counts) @ self.components.T))


def pooled(frames: np.ndarray) -> np.ndarray:
    """Per-bin mean and standard deviation of ``[frames, n_mels]`` FBank features."""
    frames = frames.astype(np.float64)
    return np.concatenate([frames.mean(0), frames.std(0)])


@dataclass
class AudioEncoder:
    mean: np.ndarray  # [2 * n_mels] standardisation
    scale: np.ndarray
    centre: np.ndarray  # [2 * n_mels] PCA mean (of the standardised vectors)
    components: np.ndarray  # [dims, 2 * n_mels]

    @classmethod
    def fit(cls, features: Mapping[str, np.ndarray], dims: int, seed: int = 0) -> AudioEncoder | None:
        """Fitted on every item that has audio; None when fewer than two do."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        if len(features) < 2:
            return None
        table = np.stack([pooled(f) for f in features.values()])
        scaler = StandardScaler().fit(table)
        dims = min(dims, len(table) - 1, table.shape[1])
        pca = PCA(dims, random_state=seed).fit(scaler.transform(table))
        return cls(scaler.mean_, scaler.scale_, pca.mean_, pca.components_)

    @property
    def dims(self) -> int:
        return self.components.shape[0]

    def __call__(self, frames: Sequence[np.ndarray | None]) -> np.ndarray:
        """Unit vectors; an item without audio (None) is the zero vector (the catalogue mean)."""
        out = np.zeros((len(frames), self.dims))
        have = [n for n, f in enumerate(frames) if f is not None]
        if have:
            table = (np.stack([pooled(frames[n]) for n in have]) - self.mean) / self.scale
            out[have] = (table - self.centre) @ self.components.T
        return unit(out)

"""A content model without an LLM: item text and pooled audio features, matched to the user's
liked and disliked history, scored by logistic regression (scikit-learn).

Item vectors, fitted on the whole catalogue (item content only, no labels, so cold items are
described exactly like warm ones) by :mod:`atflrec.item_vectors`:
- text: TF-IDF of title + tags, reduced by truncated SVD, L2-normalised;
- audio: per-bin mean and standard deviation of the FBank frames, standardised and reduced by PCA,
  L2-normalised (items without audio get the catalogue mean, i.e. zero).
Features of a (user, target) row, per block: the target's vector, and the mean and the maximum
cosine similarity of the target to the user's liked items and to their disliked items (a
neighbourhood view of taste with few parameters, which few shots can fit; an element-wise
target x profile interaction scored lower in a one-off check on the benchmark at 256 shots).
Plus the history's like share (what ``user_rate`` scores by), so that an LLM beating this model
shows more than that the LLM can count the history's labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from atflrec.baselines.base import RECOMMENDERS, Context, Recommender, Row, labels_of
from atflrec.baselines.user_rate import like_share
from atflrec.config import ConfigError, StrictModel
from atflrec.item_vectors import AudioEncoder, TextEncoder, item_text


class ContentSettings(StrictModel):
    text: bool = Field(True, description="use title + tags (TF-IDF)")
    audio: bool = Field(True, description="use pooled FBank features (needs a feature store)")
    n_mels: int = Field(40, ge=1, description="Mel-bin count of the audio features")
    text_dims: int = Field(16, ge=1, description="SVD components of the TF-IDF vectors")
    audio_dims: int = Field(16, ge=1, description="PCA components of the pooled FBank vectors")
    C: float = Field(0.1, gt=0, description="inverse L2 strength of the logistic regression (few shots: strong)")
    like_share: bool = Field(True, description="also use the history's like share (what user_rate scores by)")


@RECOMMENDERS.register("content")
class Content(Recommender):
    Settings = ContentSettings
    cold_start = "the same features as any item (title, tags and audio are known for cold items)"

    def fit(self, rows: Sequence[Row], context: Context) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.ids = sorted(context.items)
        self.position = {item: n for n, item in enumerate(self.ids)}
        blocks = []
        if self.settings.text:
            texts = [item_text(context.items[i].title, context.items[i].tags) for i in self.ids]
            blocks.append(TextEncoder.fit(texts, self.settings.text_dims, context.seed)(texts))
        if self.settings.audio and context.features is not None:
            features = context.features(self.settings.n_mels)
            frames = [features.get(i) for i in self.ids]
            encoder = AudioEncoder.fit({i: f for i, f in zip(self.ids, frames) if f is not None},
                                       self.settings.audio_dims, context.seed)
            blocks.append(encoder(frames) if encoder is not None else np.zeros((len(self.ids), 1)))
        if not blocks and not self.settings.like_share:
            raise ConfigError("content: no features to use; set text, like_share, or audio with a feature store")
        self.blocks = blocks
        labels = labels_of(rows)
        if len(set(labels)) < 2:  # one class: nothing to separate, predict its rate
            self.model, self.rate = None, float(labels.mean()) if len(labels) else 0.5
            return
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.settings.C, max_iter=1000))
        self.model.fit(self.design(rows), labels)

    def vectors(self, ids: Sequence[str], block: int) -> np.ndarray:
        """Vectors of ``ids`` in one block (zero for items outside the catalogue)."""
        table = self.blocks[block]
        out = np.zeros((len(ids), table.shape[1]))
        for n, item in enumerate(ids):
            if item in self.position:
                out[n] = table[self.position[item]]
        return out

    def similarities(self, target: np.ndarray, ids: Sequence[str], block: int) -> list[float]:
        """Mean and max cosine similarity of a target vector to the items of a history list."""
        if not len(ids):
            return [0.0, 0.0]
        sims = self.vectors(list(ids), block) @ target  # unit vectors: dot = cosine
        return [float(sims.mean()), float(sims.max())]

    def design(self, rows: Sequence[Row]) -> np.ndarray:
        columns = []
        for block in range(len(self.blocks)):
            targets = self.vectors([r["item_id"] for r in rows], block)
            matches = [self.similarities(t, r["liked_ids"], block) + self.similarities(t, r["disliked_ids"], block)
                       for r, t in zip(rows, targets)]
            columns += [targets, np.array(matches).reshape(len(rows), 4)]
        if self.settings.like_share:
            columns.append(like_share(rows)[:, None])
        return np.hstack(columns)

    def score(self, rows: Sequence[Row]) -> np.ndarray:
        if self.model is None:
            return np.full(len(rows), self.rate)
        return self.model.predict_proba(self.design(rows))[:, 1]


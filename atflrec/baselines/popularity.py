"""Popularity: how often an item was liked in the training rows, shrunk towards the overall rate."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from atflrec.baselines.base import RECOMMENDERS, Context, Recommender, Row, labelled_pairs
from atflrec.config import StrictModel


class PopularitySettings(StrictModel):
    prior: float = Field(5.0, ge=0, description="pseudo-interactions at the overall like rate added to every item")


@RECOMMENDERS.register("popularity")
class Popularity(Recommender):
    """score(item) = (likes + prior * rate) / (interactions + prior), from every labelled pair the
    training rows reveal (targets and histories). The same for every user."""

    Settings = PopularitySettings
    cold_start = "overall like rate of the training rows (every cold item ties)"

    def fit(self, rows: Sequence[Row], context: Context) -> None:
        pairs = labelled_pairs(rows)
        self.rate = float(np.mean([label for _, _, label in pairs])) if pairs else 0.5
        likes: dict[str, float] = defaultdict(float)
        seen: dict[str, float] = defaultdict(float)
        for _, item, label in pairs:
            likes[item] += label
            seen[item] += 1
        prior = self.settings.prior
        self.item_score = {i: (likes[i] + prior * self.rate) / (seen[i] + prior) for i in seen if seen[i] + prior > 0}

    def score(self, rows: Sequence[Row]) -> np.ndarray:
        return np.array([self.item_score.get(r["item_id"], self.rate) for r in rows])

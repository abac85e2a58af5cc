"""Ranking and calibration metrics: AUC, GAUC, log loss (numpy in, float out)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
from scipy.stats import rankdata


def auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half). NaN if one class."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(labels: Sequence[float], scores: Sequence[float], users: Sequence[str], weighted: bool = True) -> float:
    """Per-user AUC averaged over users that have both classes.

    ``weighted`` weighs each user by their number of samples (the usual GAUC of DIN and RecBole);
    otherwise every user counts once. NaN if no user has both classes.
    """
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, user in enumerate(users):
        by_user[user].append(i)
    y, s = np.asarray(labels), np.asarray(scores)
    values, weights = [], []
    for rows in by_user.values():
        value = auc(y[rows], s[rows])
        if not np.isnan(value):
            values.append(value)
            weights.append(len(rows) if weighted else 1)
    return float(np.average(values, weights=weights)) if values else float("nan")


def log_loss(labels: Sequence[float], probabilities: Sequence[float], eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate_scores(labels: Sequence[float], scores: Sequence[float], users: Sequence[str]) -> dict[str, float]:
    """All three metrics by name (``scores`` are probabilities)."""
    return {"auc": auc(labels, scores), "gauc": gauc(labels, scores, users), "log_loss": log_loss(labels, scores)}

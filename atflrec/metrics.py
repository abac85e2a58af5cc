"""Ranking and calibration metrics: AUC, GAUC, log loss, NDCG@k, Recall@k (numpy or lists in, float out)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Hashable, Sequence

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


def ndcg_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Binary-relevance NDCG@k of one ranking (best first): the DCG of the relevant items among its
    first ``k`` over the best DCG any ranking could reach (every relevant item first). NaN without
    relevant items."""
    if not relevant:
        return float("nan")
    gains = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(gains[n] for n, item in enumerate(ranked[:k]) if item in relevant)
    return float(dcg / gains[: min(len(relevant), k)].sum())


def recall_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Share of the relevant items among the first ``k`` of a ranking. NaN without relevant items."""
    if not relevant:
        return float("nan")
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def users_with_both_labels(labels: Sequence[float], users: Sequence[str]) -> int:
    """How many users GAUC averages over: those with at least one positive and one negative row."""
    seen: dict[str, set[bool]] = defaultdict(set)
    for label, user in zip(labels, users):
        seen[user].add(bool(label))
    return sum(len(classes) == 2 for classes in seen.values())


def paired_bootstrap_auc(labels: Sequence[float], scores_a: Sequence[Sequence[float]],
                         scores_b: Sequence[Sequence[float]], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Is model A's AUC above model B's on the same rows, beyond what the rows' sampling explains?

    ``scores_a`` and ``scores_b`` hold one score vector per seed (the seeds of A and B may differ);
    a model's AUC is its mean over its seeds. Each resample draws the rows with replacement, the
    same rows for both models and every seed (a paired bootstrap over rows, with the seed variation
    kept inside each model's mean). Returns the observed difference A - B, its 95 % interval, and
    the two-sided p-value of "no difference" (twice the smaller tail share, at most 1).
    """
    y = np.asarray(labels, dtype=bool)
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1, y.size)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1, y.size)

    def difference(rows: np.ndarray) -> float:
        return float(np.mean([auc(y[rows], s[rows]) for s in a]) - np.mean([auc(y[rows], s[rows]) for s in b]))

    rng = np.random.default_rng(seed)
    draws = np.array([difference(rng.integers(0, y.size, y.size)) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]  # a resample with one class has no AUC
    low, high = np.percentile(draws, [2.5, 97.5])
    p_value = min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0)))
    return {"difference": difference(np.arange(y.size)), "ci_low": float(low), "ci_high": float(high),
            "p_value": float(p_value), "resamples": int(draws.size)}

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from atflrec.metrics import (
    auc,
    gauc,
    log_loss,
    ndcg_at_k,
    paired_bootstrap_auc,
    recall_at_k,
    users_with_both_labels,
)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + labels * 0.3, 2)  # rounding creates ties
    users = rng.choice([f"u{i}" for i in range(12)], 200)
    return labels, scores, users


def test_auc_matches_sklearn_including_ties(data) -> None:
    labels, scores, _ = data
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_gauc_is_the_weighted_mean_of_per_user_sklearn_aucs(data) -> None:
    labels, scores, users = data
    users = users.copy()
    users[:3], labels[:3] = "u99", 1  # a user with one class is left out
    per_user, weights = [], []
    for user in set(users) - {"u99"}:
        rows = users == user
        per_user.append(roc_auc_score(labels[rows], scores[rows]))
        weights.append(rows.sum())
    assert gauc(labels, scores, users) == pytest.approx(np.average(per_user, weights=weights), abs=1e-12)
    assert gauc(labels, scores, users, weighted=False) == pytest.approx(np.mean(per_user), abs=1e-12)


def test_log_loss_matches_sklearn(data) -> None:
    labels, scores, _ = data
    probabilities = np.clip(scores, 0.01, 0.99)
    assert log_loss(labels, probabilities) == pytest.approx(sk_log_loss(labels, probabilities), abs=1e-12)


def test_one_class_gives_nan() -> None:
    assert np.isnan(auc([1, 1], [0.2, 0.3])) and np.isnan(gauc([1, 1], [0.2, 0.3], ["a", "a"]))


def test_users_with_both_labels_counts_the_users_gauc_averages_over() -> None:
    labels = [1, 0, 1, 1, 0, 0, 1]
    users = ["a", "a", "b", "b", "c", "c", "d"]
    assert users_with_both_labels(labels, users) == 1


def test_paired_bootstrap_separates_a_better_model_from_an_equal_one() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    good = [labels + rng.normal(0, 0.8, 300) for _ in range(3)]
    noise = [rng.normal(0, 1, 300) for _ in range(2)]  # seeds of the two models may differ in number
    better = paired_bootstrap_auc(labels, good, noise, resamples=500)
    assert better["difference"] > 0.2 and better["ci_low"] > 0 and better["p_value"] < 0.01
    assert better["difference"] == pytest.approx(np.mean([auc(labels, s) for s in good])
                                                 - np.mean([auc(labels, s) for s in noise]))
    same = paired_bootstrap_auc(labels, good[:1], [good[0] + 1e-9 * rng.normal(size=300)], resamples=500)
    assert abs(same["difference"]) < 0.01 and same["ci_low"] <= 0 <= same["ci_high"] and same["p_value"] > 0.05


def test_ndcg_at_k_by_hand() -> None:
    ranked = ["a", "b", "c", "d"]
    assert ndcg_at_k(ranked, {"a"}, 3) == 1.0
    assert ndcg_at_k(ranked, {"b"}, 3) == pytest.approx(1 / np.log2(3))
    # two relevant items at ranks 1 and 3, against both at ranks 1 and 2
    assert ndcg_at_k(ranked, {"a", "c"}, 3) == pytest.approx((1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))
    assert ndcg_at_k(ranked, {"d"}, 3) == 0.0  # beyond the cut
    # more relevant items than k: the ideal ranking fills all k places
    assert ndcg_at_k(ranked, {"a", "b", "c", "d"}, 2) == 1.0
    assert np.isnan(ndcg_at_k(ranked, set(), 3))


def test_recall_at_k_counts_the_relevant_items_within_the_cut() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"a", "d"}, 3) == 0.5
    assert recall_at_k(ranked, {"a", "d"}, 4) == 1.0
    assert recall_at_k(ranked, {"x"}, 4) == 0.0
    assert np.isnan(recall_at_k(ranked, [], 4))

"""Tiny sample sets with one planted signal each, for the baselines of every family.

Every generator returns (train rows, test rows, catalogue, features); labels carry the signal the
family should find, and nothing else does. ``shuffled`` destroys the signal in the training rows
(target labels permuted, history items re-dealt between liked and disliked).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from atflrec.baselines import Item

Row = dict[str, Any]
N_MELS = 8


def make_row(user: str, n: int, target: str, label: int, liked: list[str], disliked: list[str]) -> Row:
    return {
        "sample_id": f"{user}#{n}", "user_id": user, "item_id": target, "title": f"song {target}",
        "label": int(label), "timestamp": n,
        "liked_ids": liked, "liked_titles": [f"song {i}" for i in liked],
        "disliked_ids": disliked, "disliked_titles": [f"song {i}" for i in disliked],
    }


def _catalogue(ids: list[str]) -> dict[str, Item]:
    return {i: Item(f"song {i}", ("pop",)) for i in ids}


def item_level(rng: np.random.Generator, items: int = 200, users: int = 100, per_user: int = 8):
    """Half the items are liked by nearly everyone, half by nearly no one (popularity, MF)."""
    ids = [f"i{n}" for n in range(items)]
    good = {i: rng.random() < 0.5 for i in ids}

    def label(item: str) -> int:
        return int(rng.random() < (0.9 if good[item] else 0.1))

    rows = []
    for u in range(users):
        seen = [ids[k] for k in rng.choice(items, size=per_user + 6, replace=False)]
        history = [(i, label(i)) for i in seen[:6]]
        for n, target in enumerate(seen[6:]):
            rows.append(make_row(f"u{u}", n, target, label(target), [i for i, y in history if y],
                                 [i for i, y in history if not y]))
    rng.shuffle(rows)
    return rows[: len(rows) // 2], rows[len(rows) // 2:], _catalogue(ids), None


def communities(rng: np.random.Generator, items: int = 200, users: int = 120, history: int = 8, targets: int = 6):
    """Users and items in two groups; a user likes the items of their own group (graph structure).
    Every item is liked by half the users, so popularity carries nothing."""
    ids = [f"i{n}" for n in range(items)]

    def label(user: int, item: int) -> int:
        return int(rng.random() < (0.95 if user % 2 == item % 2 else 0.05))

    train, test = [], []
    for u in range(users):
        picks = rng.choice(items, size=history + 2 * targets, replace=False)
        past = [(ids[k], label(u, k)) for k in picks[:history]]
        liked, disliked = [i for i, y in past if y], [i for i, y in past if not y]
        for n, k in enumerate(picks[history:]):
            row = make_row(f"u{u}", n, ids[k], label(u, k), liked, disliked)
            (train if n < targets else test).append(row)
    return train, test, _catalogue(ids), None


def taste_in_history(rng: np.random.Generator, items: int = 40, rows: int = 600):
    """Every row is a new user whose liked history comes from one group of items (by id parity)
    and disliked history from the other; the target is liked when it belongs to the liked group.
    Only the sequence inside each sample tells the two apart: user ids are all new and every item
    is liked as often as not, so neither MF nor popularity can carry anything."""
    ids = [f"i{n}" for n in range(items)]
    groups = [list(range(0, items, 2)), list(range(1, items, 2))]
    out = []
    for n in range(rows):
        taste = int(rng.integers(2))
        liked = list(rng.choice(groups[taste], size=3, replace=False))
        disliked = list(rng.choice(groups[1 - taste], size=3, replace=False))
        target = int(rng.choice([k for k in range(items) if k not in liked + disliked]))
        label = int((target % 2 == taste) != (rng.random() < 0.05))
        out.append(make_row(f"u{n}", n, ids[target], label, [ids[k] for k in liked], [ids[k] for k in disliked]))
    return out[: rows // 2], out[rows // 2:], _catalogue(ids), None


def content_signal(rng: np.random.Generator, where: str, items: int = 240, rows: int = 600):
    """Loud items (audio) or items tagged "rock" (text) are liked; test targets are items never seen
    in training (cold start), so only content can carry the signal over."""
    ids = [f"i{n}" for n in range(items)]
    liked_kind = {i: bool(rng.random() < 0.5) for i in ids}
    features = {i: (rng.normal(size=(20, N_MELS))
                    + (1.5 if where == "audio" and liked_kind[i] else 0.0)).astype(np.float16)
                for i in ids}
    catalogue = {i: Item(f"song {n}", (("rock" if liked_kind[i] else "jazz") if where == "text" else "pop",))
                 for n, i in enumerate(ids)}
    warm, cold = ids[: items // 2], ids[items // 2:]

    def draw(pool: list[str], count: int, start: int) -> list[Row]:
        out = []
        for n in range(count):
            target = pool[rng.integers(len(pool))]
            label = int(rng.random() < (0.9 if liked_kind[target] else 0.1))
            history = [warm[k] for k in rng.choice(len(warm), size=4, replace=False)]
            out.append(make_row(f"u{start + n}", n, target, label, history[:2], history[2:]))
        return out

    return draw(warm, rows // 2, 0), draw(cold, rows // 2, rows), catalogue, features


def user_propensity(rng: np.random.Generator, items: int = 200, rows: int = 600):
    """Every row is a new user who likes most (p = 0.9) or few (p = 0.1) items: the six history labels
    and the target's label are all Bernoulli(p), items drawn at random. Only the history's like
    share carries anything; no item, tag or audio feature does."""
    ids = [f"i{n}" for n in range(items)]
    out = []
    for n in range(rows):
        p = 0.9 if rng.random() < 0.5 else 0.1
        picks = [ids[k] for k in rng.choice(items, size=7, replace=False)]
        liked = [i for i in picks[:6] if rng.random() < p]
        disliked = [i for i in picks[:6] if i not in liked]
        out.append(make_row(f"u{n}", n, picks[6], int(rng.random() < p), liked, disliked))
    features = {i: rng.normal(size=(20, N_MELS)).astype(np.float16) for i in ids}
    return out[: rows // 2], out[rows // 2:], _catalogue(ids), features


def shuffled(rows: list[Row], rng: np.random.Generator) -> list[Row]:
    labels = rng.permutation([r["label"] for r in rows])
    out = []
    for row, label in zip(rows, labels):
        history = list(row["liked_ids"]) + list(row["disliked_ids"])
        order = [history[k] for k in rng.permutation(len(history))]
        cut = len(row["liked_ids"])
        out.append(make_row(row["user_id"], row["timestamp"], row["item_id"], int(label), order[:cut], order[cut:]))
    return out


def title_signal(rng: np.random.Generator, items: int = 240, rows: int = 600):
    """``content_signal`` for models that read titles (the LLMs): an item's genre word ("rock" is
    liked, "jazz" is not) opens its title, in the catalogue and in every row's titles."""
    train, test, catalogue, features = content_signal(rng, "text", items, rows)
    titles = {i: f"{item.tags[0]} song {i[1:]}" for i, item in catalogue.items()}

    def retitle(row: Row) -> Row:
        return {**row, "title": titles[row["item_id"]],
                "liked_titles": [titles[i] for i in row["liked_ids"]],
                "disliked_titles": [titles[i] for i in row["disliked_ids"]]}

    catalogue = {i: Item(titles[i], item.tags) for i, item in catalogue.items()}
    return [retitle(r) for r in train], [retitle(r) for r in test], catalogue, features

"""One interface for every recommender the evaluation compares, and the registry that names them.

A recommender is built from its ``Settings`` (a :class:`StrictModel`), then ``fit(train_rows,
context)`` and ``score(rows)``. Rows are sample dicts (:data:`atflrec.samples.SAMPLE_SCHEMA`):
user, target item, label and the user's liked / disliked history before the target. The
:class:`Context` carries what is known about items beside the samples (titles, tags, audio
features) and a memo for work several models of one run can share.

In the few-shot setting a model sees only ``train_rows``: their targets and the histories inside
them. Items that never appear there (every cold-start item) still have to be scored; each class
says how in ``cold_start``, which the report prints.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from atflrec.config import StrictModel
from atflrec.registry import Registry

Row = dict[str, Any]
RECOMMENDERS: Registry[type[Recommender]] = Registry("recommender")


@dataclass(frozen=True)
class Item:
    title: str
    tags: tuple[str, ...] = ()


@dataclass
class Context:
    """What a recommender may know besides its training rows.

    ``items``: the catalogue (every item a model may be asked about, cold ones included).
    ``features``: Mel-bin count → item id → FBank ``[frames, n_mels]`` (None: no audio).
    ``seed``: initialisation and shuffling. ``shared``: a memo for one run, keyed by everything
    that determines the value, so two models that need the same trained part compute it once.
    ``validation``: labelled rows a model may select on while it trains (LLM early stopping);
    never the reported rows.
    """

    items: Mapping[str, Item]
    features: Callable[[int], Mapping[str, np.ndarray]] | None = None
    seed: int = 0
    shared: dict[str, Any] = field(default_factory=dict)
    validation: Sequence[Row] = ()


class Recommender(ABC):
    """Fit on few-shot sample rows, then score rows with P(like) in [0, 1]."""

    Settings: ClassVar[type[StrictModel]]
    uses_llm: ClassVar[bool] = False
    cold_start: ClassVar[str]  # how the model scores an item it never saw in training

    def __init__(self, settings: StrictModel | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def fit(self, rows: Sequence[Row], context: Context) -> None:
        """Learn from the training rows (targets, labels and the histories inside them)."""

    @abstractmethod
    def score(self, rows: Sequence[Row]) -> np.ndarray:
        """P(like) of each row's target for its user, in row order."""


def build_recommender(kind: str, settings: Mapping[str, Any] | StrictModel | None = None) -> Recommender:
    """A recommender of registered ``kind`` with its settings validated."""
    cls = RECOMMENDERS[kind]
    if settings is None or isinstance(settings, StrictModel):
        return cls(settings)
    return cls(cls.Settings.model_validate(dict(settings)))


def labelled_pairs(rows: Sequence[Row]) -> list[tuple[str, str, int]]:
    """Every (user, item, label) the rows reveal: targets and history entries, each pair once.

    A history entry is an earlier interaction of the same user, so it is as much a labelled
    pair as a target; overlapping histories of one user's rows name it only once.
    """
    pairs: dict[tuple[str, str], int] = {}
    for row in rows:
        user = row["user_id"]
        for item in row["liked_ids"]:
            pairs.setdefault((user, item), 1)
        for item in row["disliked_ids"]:
            pairs.setdefault((user, item), 0)
        pairs[(user, row["item_id"])] = int(row["label"])
    return [(user, item, label) for (user, item), label in pairs.items()]


class Vocabulary:
    """Ids seen in training → 1..n; 0 stands for any id never seen (cold items, new users)."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.index = {value: i + 1 for i, value in enumerate(sorted(set(ids)))}

    def __len__(self) -> int:
        return len(self.index) + 1

    def __call__(self, ids: Iterable[str]) -> np.ndarray:
        return np.array([self.index.get(i, 0) for i in ids], dtype=np.int64)


def rows_key(rows: Sequence[Row]) -> str:
    """A short fingerprint of which samples ``rows`` are, in order (for memo keys)."""
    return hashlib.sha1("\n".join(r["sample_id"] for r in rows).encode()).hexdigest()[:16]


def labels_of(rows: Sequence[Row]) -> np.ndarray:
    return np.array([float(r["label"]) for r in rows])

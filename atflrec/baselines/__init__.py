"""Recommenders compared by the evaluation, all behind one interface (:mod:`atflrec.baselines.base`).

Registered kinds: ``user_rate`` (the history's like share, no training), ``popularity``, ``mf``,
``lightgcn``, ``sasrec``, ``content`` (no LLM) and ``text_llm``, ``audio_llm``, ``atflrec`` (the LLM
models, :mod:`atflrec.baselines.llm`).
"""

from atflrec.baselines import content, lightgcn, llm, mf, popularity, sasrec, user_rate  # noqa: F401  (registers each kind)
from atflrec.baselines.base import RECOMMENDERS, Context, Item, Recommender, build_recommender

__all__ = ["RECOMMENDERS", "Context", "Item", "Recommender", "build_recommender"]

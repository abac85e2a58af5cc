"""``atflrec evaluate``: baselines, ATFLRec and its ablations on warm and cold-start splits."""

from atflrec.evaluation.config import EvalConfig, quick_config
from atflrec.evaluation.runner import run_evaluation

__all__ = ["EvalConfig", "quick_config", "run_evaluation"]

"""The search's own progress lines: one per trial as it ends, with its best validation AUC so far
and how many trials have ended (Tune's status table goes to the log file in quiet mode)."""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback

from atflrec.console import say
from atflrec.tuning.trial import run_name


class TrialProgress(Callback):
    """Tune callback (on the driver): says when a trial ends, how it ended and its best val AUC."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.best: dict[str, float] = {}
        self.ended = 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get("val_auc")
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best[trial.trial_id] = max(value, self.best.get(trial.trial_id, -math.inf))

    def _ended(self, trial: Any, how: str) -> None:
        self.ended += 1
        best = self.best.get(trial.trial_id)
        auc = f"best val AUC {best:.4f}" if best is not None else "no validation AUC"
        say(f"{run_name(trial.trial_id)} {how}: {auc} ({self.ended}/{self.total} trials ended)")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "ended")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "failed (its error is in the log)")

"""Plots of a search (PNG, matplotlib): best validation AUC against each knob, and learning curves
with the trials ASHA stopped marked where they stopped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from atflrec.tuning.space import SearchPlan

STATUS_COLOURS = {"completed": "tab:blue", "stopped": "tab:orange", "error": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _slug(key: str) -> str:
    return key.replace(".", "_")


def plot_knobs(results: pa.Table, plan: SearchPlan, out: Path) -> list[Path]:
    """One PNG per knob (and the LoRA configuration the fusion strategy implies): each trial's best
    validation AUC against its value, coloured by status."""
    plt = _pyplot()
    rows = results.to_pylist()
    knobs = {key: plan.space.space[key] for key in plan.knobs}
    extra = ["lora_config"] if "model.fusion.strategy" in knobs else []
    written = []
    for key in [*knobs, *extra]:
        distribution = knobs.get(key)
        categorical = distribution is None or distribution.kind == "choice"
        points = [(r[key], r["best_val_auc"], r["status"]) for r in rows
                  if r["best_val_auc"] is not None and not math.isnan(r["best_val_auc"])]
        figure, axes = plt.subplots(figsize=(5, 3.5))
        if categorical:
            levels = sorted({str(v) for v, _, _ in points}, key=_natural)
            if distribution is not None:  # every choice on the axis, tried or not
                levels = sorted({str(v) for v in distribution.args} | set(levels), key=_natural)
            jitter = np.random.default_rng(0)
            for value, auc, status in points:
                x = levels.index(str(value)) + jitter.uniform(-0.12, 0.12)
                axes.scatter(x, auc, color=STATUS_COLOURS[status], alpha=0.8)
            axes.set_xticks(range(len(levels)), levels)
        else:
            for value, auc, status in points:
                axes.scatter(value, auc, color=STATUS_COLOURS[status], alpha=0.8)
            if distribution.log_scale:
                axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel("validation AUC of the trial's best report")
        _status_legend(plt, axes)
        figure.tight_layout()
        path = out / f"val_auc_vs_{_slug(key)}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _status_legend(plt, axes) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in STATUS_COLOURS.items()]
    axes.legend(handles=handles, fontsize="small", loc="best")


def plot_curves(curves: pa.Table, rungs: list[int], out: Path) -> Path:
    """Validation AUC after every report of every trial; an x marks where ASHA stopped a trial,
    dotted lines ASHA's rungs. Rungs count whole-model validations (last-stage reports): for a
    single-stage strategy that is the report number; a multi-stage trial reaches them later."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    rows = curves.to_pylist()
    for trial in sorted({r["trial_id"] for r in rows}):
        points = [r for r in rows if r["trial_id"] == trial]
        status = points[-1]["status"]
        x = [p["report"] for p in points]
        y = [p["val_auc"] for p in points]
        axes.plot(x, y, marker=".", color=STATUS_COLOURS[status], alpha=0.7)
        if status == "stopped":
            axes.scatter(x[-1], y[-1], marker="x", s=60, color="black", zorder=3)
    for rung in rungs:
        axes.axvline(rung, color="grey", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("report (one per validation of each stage; dotted: ASHA rungs in whole-model validations)")
    axes.set_ylabel("validation AUC")
    axes.set_title("learning curves (x: stopped by ASHA)")
    _status_legend(plt, axes)
    figure.tight_layout()
    path = out / "learning_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The report counts at which ASHA (one bracket) compares trials."""
    rungs, t = [], float(grace_period)
    while t < max_t:
        rungs.append(int(t))
        t *= reduction_factor
    return rungs

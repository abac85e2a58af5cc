"""``report.md`` and its PNG plots, built from ``results.parquet`` (and ``run.json``'s run facts).

Tables give the mean ± sample standard deviation over seeds. The goal check (:data:`GOALS`): on the
cold-start split at 256 shots (or the largest size run), the best ATFLRec variant against the best
collaborative baseline (+0.05 AUC), the text-only LLM (+0.03) and ``user_rate`` (+0.02), with a paired
bootstrap for each comparison; GAUC tables say how many users each figure rests on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from atflrec.baselines import RECOMMENDERS
from atflrec.evaluation.config import DEFAULT_VARIANT, EvalConfig, model_settings
from atflrec.evaluation.outputs import EVAL_ROWS_FILE, REPORT_FILE, RESULTS_FILE, SUMMARY_FILE
from atflrec.io import atomic_write_text

GOAL_SHOTS = 256
# (comparison, the kinds it takes the best of, the margin the best ATFLRec variant must lead it by)
GOALS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("best collaborative baseline (MF, LightGCN, SASRec)", ("mf", "lightgcn", "sasrec"), 0.05),
    ("text-only LLM (audio helps)", ("text_llm",), 0.03),
    ("user_rate, the history's like share (the LLM uses more than it)", ("user_rate",), 0.02),
)
BOOTSTRAP_RESAMPLES = 1000
METRICS = {"auc": "AUC", "gauc": "GAUC", "log_loss": "log loss"}


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_tables(main: pd.DataFrame, models: list[str], splits: list[str], run: dict[str, Any]) -> list[str]:
    out = []
    shots = sorted(main["shots"].unique())
    for metric, title in METRICS.items():
        out.append(f"## {title} (mean ± std over seeds)\n")
        if metric == "gauc" and run.get("gauc_users"):
            out.append("GAUC averages per-user AUCs over the users with both a liked and a disliked row: "
                       + ", ".join(f"{split} {n} users" for split, n in run["gauc_users"].items()) + ".\n")
        for split in splits:
            rows = []
            for model in models:
                sub = main[(main["model"] == model) & (main["split"] == split)]
                rows.append([model] + [_cell(sub[sub["shots"] == s][metric]) for s in shots])
            out += [f"**{split}**\n", _table(["model"] + [f"{s} shots" for s in shots], rows), ""]
    return out


def _fit_table(main: pd.DataFrame, models: list[str]) -> str:
    once = main.drop_duplicates(["model", "shots", "seed"])
    shots = sorted(once["shots"].unique())
    rows = []
    for model in models:
        sub = once[once["model"] == model]
        rows.append([model] + [f"{sub[sub['shots'] == s]['fit_seconds'].mean():.1f}" if (sub["shots"] == s).any()
                               else "—" for s in shots])
    return _table(["model"] + [f"{s} shots" for s in shots], rows)


def _steps(settings: Any, shots: int) -> int:
    """Optimizer steps per LLM training stage."""
    optim = settings.optim
    steps = optim.epochs * math.ceil(math.ceil(shots / optim.batch_size) / optim.grad_accum)
    return min(steps, optim.max_steps) if optim.max_steps else steps


def _variant_settings(config: EvalConfig, model: str, ablation: str, variant: str) -> Any:
    spec = next(m for m in config.models if m.name == model)
    if not ablation:
        return model_settings(config, spec)
    spec_ablation = next(a for a in config.ablations if a.name == ablation)
    value = next(v for v in spec_ablation.values if str(v) == variant)
    return model_settings(config, spec, spec_ablation.variant_settings(value))


def _means(df: pd.DataFrame, split: str, shots: int) -> pd.DataFrame:
    at = df[(df["split"] == split) & (df["shots"] == shots)]
    return (at.groupby(["model", "kind", "ablation", "variant"], dropna=False)["auc"]
            .agg(["mean", "count"]).reset_index())


def _best(means: pd.DataFrame, kinds: tuple[str, ...], default_only: bool = True) -> pd.Series | None:
    """The row of the best mean AUC among ``kinds`` (default settings only unless told otherwise)."""
    pick = means[means["kind"].isin(kinds) & ((means["variant"] == DEFAULT_VARIANT) | (not default_only))]
    return None if pick.empty else pick.sort_values("mean").iloc[-1]


def _name(row: pd.Series) -> str:
    return f"{row['model']}" + (f" ({row['ablation']}={row['variant']})" if row["ablation"] else "")


def _goal_shots(df: pd.DataFrame, split: str) -> int | None:
    atf = df[(df["kind"] == "atflrec") & (df["split"] == split)]
    if atf.empty:
        return None
    return GOAL_SHOTS if (atf["shots"] == GOAL_SHOTS).any() else int(atf["shots"].max())


def _goal(df: pd.DataFrame, config: EvalConfig, oracle: dict[str, float]) -> list[str]:
    out = ["## Goal: ATFLRec on cold-start items\n"]
    cold = "cold" if "cold" in config.splits else None
    shots = _goal_shots(df, cold) if cold else None
    if shots is None:
        return out + ["Not checked: the run has no ATFLRec model scored on a `cold` split.\n"]
    means = _means(df, cold, shots)
    best = _best(means, ("atflrec",), default_only=False)
    lines = [f"Cold-start split, {shots} shots" + ("" if shots == GOAL_SHOTS else f" ({GOAL_SHOTS} not run)")
             + ", AUC mean over seeds; each comparison has its own required margin.\n",
             f"- best ATFLRec variant: **{_name(best)}** {best['mean']:.3f} ({int(best['count'])} seeds)"]
    margins = []
    for title, kinds, required in GOALS:
        other = _best(means, kinds)
        if other is None:
            lines.append(f"- {title}: not in this run")
            continue
        margin = best["mean"] - other["mean"]
        margins.append(margin >= required)
        lines.append(f"- {title}: {_name(other)} {other['mean']:.3f} (margin {margin:+.3f}, required "
                     f"{required:+.2f}: {'met' if margin >= required else 'not met'})")
    content = _best(means, ("content",))
    if content is not None:
        lines.append(f"- beside it, the content model (text, audio and like share; no LLM): {content['mean']:.3f}")
    if cold in oracle:
        lines.append(f"- upper bound (the generator's noise-free like logit on these rows): {oracle[cold]:.3f}")
    lines.append("")
    if margins and all(margins) and len(margins) == len(GOALS):
        lines.append("**Goal met**: ATFLRec leads every comparison by its required margin.")
    else:
        lines.append(f"**Goal not met**: {sum(margins)} of {len(GOALS)} comparisons met"
                     + ("" if len(margins) == len(GOALS) else " (some models were not run)") + ".")
        settings = _variant_settings(config, best["model"], best["ablation"], best["variant"])
        if best["mean"] < 0.55:
            lines.append(f"ATFLRec stayed near chance: each of its adapters trained for at most "
                         f"{_steps(settings, shots)} optimizer steps (epochs {settings.optim.epochs}, batch "
                         f"{settings.optim.batch_size}, lr {settings.optim.lr}).")
    return out + lines + [""]


def _significance(out: Path, df: pd.DataFrame, splits: list[str]) -> list[str]:
    """Paired bootstrap over the evaluation rows (seeds averaged inside each model) for the headline comparisons."""
    from atflrec.metrics import paired_bootstrap_auc

    lines = ["## Significance of the headline comparisons\n",
             f"Paired bootstrap over the evaluation rows ({BOOTSTRAP_RESAMPLES} resamples; both models scored the "
             "same rows; each model's AUC is its mean over its seeds): the difference in AUC, its 95 % interval "
             "and the two-sided p-value of no difference.\n"]
    if not (out / EVAL_ROWS_FILE).is_file() or "scores" not in df or df["scores"].isna().any():
        return lines + ["Not computed: this run's results carry no per-row scores (written before they were kept).\n"]
    rows = pd.read_parquet(out / EVAL_ROWS_FILE)
    table = []
    for split in splits:
        shots = _goal_shots(df, split)
        if shots is None:
            continue
        labels = rows[rows["split"] == split]["label"].to_numpy()
        means = _means(df, split, shots)
        best = _best(means, ("atflrec",), default_only=False)

        def scores(row: pd.Series, split: str = split, shots: int = shots) -> list:
            pick = df[(df["model"] == row["model"]) & (df["ablation"] == row["ablation"])
                      & (df["variant"] == row["variant"]) & (df["split"] == split) & (df["shots"] == shots)]
            return [list(v) for v in pick["scores"]]

        for _title, kinds, _ in (*GOALS, ("content", ("content",), 0.0)):
            other = _best(means, kinds)
            if other is None:
                continue
            test = paired_bootstrap_auc(labels, scores(best), scores(other), resamples=BOOTSTRAP_RESAMPLES)
            table.append([split, str(shots), f"{_name(best)} vs {_name(other)}", f"{test['difference']:+.3f}",
                          f"[{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]", f"{test['p_value']:.3f}"])
    if not table:
        return lines + ["Not computed: no ATFLRec model in this run.\n"]
    return lines + [_table(["split", "shots", "comparison", "AUC difference", "95 % interval", "p"], table), ""]


def _plots(out: Path, df: pd.DataFrame, config: EvalConfig, models: list[str], splits: list[str],
           oracle: dict[str, float]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    main = df[df["variant"] == DEFAULT_VARIANT]
    figure, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), squeeze=False)
    for axis, split in zip(axes[0], splits):
        for model in models:
            sub = main[(main["model"] == model) & (main["split"] == split)].groupby("shots")["auc"]
            stats = sub.agg(["mean", "std"]).reset_index()
            axis.errorbar(stats["shots"], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                          label=model)
        axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        if split in oracle:
            axis.axhline(oracle[split], color="black", linestyle="--", linewidth=1, label="noise-free bound")
        axis.set_xscale("log", base=2)
        axis.set(title=f"AUC by shots: {split}", xlabel="few-shot training samples", ylabel="AUC")
    axes[0][-1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(out / "auc_by_shots.png", dpi=100)
    plt.close(figure)
    files.append(("AUC by model and shot count", "auc_by_shots.png"))

    largest = main.groupby("model")["shots"].max()
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(models)), 4.5))
    width = 0.8 / max(1, len(splits))
    for n, split in enumerate(splits):
        means = [main[(main["model"] == m) & (main["split"] == split)
                      & (main["shots"] == largest.get(m, -1))]["auc"].mean()
                 for m in models]
        axis.bar([i + n * width for i in range(len(models))], means, width, label=split)
    axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axis.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(models))],
                    [f"{m}\n({largest.get(m, 0)} shots)" for m in models], fontsize=8)
    axis.set(title="warm vs cold-start AUC (each model's largest shot count)", ylabel="AUC")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "warm_vs_cold.png", dpi=100)
    plt.close(figure)
    files.append(("warm vs cold-start", "warm_vs_cold.png"))

    for ablation in config.ablations:
        sub = df[df["ablation"] == ablation.name]
        if sub.empty:
            continue
        variants = [str(v) for v in ablation.values]
        shots = int(sub["shots"].max())
        figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(variants)), 4))
        for n, split in enumerate(splits):
            stats = [sub[(sub["variant"] == v) & (sub["split"] == split) & (sub["shots"] == shots)]["auc"]
                     for v in variants]
            axis.bar([i + n * width for i in range(len(variants))], [s.mean() for s in stats], width,
                     yerr=[s.std(ddof=1) if len(s) > 1 else 0 for s in stats], capsize=3, label=split)
        axis.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        axis.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(variants))], variants)
        axis.set(title=f"ablation {ablation.name} ({ablation.key}), {shots} shots", ylabel="AUC")
        axis.legend()
        figure.tight_layout()
        name = f"ablation_{ablation.name}.png"
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        files.append((f"ablation: {ablation.name}", name))
    return [f"### {title}\n\n![{title}]({name})\n" for title, name in files]


def _ablation_tables(df: pd.DataFrame, config: EvalConfig, splits: list[str]) -> list[str]:
    out = []
    for ablation in config.ablations:
        sub = df[df["ablation"] == ablation.name]
        if sub.empty:
            continue
        default_key = df[(df["model"] == ablation.model) & (df["variant"] == DEFAULT_VARIANT)]["settings_key"]
        shots = sorted(sub["shots"].unique())
        header = ["variant"] + [f"{split} AUC, {s} shots" for s in shots for split in splits] + ["fit s"]
        rows = []
        for value in ablation.values:
            rows_v = sub[sub["variant"] == str(value)]
            same = not default_key.empty and set(rows_v["settings_key"]) <= set(default_key)
            cells = [_cell(rows_v[(rows_v["split"] == split) & (rows_v["shots"] == s)]["auc"])
                     for s in shots for split in splits]
            fit = rows_v.drop_duplicates(["shots", "seed"])["fit_seconds"].mean()
            also = ", ".join(f"`{k}: {v}`" for k, v in ablation.also.get(str(value), {}).items())
            label = str(value) + (f" (with {also})" if also else "") + (" (= default)" if same else "")
            rows.append([label] + cells + [f"{fit:.1f}"])
        out += [f"### {ablation.name}: `{ablation.key}` of {ablation.model} "
                f"(seeds {sorted(sub['seed'].unique().tolist())})\n", _table(header, rows), ""]
    return out


def _search_table(main: pd.DataFrame, config: EvalConfig) -> list[str]:
    """Which settings each searched model chose on the validation split, per shot count."""
    searched = [m for m in config.models if m.search]
    if not searched or "chosen" not in main:
        return []
    rows = []
    for spec in searched:
        sub = main[(main["model"] == spec.name)].drop_duplicates(["shots", "seed"])
        for shots, group in sub.groupby("shots"):
            picks = group["chosen"].dropna().value_counts()
            rows.append([spec.name, str(shots), str(len(spec.search_points())),
                         "; ".join(f"{point} ×{count}" for point, count in picks.items()),
                         f"{group['val_auc'].mean():.3f}"])
    return ["## Validation-selected settings of the baselines\n",
            f"Each searched model fits every point of its grid (at most {config.max_search_points}, "
            f"the same budget for every baseline) on the few-shot draw and keeps the one with the best AUC on the "
            f"`{config.validation_split}` split; the tables above report that one.\n",
            _table(["model", "shots", "grid points", "chosen (× seeds)", "validation AUC"], rows), ""]


def _time_line(run: dict[str, Any], compute: float) -> str:
    invocations = run.get("invocations", [])
    line = f"- started {run.get('started')}; this invocation took {run.get('wall_seconds', 0) / 60:.1f} min"
    if len(invocations) > 1:
        runs = "; ".join(f"{i['started']}: {i['wall_seconds'] / 60:.1f} min, jobs run {i['jobs_run']}"
                         for i in invocations)
        line += (f"; {len(invocations)} finished invocations into this directory took "
                 f"{sum(i['wall_seconds'] for i in invocations) / 60:.1f} min of {run.get('jobs')} jobs ({runs}; an "
                 "interrupted invocation leaves no record)")
    return line + (f"; fitting and scoring of all rows {compute / 60:.1f} min (rows resumed from an earlier run count "
                   "their own time)")


def summary(main: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Each model's mean AUC over seeds (default settings), by split and shot count:
    ``{"cold": {"256": {"atflrec": 0.7, ...}, ...}, "warm": ...}``."""
    means = main.groupby(["split", "shots", "model"])["auc"].mean()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (split, shots, model), value in means.items():
        out.setdefault(str(split), {}).setdefault(str(int(shots)), {})[str(model)] = round(float(value), 4)
    return out


def write_report(out: Path, config: EvalConfig, run: dict[str, Any]) -> Path:
    """Write ``report.md`` and the PNGs into ``out`` (which holds ``results.parquet``)."""
    df = pd.read_parquet(out / RESULTS_FILE)
    models = [m.name for m in config.models if (df["model"] == m.name).any()]
    splits = [s for s in config.splits if (df["split"] == s).any()]
    main = df[df["variant"] == DEFAULT_VARIANT]
    oracle = run.get("oracle_auc", {})
    machine = run.get("machine", {})
    once = df.drop_duplicates(["model", "variant", "ablation", "shots", "seed"])
    compute = once["fit_seconds"].sum() + df["score_seconds"].sum()
    lines = [
        "# ATFLRec evaluation report\n",
        (f"- command: `{run['command']}`" if run.get("command")
         else "- run from Python (`run_evaluation`); config in `config.yaml`"),
        _time_line(run, compute),
        f"- machine: {machine.get('processor')}, {machine.get('cpus')} CPUs, "
        f"torch threads {machine.get('torch_threads')}"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU") + f"; {machine.get('platform')}",
        f"- samples `{run.get('samples')}` ({run.get('train_rows')} training rows to draw from); features "
        f"`{run.get('features')}`; items from `{run.get('data')}`",
        "- evaluation rows (the same for every model; seeded subsample): "
        + ", ".join(f"{k} {v} (`{config.splits[k]}` split)" for k, v in run.get("eval_rows", {}).items()),
        f"- few-shot sizes {config.shots}, seeds {config.seeds} (models may narrow both; see the tables)",
        "",
    ]
    if oracle:
        lines += ["Upper bound: the generator's noise-free like logit (read from the dataset's `hidden/` by this "
                  "report only) scores AUC " + ", ".join(f"{v:.3f} ({k})" for k, v in oracle.items())
                  + " on these rows.\n"]
    lines += _goal(df, config, oracle)
    lines += _significance(out, df, splits)
    lines += _metric_tables(main, models, splits, run)
    lines += _search_table(main, config)
    lines += ["## Fit time (seconds, mean over seeds)\n",
              "A stage shared between models (see below) counts at the model that trained it first.\n",
              _fit_table(main, models), ""]
    if config.ablations:
        lines += ["## Ablations\n", "AUC mean ± std over seeds; a variant equal to the model's default settings "
                  "reuses the default's results.\n"]
        lines += _ablation_tables(df, config, splits)
    kinds = {m.name: m.resolved_kind for m in config.models if m.name in models}
    lines += ["## How each model scores cold-start items\n",
              _table(["model", "kind", "cold-start items"],
                     [[m, k, RECOMMENDERS[k].cold_start] for m, k in kinds.items()]),
              "",
              "## Shared work\n",
              "LLM models trained on the same few-shot draw share trained adapters: the `separate` configuration's "
              "text adapter is the text-only model (same rows, seed, prompts, LoRA and optimiser settings) and its "
              "audio adapter the audio-only model; ablations that change only the audio side reuse the text adapter; "
              "the fusion stage trains on cached outputs of the frozen adapters. See `atflrec/baselines/llm.py`.\n",
              "## Plots\n"]
    lines += _plots(out, df, config, models, splits, oracle)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary(main), indent=2, sort_keys=True) + "\n")
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

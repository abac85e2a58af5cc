"""A small evaluation end to end: results, report, plots, metrics, resume, shared work, the CLI."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from atflrec.baselines import RECOMMENDERS, Context, build_recommender
from atflrec.cli import main
from atflrec.config import read_yaml
from atflrec.evaluation import run_evaluation
from atflrec.evaluation.config import plan_jobs
from atflrec.evaluation.runner import prepare_data
from atflrec.samples import few_shot


def test_results_hold_one_row_per_job_and_split(small_run) -> None:
    config, out, _ = small_run
    results = pd.read_parquet(out / "results.parquet")
    jobs = plan_jobs(config)
    assert len(results) == 2 * len(jobs)
    keys = results[["model", "variant", "ablation", "shots", "seed", "split"]]
    assert not keys.duplicated().any()
    assert set(results["split"]) == {"warm", "cold"}
    assert set(results["model"]) == {m.name for m in config.models}
    assert results[["auc", "log_loss", "fit_seconds"]].notna().all().all()
    assert ((results["auc"] >= 0) & (results["auc"] <= 1)).all()


def test_report_has_every_model_table_and_valid_plots(small_run) -> None:
    config, out, report = small_run
    text = report.read_text()
    for section in ("## Goal", "## AUC", "## GAUC", "## log loss", "## Fit time", "## Ablations",
                    "### pooling", "### fusion", "## How each model scores cold-start items"):
        assert section in text, section
    for model in config.models:
        assert f"| {model.name} |" in text
    assert "max (= default)" in text and "late_weighted (= default)" in text
    plots = ["auc_by_shots.png", "warm_vs_cold.png", "ablation_pooling.png", "ablation_fusion.png"]
    for name in plots:
        image = matplotlib.image.imread(out / name)  # raises unless a valid PNG
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert f"]({name})" in text
    assert read_yaml(out / "config.yaml")["models"][0]["name"] == "user_rate"


def test_metrics_in_the_results_agree_with_sklearn(small_run) -> None:
    config, out, _ = small_run
    results = pd.read_parquet(out / "results.parquet")
    data = prepare_data(config)
    for kind in ("popularity", "content"):
        chosen = results[(results["model"] == kind) & (results["shots"] == 16) & (results["seed"] == 1)]["chosen"]
        point = json.loads(chosen.iloc[0]) if chosen.notna().all() else {}  # a searched model's selected settings
        settings = {**next(m for m in config.models if m.name == kind).settings, **point}
        model = build_recommender(kind, settings)
        model.fit(few_shot(data.train, 16, 1).to_pylist(), Context(data.items, data.features, seed=1))
        for split, rows in data.evals.items():
            labels, scores = [r["label"] for r in rows], model.score(rows)
            row = results[(results["model"] == kind) & (results["shots"] == 16) & (results["seed"] == 1)
                          & (results["split"] == split)].iloc[0]
            assert row["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
            assert row["log_loss"] == pytest.approx(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)), abs=1e-9)
            assert row["n_eval"] == len(rows) == config.max_eval_samples


def test_identical_variants_share_results(small_run) -> None:
    _, out, _ = small_run
    results = pd.read_parquet(out / "results.parquet")
    default = results[(results["model"] == "atflrec") & (results["variant"] == "default")].sort_values("split")
    for ablation, value in (("pooling", "max"), ("fusion", "late_weighted")):
        same = results[(results["ablation"] == ablation) & (results["variant"] == value)].sort_values("split")
        assert list(same["auc"]) == list(default["auc"]) and list(same["fit_seconds"]) == list(default["fit_seconds"])
        assert set(same["settings_key"]) == set(default["settings_key"])
    other = results[(results["ablation"] == "pooling") & (results["variant"] == "mean")]
    assert set(other["settings_key"]).isdisjoint(default["settings_key"])


def test_a_rerun_skips_finished_jobs_and_redoes_changed_ones(small_run, tmp_path, capsys) -> None:
    config, out, _ = small_run
    before = pd.read_parquet(out / "results.parquet")
    copy = tmp_path / "again"
    copy.mkdir()
    (copy / "results.parquet").write_bytes((out / "results.parquet").read_bytes())
    capsys.readouterr()
    changed = config.model_copy(update={"models": [
        m.model_copy(update={"settings": {"epochs": 21}}) if m.name == "mf" else m for m in config.models
    ]})
    run_evaluation(changed, copy)
    printed = capsys.readouterr().out
    jobs = plan_jobs(changed)
    assert printed.count("skipped") == sum(j.model != "mf" for j in jobs)
    after = pd.read_parquet(copy / "results.parquet")
    untouched = before[before["model"] != "mf"].reset_index(drop=True)
    pd.testing.assert_frame_equal(after[after["model"] != "mf"].reset_index(drop=True), untouched)
    assert set(after[after["model"] == "mf"]["settings_key"]).isdisjoint(
        before[before["model"] == "mf"]["settings_key"])


def test_a_resumed_run_reuses_finished_rows_for_an_identical_variant(small_run, tmp_path, capsys) -> None:
    # Resume after the default ATFLRec finished but before its identical ablation variants ran:
    # those variants must take the default's rows, not retrain (which could draw other initial weights).
    config, out, _ = small_run
    before = pd.read_parquet(out / "results.parquet")
    copy = tmp_path / "resumed"
    copy.mkdir()
    kept = before[before["ablation"] == ""]
    kept.to_parquet(copy / "results.parquet", index=False)
    capsys.readouterr()
    run_evaluation(config, copy)
    printed = capsys.readouterr().out
    assert "atflrec pooling=max shots=8 seed=0 ..." not in printed
    assert "atflrec pooling=mean shots=8 seed=0 ..." in printed  # a different variant still trains
    after = pd.read_parquet(copy / "results.parquet")
    ablation_jobs = (before["ablation"] != "").sum() // len(after["split"].unique())
    run = json.loads((copy / "run.json").read_text())
    assert [i["jobs_run"] for i in run["invocations"]] == [ablation_jobs]
    run_evaluation(config, copy)  # nothing left to do: a second, empty invocation is recorded beside the first
    run = json.loads((copy / "run.json").read_text())
    assert [i["jobs_run"] for i in run["invocations"]] == [ablation_jobs, 0]
    assert "2 finished invocations into this directory took" in (copy / "report.md").read_text()
    default = kept[kept["model"] == "atflrec"].sort_values("split")
    for ablation, value in (("pooling", "max"), ("fusion", "late_weighted")):
        same = after[(after["ablation"] == ablation) & (after["variant"] == value)].sort_values("split")
        assert list(same["auc"]) == list(default["auc"]) and list(same["fit_seconds"]) == list(default["fit_seconds"])
        assert set(same["model"]) == {"atflrec"} and set(same["ablation"]) == {ablation}


def test_cli_quick_run(bench, eval_mapping, tmp_path) -> None:
    import yaml

    path = tmp_path / "eval.yaml"
    eval_mapping.pop("samples")
    eval_mapping["quick"] = {"shots": [8], "seeds": [1], "max_eval_samples": 12, "llm_max_steps": 1}
    path.write_text(yaml.safe_dump(eval_mapping))
    out = tmp_path / "out"
    code = main(["evaluate", "--config", str(path), "--samples", str(bench["samples"]), "--out", str(out), "--quick",
                 "--log-dir", str(tmp_path / "logs")])
    assert code == 0
    results = pd.read_parquet(out / "results.parquet")
    assert set(results["shots"]) == {8} and set(results["seed"]) == {1} and set(results["n_eval"]) == {12}
    assert set(results["ablation"]) == {""}  # --quick drops the ablations unless asked to keep them
    assert "atflrec evaluate --config" in (out / "report.md").read_text()


def test_every_registered_kind_is_in_the_small_run(small_run) -> None:
    config, _, _ = small_run
    assert {m.resolved_kind for m in config.models} == set(RECOMMENDERS)


def test_per_row_scores_back_the_metrics_and_the_significance_table(small_run) -> None:
    from atflrec.evaluation.outputs import EVAL_ROWS_FILE, RESULTS_FILE
    from atflrec.metrics import auc, users_with_both_labels

    _, out, report = small_run
    df = pd.read_parquet(out / RESULTS_FILE)
    rows = pd.read_parquet(out / EVAL_ROWS_FILE)
    for _, result in df.iterrows():
        split = rows[rows["split"] == result["split"]]
        assert len(result["scores"]) == len(split) == result["n_eval"]
        assert auc(split["label"], result["scores"]) == pytest.approx(result["auc"], nan_ok=True)
    text = report.read_text()
    section = text.split("## Significance of the headline comparisons")[1].split("\n## ")[0]
    assert " vs user_rate |" in section and " vs text_llm |" in section and "atflrec" in section
    assert "| p |" in section
    run = json.loads((out / "run.json").read_text())
    for split, n in run["gauc_users"].items():
        part = rows[rows["split"] == split]
        assert n == users_with_both_labels(part["label"], part["user_id"]) > 0
        assert f"{split} {n} users" in text


def test_searched_models_keep_the_candidate_best_on_validation(small_run) -> None:
    from atflrec.evaluation.outputs import RESULTS_FILE
    from atflrec.evaluation.runner import prepare_data

    config, out, report = small_run
    df = pd.read_parquet(out / RESULTS_FILE)
    data = prepare_data(config)
    labels = [r["label"] for r in data.validation]
    assert data.validation and {r["sample_id"] for r in data.validation}.isdisjoint(
        r["sample_id"] for rows in data.evals.values() for r in rows)
    spec = next(m for m in config.models if m.name == "content")
    for (shots, seed), group in df[df["model"] == "content"].groupby(["shots", "seed"]):
        train = few_shot(data.train, shots, seed).to_pylist()
        context = Context(data.items, data.features, seed, {})
        val = {}
        for point in spec.search_points():
            model = build_recommender("content", {**spec.settings, **point})
            model.fit(train, context)
            val[json.dumps(point, sort_keys=True)] = roc_auc_score(labels, model.score(data.validation))
        best = max(val.values())
        assert group["val_auc"].nunique() == 1 and group["val_auc"].iloc[0] == pytest.approx(best)
        assert val[group["chosen"].iloc[0]] == pytest.approx(best)
    assert df[df["model"] == "mf"]["chosen"].isna().all()
    assert "## Validation-selected settings of the baselines" in report.read_text()


def test_summary_json_holds_each_models_mean_auc_by_split_and_shots(small_run) -> None:
    config, out, _ = small_run
    df = pd.read_parquet(out / "results.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(config.splits)
    main = df[df["variant"] == "default"]
    for (split, shots, model), group in main.groupby(["split", "shots", "model"]):
        assert summary[split][str(shots)][model] == pytest.approx(group["auc"].mean(), abs=1e-4)
    assert set(summary["cold"]["8"]) == {m.name for m in config.models}

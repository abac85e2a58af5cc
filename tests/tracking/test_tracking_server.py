"""Train, tune and evaluate against a real MLflow server, read back through MLflow's own client:
params with the resolved values, per-epoch metrics, nested runs, artifacts and lineage both ways."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from atflrec.model.artifact import read_meta

EPOCHS = 2


def _model(bench: dict[str, Path]) -> dict[str, Any]:
    return {"base_model": str(bench["base"]), "encoder": {"n_mels": 8, "width": 16},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "fusion": {"strategy": "early"}}


def _train_mapping(bench: dict[str, Path]) -> dict[str, Any]:
    return {
        "model": _model(bench), "samples": str(bench["samples"]), "features": str(bench["features"]),
        "shots": 8, "seed": 0, "max_eval_samples": 8,
        "optim": {"lr": 1e-2, "encoder_lr": 1e-2, "batch_size": 4, "epochs": EPOCHS},
        "deepspeed": {"config": "deepspeed/zero2_cpu"},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    }


def _client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs(client, experiment: str, filter_string: str = "") -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id], filter_string, max_results=100)


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, path)}


def _assert_code_tags(tags: dict[str, str]) -> None:
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["atflrec.version.ray"].startswith("2.") and "atflrec.version.torch" in tags
    for key in ("atflrec.samples_fingerprint", "atflrec.dataset_fingerprint", "atflrec.features_fingerprint"):
        assert len(tags[key]) == 16, key


def test_a_ray_train_run_records_config_epochs_final_metrics_and_its_artifact(
        tracking_bench, mlflow_server, tmp_path) -> None:
    from atflrec.serving.schemas import ModelInfo
    from atflrec.serving.scorer import describe
    from atflrec.training.distributed import train
    from atflrec.training.distributed_config import TrainConfig

    config = TrainConfig.model_validate({
        **_train_mapping(tracking_bench), "out": str(tmp_path / "best"),
        "run": {"name": "tracked", "storage_path": str(tmp_path / "storage"), "keep_best": 1},
        "tracking": {"enabled": True, "uri": mlflow_server, "experiment": "train-test"},
    })
    outcome = train(config)

    meta = read_meta(outcome.exported)  # the artifact names its run ...
    assert meta["tracking"]["uri"] == mlflow_server
    client = _client(mlflow_server)
    run = client.get_run(meta["tracking"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    # ... and the run names the artifact
    assert run.data.tags["atflrec.artifact_path"] == outcome.exported == str((tmp_path / "best").resolve())
    assert run.data.tags["atflrec.kind"] == "train"
    assert run.data.tags["atflrec.base_model"] == str(tracking_bench["base"])
    _assert_code_tags(run.data.tags)
    params = run.data.params
    assert params["optim.epochs"] == str(EPOCHS) and params["model.lora.r"] == "4" and params["shots"] == "8"
    assert params["scaling.num_workers"] == "1" and params["eval_splits"] == '["val", "test", "cold"]'
    assert params["optim.schedule"] == "constant"  # a default: the resolved config, not only what was set

    for key in ("val_auc", "val_log_loss", "train_loss", "samples_per_s"):  # val GAUC: one val row per user, NaN
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == EPOCHS, key
        assert [m.step for m in history] == [h["global_step"] for h in outcome.history]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_auc")] == pytest.approx(
        [h["val_auc"] for h in outcome.history])
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("final_")}
    assert final == pytest.approx({f"final_{split}_{name}": value for split, values in outcome.metrics.items()
                                   for name, value in values.items() if math.isfinite(value)})
    assert "final_test_auc" in final
    assert {"model/atflrec_model.json", "model/adapters", "model/encoder.safetensors"} <= _artifacts(
        client, run.info.run_id, "model")
    assert not any("optimizer" in p for p in _artifacts(client, run.info.run_id, "model"))

    public = describe("m", outcome.exported, meta, public=True)  # what GET /v1/model shows
    shown = ModelInfo(**public, served_models=["m"], default_model="m", limits={}, catalogue_size=0)
    assert shown.tracking == {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "uri": mlflow_server}


def test_a_local_run_records_every_validation_and_its_artifact(tracking_bench, mlflow_server, tmp_path) -> None:
    from atflrec.training.local import LocalTrainConfig, train_local

    mapping = {k: v for k, v in _train_mapping(tracking_bench).items() if k not in ("deepspeed", "scaling")}
    config = LocalTrainConfig.model_validate({
        **mapping, "out": str(tmp_path / "local"), "eval_splits": ["val", "test"],
        "tracking": {"enabled": True, "uri": mlflow_server, "experiment": "local-test"}})
    result = train_local(config)

    run_id = read_meta(result.artifact)["tracking"]["run_id"]
    client = _client(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["atflrec.artifact_path"] == result.artifact and run.data.params["shots"] == "8"
    assert len(client.get_metric_history(run_id, "val_auc")) == EPOCHS
    assert run.data.metrics["final_test_auc"] == pytest.approx(result.metrics["test"]["auc"])


def test_a_search_is_a_run_with_each_trial_nested_under_it(tracking_bench, mlflow_server, tmp_path) -> None:
    from atflrec.tuning.search import run_search
    from atflrec.tuning.space import TuneSpace

    train = {**_train_mapping(tracking_bench), "eval_splits": ["val", "test"], "run": {"keep_best": 1}}
    space = TuneSpace.model_validate({
        "train": train, "space": {"model.lora.r": [2, 4]}, "num_samples": 2, "scheduler": "fifo", "seed": 0,
        "out": str(tmp_path / "search"),
        "tracking": {"enabled": True, "uri": mlflow_server, "experiment": "tune-test"},
    })
    best = run_search(space)

    client = _client(mlflow_server)
    (search,) = _runs(client, "tune-test", "tags.`atflrec.kind` = 'search'")
    assert search.info.status == "FINISHED"
    assert search.data.tags["atflrec.artifact_path"] == str(best)
    assert search.data.params["space.model.lora.r.choice"] == "[2, 4]" and search.data.params["num_samples"] == "2"
    assert {"best", "plots", "results.csv"} <= _artifacts(client, search.info.run_id)
    assert "best/atflrec_model.json" in _artifacts(client, search.info.run_id, "best")
    assert _artifacts(client, search.info.run_id, "plots")

    trials = _runs(client, "tune-test", f"tags.`mlflow.parentRunId` = '{search.info.run_id}'")
    assert len(trials) == 2
    for trial in trials:  # the resolved trial config holds the point the search sampled
        assert trial.data.params["model.lora.r"] == trial.data.tags["atflrec.knob.model.lora.r"] in ("2", "4")
    for trial in trials:
        assert trial.info.status == "FINISHED" and trial.data.tags["atflrec.trial_status"] == "completed"
        assert trial.data.params["optim.epochs"] == str(EPOCHS) and "tracking.enabled" not in trial.data.params
        assert len(client.get_metric_history(trial.info.run_id, "val_auc")) == EPOCHS
        assert "final_test_auc" in trial.data.metrics
        _assert_code_tags(trial.data.tags)
    # best/ names the trial run that trained it, and that run names best/
    producer = client.get_run(read_meta(best)["tracking"]["run_id"])
    assert producer.data.tags["mlflow.parentRunId"] == search.info.run_id
    assert producer.data.tags["atflrec.artifact_path"] == str(best)
    assert producer.data.tags["atflrec.trial_id"] == search.data.tags["atflrec.best_trial"]


def test_an_evaluation_logs_one_nested_run_per_model_shots_and_seed(tracking_bench, mlflow_server, tmp_path) -> None:
    from atflrec.evaluation import EvalConfig, run_evaluation

    config = EvalConfig.model_validate({
        "samples": str(tracking_bench["samples"]), "features": str(tracking_bench["features"]),
        "shots": [8], "seeds": [0, 1], "max_eval_samples": 20,
        "models": [{"name": "user_rate"}, {"name": "popularity"}, {"name": "mf", "settings": {"epochs": 5}}],
        "tracking": {"enabled": True, "uri": mlflow_server, "experiment": "eval-test"},
    })
    run_evaluation(config, tmp_path / "eval")

    client = _client(mlflow_server)
    (parent,) = _runs(client, "eval-test", "tags.`atflrec.kind` = 'evaluation'")
    assert parent.info.status == "FINISHED" and parent.data.params["seeds"] == "[0, 1]"
    assert {"report.md", "summary.json", "results.parquet", "plots"} <= _artifacts(client, parent.info.run_id)
    assert any(p.endswith(".png") for p in _artifacts(client, parent.info.run_id, "plots"))
    jobs = _runs(client, "eval-test", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted((j.data.params["model"], j.data.params["seed"]) for j in jobs) == [
        (m, s) for m in ("mf", "popularity", "user_rate") for s in ("0", "1")]
    for job in jobs:
        assert job.data.params["shots"] == "8" and job.info.status == "FINISHED"
        assert {"warm_auc", "cold_auc", "warm_log_loss", "fit_seconds"} <= set(job.data.metrics)
    mf = next(j for j in jobs if j.data.params["model"] == "mf")
    assert mf.data.params["settings.epochs"] == "5"


def test_resuming_reopens_the_run_of_the_same_identity(mlflow_server) -> None:
    from atflrec.tracking import TrackingConfig, open_run

    config = TrackingConfig(enabled=True, uri=mlflow_server, experiment="resume-test")
    first = open_run(config, kind="train", name="r", identity="train:/runs/r", params={"optim": {"lr": 0.1}})
    first.log_metrics({"val_auc": 0.6}, step=1)
    first.end("FAILED")
    again = open_run(config, kind="train", name="r", identity="train:/runs/r", resume=True,
                     params={"optim": {"lr": 0.1}, "seed": 3})
    other = open_run(config, kind="train", name="r", identity="train:/runs/other", resume=True)
    again.log_metrics({"val_auc": 0.7}, step=2)

    client = _client(mlflow_server)
    assert again.ref == first.ref and other.ref != first.ref
    run = client.get_run(first.ref.run_id)
    assert run.info.status == "RUNNING" and run.data.params == {"optim.lr": "0.1", "seed": "3"}
    assert [m.value for m in client.get_metric_history(first.ref.run_id, "val_auc")] == [0.6, 0.7]
    fresh = open_run(config, kind="train", name="r", identity="train:/runs/r")  # without resume: a new run
    assert fresh.ref != first.ref

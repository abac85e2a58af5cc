"""EvalConfig validation names the model and key at fault; jobs and --quick are planned as documented."""

from __future__ import annotations

import pytest

from atflrec.config import ConfigError, build_config
from atflrec.evaluation import EvalConfig, quick_config
from atflrec.evaluation.config import plan_jobs


def _config(**changes) -> dict:
    return {"models": [{"name": "popularity"}, {"name": "mf", "settings": {"dim": 8}},
                       {"name": "atflrec", "shots": [64], "seeds": [0]}], **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"models": [{"name": "knn"}]}, "models.knn.kind: unknown recommender 'knn'"),
    ({"models": [{"name": "mf", "settings": {"dims": 8}}]}, "models.mf.settings: dims: unknown key"),
    ({"models": [{"name": "mf", "settings": {"epochs": 0}}]},
     "models.mf.settings: epochs: Input should be greater than or equal to 1"),
    ({"models": [{"name": "a", "kind": "mf"}, {"name": "a", "kind": "popularity"}]}, "repeated names"),
    ({"models": [{"name": "text_llm", "settings": {"model": {"fusion": {"strategy": "early"}}}}]},
     "must be 'text_only'"),
    ({"ablations": [{"name": "pooling", "model": "lightgcn", "key": "model.encoder.pooling", "values": ["mean"]}]},
     "ablations.pooling.model: no model named 'lightgcn'"),
    ({"ablations": [{"name": "pooling", "model": "atflrec", "key": "model.encoder.pooling", "values": ["median"]}]},
     "ablations.pooling.settings: model.encoder.pooling: Value error, unknown pooling 'median'"),
    ({"llm": {"optim": {"lr": -1}}}, "models.atflrec.settings: optim.lr: Input should be greater than 0"),
    ({"models": [{"name": "atflrec", "settings": {"model": {"fusion": {"strategy": "early", "history_share": True}}}}]},
     "history_share: True: strategy 'early' has no fusion stage"),
    ({"models": [{"name": "atflrec", "settings": {"model": {"fusion": {"history_share": True}}}}],
      "ablations": [{"name": "lora", "model": "atflrec", "key": "model.fusion.strategy", "values": ["early"]}]},
     "ablations.lora.settings: model.fusion: Value error, history_share: True: strategy 'early'"),
    ({"ablations": [{"name": "lora", "model": "atflrec", "key": "model.fusion.strategy", "values": ["early"],
                     "also": {"late_head": {"model.fusion.fit_on": "train"}}}]},
     "also: ['late_head'] are not among values ['early']"),
    ({"shots": [16, 16]}, "shots: Value error, repeated values"),
    ({"models": [{"name": "mf", "search": {"dims": [8, 16]}}]}, "models.mf.search.settings: dims: unknown key"),
    ({"models": [{"name": "mf", "search": {"dim": [4, 8, 16], "l2": [0.1, 1.0, 10.0]}}]},
     "models.mf.search: 9 settings; give 1 to max_search_points=8"),
    ({"models": [{"name": "text_llm", "search": {"optim.lr": [1e-4, 1e-3]}}]},
     "models.text_llm.search: LLM models select by validation inside training"),
])
def test_bad_configs_name_what_is_wrong(changes, message) -> None:
    with pytest.raises(ConfigError) as error:
        build_config(EvalConfig, _config(**changes))
    assert message in str(error.value)


def test_jobs_cover_each_models_shots_and_seeds_grouped_by_draw() -> None:
    config = build_config(EvalConfig, _config(
        shots=[16, 64], seeds=[0, 1],
        ablations=[{"name": "rank", "model": "atflrec", "key": "model.lora.r", "values": [4, 8]}],
    ))
    jobs = plan_jobs(config)
    assert len(jobs) == 2 * 4 + 1 + 2  # popularity, mf: 2 shots x 2 seeds; atflrec 1; its ablation 2
    assert [(j.shots, j.seed) for j in jobs] == sorted((j.shots, j.seed) for j in jobs)
    ranks = {j.variant: j.settings.model.lora.r for j in jobs if j.ablation == "rank"}
    assert ranks == {"4": 4, "8": 8}
    default = next(j for j in jobs if j.model == "atflrec" and not j.ablation)
    assert next(j for j in jobs if j.variant == "8").settings_key == default.settings_key  # r=8 is the default


def test_an_ablation_value_takes_the_settings_it_needs_from_also() -> None:
    fused = {"strategy": "late_weighted", "history_share": True, "fit_on": "validation"}
    config = build_config(EvalConfig, _config(
        models=[{"name": "atflrec", "settings": {"model": {"fusion": fused}}}],
        ablations=[{"name": "lora", "model": "atflrec", "key": "model.fusion.strategy",
                    "values": ["early", "late_weighted"],
                    "also": {"early": {"model.fusion.history_share": False, "model.fusion.fit_on": "train"}}}]))
    variants = {j.variant: j.settings.model.fusion for j in plan_jobs(config) if j.ablation == "lora"}
    assert (variants["early"].strategy, variants["early"].history_share, variants["early"].fit_on) == (
        "early", False, "train")
    assert variants["late_weighted"].model_dump() == {**variants["late_weighted"].model_dump(), **fused}


def test_llm_defaults_merge_under_each_models_own_settings() -> None:
    config = build_config(EvalConfig, _config(
        llm={"optim": {"lr": 1e-3, "epochs": 2}},
        models=[{"name": "atflrec", "settings": {"optim": {"epochs": 5}}}, {"name": "text_llm"}],
    ))
    atflrec, text = (job.settings for job in plan_jobs(config)[:2])
    assert (atflrec.optim.lr, atflrec.optim.epochs) == (1e-3, 5)
    assert (text.optim.lr, text.optim.epochs, text.model.fusion.strategy) == (1e-3, 2, "text_only")


def test_quick_shrinks_shots_seeds_rows_and_llm_steps() -> None:
    config = build_config(EvalConfig, _config(
        ablations=[{"name": "rank", "model": "atflrec", "key": "model.lora.r", "values": [4, 8]}],
        quick={"shots": [8], "seeds": [3], "max_eval_samples": 20, "llm_max_steps": 1},
    ))
    quick = quick_config(config)
    jobs = plan_jobs(quick)
    assert {(j.shots, j.seed) for j in jobs} == {(8, 3)} and quick.max_eval_samples == 20
    assert len(jobs) == 3 and not quick.ablations
    assert next(j for j in jobs if j.model == "atflrec").settings.optim.max_steps == 1


def test_a_search_is_part_of_what_identifies_a_trained_model() -> None:
    plain = plan_jobs(build_config(EvalConfig, _config()))
    searched = plan_jobs(build_config(EvalConfig, _config(models=[{"name": "popularity"}, {
        "name": "mf", "settings": {"dim": 8}, "search": {"l2": [0.1, 1.0]}}, {"name": "atflrec"}])))
    mf_plain = next(j for j in plain if j.model == "mf")
    mf_searched = next(j for j in searched if j.model == "mf")
    assert [point for point, _ in mf_searched.candidates] == ['{"l2": 0.1}', '{"l2": 1.0}']
    assert [s.l2 for _, s in mf_searched.candidates] == [0.1, 1.0]
    assert all(s.dim == 8 for _, s in mf_searched.candidates)
    assert mf_plain.settings_key != mf_searched.settings_key and not mf_plain.candidates

"""``atflrec tune``: a Ray Tune search whose trials are Ray Train runs (Train V2 pattern).

Layout of ``OUT`` (a volume every node mounts, or a remote URI such as ``s3://bucket/prefix``:
trials run on any node and write their runs there; the driver writes the rest)::

    space.yaml           the space the search started with (``--resume`` checks it is unchanged)
    search/              Tune's experiment: trial states, every trial's reports (trial-<id>/)
    trials/trial-<id>/   each trial's Ray Train run: its best ``run.keep_best`` checkpoints, its
                         report log (reports.jsonl) and, once finished, trial_outcome.json
    results.parquet/.csv one row per trial: knobs, status, best validation AUC, reports, test AUC
    curves.parquet       one row per report of every trial
    plots/               validation AUC against each knob; learning curves with ASHA's stops
    best/                the best trial's best checkpoint (an artifact serving loads), its config

With a remote OUT the tables and plots are made in a local temporary directory and uploaded once
the search ends, and best/ is published with its description last (:mod:`atflrec.storage`).

Before any trial starts, the feature store is made to hold every Mel-bin count of the space
(:mod:`atflrec.tuning.features`). ASHA's time unit is ``model_evals``: the validations of the whole
model, which only the last stage's reports carry (see :mod:`atflrec.training.worker`). A
separate-adapter trial (text, audio, fusion stages) is thus first compared at a rung once its
fusion stage has been validated, on the whole model's AUC, never on its text stage alone.
Trials reserve no CPU (``trial_resources``: memory by default); their Train workers reserve the
real resources, so the number of trials at once is what the cluster fits of their workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from atflrec.config import ConfigError, dump_config, load_config
from atflrec.console import say
from atflrec.ray_connect import connect
from atflrec.storage import absolute_uri, join, local_dir, read_text, write_text
from atflrec.tracking import ARTIFACT_PATH, Run, RunRef, split_metrics, tracked
from atflrec.training.tracking import training_tags
from atflrec.training.worker import MODEL_EVALS
from atflrec.tuning.features import ensure_features
from atflrec.tuning.placement import ReleaseOrphanedReservations
from atflrec.tuning.plots import asha_rungs, plot_curves, plot_knobs
from atflrec.tuning.progress import TrialProgress
from atflrec.tuning.results import (
    RESULTS,
    PruneStoppedTrials,
    SearchError,
    TrialRecord,
    best_trial,
    export_best,
    prune_stopped,
    records,
    write_tables,
)
from atflrec.tuning.space import SearchPlan, TuneSpace
from atflrec.tuning.space import plan as make_plan
from atflrec.tuning.trial import TRIAL_ID, run_trial, trial_dirname

EXPERIMENT, RUNS, BEST, PLOTS, SPACE_FILE = "search", "trials", "best", "plots", "space.yaml"
# What ASHA compares trials by at each rung: validation AUC, at rungs counted in whole-model
# validations (TIME_ATTR), so at a rung every trial's AUC is its whole model's. Train ranks a run's
# checkpoints, and the search its trials, by selection_score (validation AUC, finished models first).
METRIC = "val_auc"
TIME_ATTR = MODEL_EVALS


def concurrent_trials(plan: SearchPlan, cluster: dict[str, float]) -> int:
    """How many trials' Train workers the cluster fits at once (at least 1)."""
    if plan.space.max_concurrent_trials is not None:
        return plan.space.max_concurrent_trials
    scaling = plan.trial_config({}).scaling
    need = {r: v * scaling.num_workers for r, v in scaling.resources_per_worker().items()}
    for r, v in plan.space.trial_resources.items():
        key = r.upper() if r.lower() in ("cpu", "gpu") else r
        need[key] = need.get(key, 0.0) + v
    fits = []
    for resource, amount in need.items():
        if amount > 0:
            have = cluster.get(resource, 0.0)
            if have < amount:
                say(f"note: each trial needs {resource} {amount:g} but the cluster has {have:g} now; "
                    "trials wait for the autoscaler (set max_concurrent_trials for an autoscaling cluster)")
            fits.append(math.floor(have / amount + 1e-9))
    return max(1, min(fits, default=1))


def _scheduler(plan: SearchPlan) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.space.scheduler == "fifo":
        return FIFOScheduler()
    asha = plan.space.asha
    # stop_last_trials=False: a trial at its last report ends by itself, after its final evaluation.
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=asha.max_t or plan.max_model_evals,
                         grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
                         brackets=asha.brackets, stop_last_trials=False)


def _search_alg(plan: SearchPlan, concurrency: int) -> tuple[Any, int | None]:
    """The search algorithm and the TuneConfig concurrency cap (random search caps itself)."""
    if plan.space.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except (ImportError, AssertionError) as exc:
            raise ConfigError(f"search: optuna needs the optuna package (pip install optuna): {exc}") from None
        return OptunaSearch(seed=plan.space.seed), concurrency
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=plan.space.seed, max_concurrent=concurrency), None


def _trainable(plan: SearchPlan, runs: str, search_run: RunRef | None) -> Any:
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, base=plan.base, runs=runs, search_run=search_run),
                               dict(plan.space.trial_resources))


def _new_tuner(plan: SearchPlan, out: str, search_run: RunRef | None) -> Any:
    import ray
    from ray import tune

    runs = join(out, RUNS)
    concurrency = concurrent_trials(plan, ray.cluster_resources())
    say(f"search: {plan.space.num_samples} trials, {plan.space.scheduler}, {plan.space.search} search, "
        f"at most {concurrency} at once; knobs: {', '.join(plan.knobs)}")
    search_alg, max_concurrent = _search_alg(plan, concurrency)
    return tune.Tuner(
        _trainable(plan, runs, search_run),
        param_space={key: d.to_tune() for key, d in plan.space.space.items()},
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=plan.space.num_samples, scheduler=_scheduler(plan),
            search_alg=search_alg, max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=out,
                                  failure_config=tune.FailureConfig(max_failures=plan.space.trial_max_failures),
                                  callbacks=[PruneStoppedTrials(plan.base, runs),
                                             ReleaseOrphanedReservations(), TrialProgress(plan.space.num_samples)]),
    )


def _check_same_space(space: TuneSpace, out: str) -> None:
    saved = yaml.safe_load(read_text(join(out, SPACE_FILE)) or "") or {}
    given = space.model_dump(mode="json")
    differ = sorted(k for k in given if k not in ("address", "out", "tracking") and given[k] != saved.get(k))
    if differ:
        raise ConfigError(f"--resume: {', '.join(differ)} differ from the space the search in {out} started with "
                          f"({join(out, SPACE_FILE)}); resume with that space, or start a new search with another "
                          "--out")


def _check_out(space: TuneSpace, out: str, resume: bool) -> None:
    """A new search needs a fresh OUT; ``--resume`` needs the search that OUT holds, unchanged."""
    from ray import tune

    exists = tune.Tuner.can_restore(join(out, EXPERIMENT))
    if exists and not resume:
        raise SearchError(f"a search already exists in {out}; pass --resume to continue it, or choose another --out")
    if resume and not exists:
        raise SearchError(f"--resume: no search to resume in {out}")
    if resume:
        _check_same_space(space, out)


# Ray Tune copies these from the driver's environment into every trial actor's runtime_env, which Ray
# logs on each node (runtime_env_agent.log) and shows in its actor table. Trials, like every Ray
# worker, read credentials from their node's environment (cluster/README.md, "Object storage").
AWS_KEYS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def _keep_keys_out_of_runtime_envs() -> None:
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = class_cache.ENV_VARS_TO_PROPAGATE - AWS_KEYS


def _tuner(plan: SearchPlan, out: str, resume: bool, search_run: RunRef | None) -> Any:
    from ray import tune

    _keep_keys_out_of_runtime_envs()

    # Tune saves the search's state at most every 10 s by default; a search killed in that window
    # would run a just-finished trial again on --resume. The state is small: save it every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if resume:
        say(f"resuming the search in {out}: finished trials are kept, unfinished and failed ones continue")
        return tune.Tuner.restore(join(out, EXPERIMENT), _trainable(plan, join(out, RUNS), search_run),
                                  resume_unfinished=True, restart_errored=True)
    write_text(join(out, SPACE_FILE), dump_config(plan.space))
    return _new_tuner(plan, out, search_run)


def _track_search(run: Run, trials: list[TrialRecord], counts: dict[str, int], best: TrialRecord, out: Path,
                  target: str) -> None:
    """The search's outcome on its run (best trial, counts, tables, plots, best/ and its path; a remote
    best/ by its URI only), and
    each trial's run closed with its status: ASHA ends a stopped trial's process before it can close
    its run (or while it ends it as FAILED)."""
    statuses = {t.trial_id: t.status for t in trials}
    run.log_metrics({"best_val_auc": best.best["val_auc"], **{f"trials_{s}": n for s, n in counts.items()},
                     **split_metrics((best.outcome or {}).get("metrics", {}), prefix="best")})
    run.log_file(out / f"{RESULTS}.csv")
    run.log_dir(out / PLOTS, PLOTS)
    run.log_model(target, BEST)
    run.set_tags({ARTIFACT_PATH: target, "atflrec.best_trial": best.trial_id})
    ending = {"completed": "FINISHED", "stopped": "KILLED", "error": "FAILED"}
    for child in run.children():
        trial_id = child.data.tags.get(TRIAL_ID)
        if trial_id not in statuses:
            continue
        trial = Run(RunRef(run.ref.uri, run.ref.experiment_id, child.info.run_id), run.client)
        trial.set_tags({"atflrec.trial_status": statuses[trial_id],
                        **({ARTIFACT_PATH: target} if trial_id == best.trial_id else {})})
        if child.info.status != ending[statuses[trial_id]]:
            trial.end(ending[statuses[trial_id]])


def run_search(space: str | Path | TuneSpace, out_dir: str | Path | None = None, *,
               overrides: Sequence[str] = (), resume: bool = False) -> str:
    """Run (or with ``resume`` continue) a search; returns ``OUT/best``, the best trial's artifact.

    ``space`` is a space file or a :class:`TuneSpace`; ``overrides`` are ``key=value`` overrides of
    the space's keys (e.g. ``train.samples=runs/demo/samples``); ``out_dir`` replaces ``out``.
    """
    if not isinstance(space, TuneSpace):
        space = load_config(TuneSpace, space, list(overrides))
    elif overrides:
        raise ConfigError("overrides apply to a space file; set them on the TuneSpace instead")
    if out_dir is not None:
        space = space.model_copy(update={"out": str(out_dir)})
    plan = make_plan(space)
    if plan.base.get("samples") is None:
        raise ConfigError("train.samples: set the samples directory (e.g. train.samples=runs/demo/samples)")
    out = absolute_uri(space.out).rstrip("/")
    runs = join(out, RUNS)
    _check_out(space, out, resume)
    ensure_features(plan)  # before Ray starts: a missing Mel-bin count fails at once
    with tracked(space.tracking, kind="search", name=f"search {out.rsplit('/', 1)[-1]}", identity=f"search:{out}",
                 resume=resume, params=space.model_dump(mode="json")) as run:
        if run:
            run.set_tags(training_tags(plan.trial_config({})))
        connect(space.address)
        grid = _tuner(plan, out, resume, run.ref).fit()

        trials = records(grid, plan, runs)
        best = best_trial(trials)
        target = export_best(best, join(out, BEST))
        removed = prune_stopped(trials, runs, best)
        if space.export is not None:
            export_best(best, space.export)
        counts = {s: sum(t.status == s for t in trials) for s in ("completed", "stopped", "error")}
        with local_dir(out) as written:  # OUT itself, or a directory uploaded to the remote OUT
            table, curves = write_tables(trials, plan, written)
            (written / PLOTS).mkdir(exist_ok=True)
            plot_knobs(table, plan, written / PLOTS)
            rungs = asha_rungs(space.asha.grace_period, space.asha.reduction_factor,
                               space.asha.max_t or plan.max_model_evals)
            plot_curves(curves, rungs if space.scheduler == "asha" else [], written / PLOTS)
            if run:
                _track_search(run, trials, counts, best, written, target)
    retried = sum(t.attempts > 1 for t in trials)
    replaced = sum(t.worker_group_replaced for t in trials)
    say(f"search done: {counts['completed']} completed, {counts['stopped']} stopped by ASHA, "
        f"{counts['error']} failed, {retried} restarted (resuming their runs), "
        f"{replaced} with a lost worker replaced inside the run; "
        f"stopped trials' checkpoints pruned as they stopped ({removed} left over, pruned now)")
    say(f"best trial {best.trial_id}: validation AUC {best.best['val_auc']:.4f} "
        f"({', '.join(f'{k}={v}' for k, v in best.knobs.items())})")
    say(f"results: {join(out, RESULTS + '.csv')}; plots: {join(out, PLOTS)}; best: {target}")
    return target


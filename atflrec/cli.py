"""``atflrec <verb>``: one command-line entry point whose verbs follow the pipeline stages.

Verbs that take a config accept ``--config FILE`` plus trailing ``key=value`` overrides; their
flags are shorthands for the most common keys, named, typed and described by the config's own
fields (imported only when such a flag is given or help is shown). Each verb's flags sit next to
its handler. Heavy libraries are imported inside the handlers so ``atflrec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atflrec.console import say
from atflrec.errors import UserError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

    from atflrec.cluster.jobs import Jobs

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction, private


# --- flags from config fields ----------------------------------------------------------------

def _config_model(ref: str) -> type[BaseModel]:
    """``"module:Class"``, imported (config modules pull in torch or Ray: only when needed)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _field(ref: str, key: str) -> FieldInfo:
    return _config_model(ref).model_fields[key]


class FieldValue:
    """argparse ``type`` of a flag that sets a config key: checks the text against the field's
    type when the flag is given (a Literal's choices, numbers) and returns its value (a number
    field's as a number); a list field takes comma-separated items."""

    def __init__(self, ref: str, key: str) -> None:
        self.ref, self.key = ref, key
        self.__name__ = key  # argparse names the type in its error messages

    def __call__(self, text: str) -> str | int | float:
        annotation = _field(self.ref, self.key).annotation
        kind = annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None -> X
            kind = next(a for a in typing.get_args(annotation) if a is not type(None))
        if typing.get_origin(kind) is typing.Literal and text not in typing.get_args(kind):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(map(str, typing.get_args(kind)))}")
        if typing.get_origin(kind) is list:
            return "[" + text + "]"  # "40,80" -> the YAML list [40,80]
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                wanted = "an integer" if kind is int else "a number"
                raise argparse.ArgumentTypeError(f"not {wanted}: {text!r}") from None
        return text


class ConfigSwitch(argparse.Action):
    """A flag without a value that sets a boolean config key to true (``--prune``)."""

    def __init__(self, option_strings: list[str], dest: str, ref: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.ref = ref

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, "true")


class HelpFromConfig(argparse.HelpFormatter):
    """The help of a config-key flag is the field's description: one text for the flag and the YAML."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action.type, FieldValue):
            return _field(action.type.ref, action.type.key).description
        if isinstance(action, ConfigSwitch):
            return _field(action.ref, action.dest).description
        return super()._get_help_string(action)


def _config_flags(parser: argparse.ArgumentParser, ref: str, keys: tuple[str, ...], with_file: bool = True,
                  switches: tuple[str, ...] = ()) -> None:
    """A flag per config key in ``keys`` (one that takes a value) and ``switches`` (a boolean set
    true by the bare flag), and (``with_file``) ``--config`` and trailing ``key=value`` overrides:
    what :func:`_stage_config` turns into the verb's config."""
    if with_file:
        parser.add_argument("--config", help="YAML config: a shipped one's name (atflrec configs list) or a file")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1")
    for key in keys:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=FieldValue(ref, key), help="(the config's)")
    for key in switches:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, action=ConfigSwitch, ref=ref,
                            help="(the config's)")
    parser.set_defaults(config_model=ref, shorthands=keys + switches)


def _stage_config(args: argparse.Namespace) -> Any:
    """The verb's config: ``--config`` file, then the flags given, then ``key=value`` overrides
    (which win)."""
    from atflrec.config import load_config

    given = [f"{key}={getattr(args, key)}" for key in args.shorthands if getattr(args, key, None) is not None]
    return load_config(_config_model(args.config_model), args.config, given + list(args.overrides))


def _verb(verbs: Subparsers, name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=text, formatter_class=HelpFromConfig)
    parser.set_defaults(handler=handler)
    return parser


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    """The long verbs print only their own lines; other programs' output goes to a log file."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print Ray's, DeepSpeed's and transformers' output here too (default: to the log)")
    parser.add_argument("--log-dir", help="folder of the log file (default: runs/logs; the demo's: WORKDIR/logs)")


# --- data ------------------------------------------------------------------------------------------

def _data_synth(args: argparse.Namespace) -> int:
    from atflrec.data.synth import generate

    config = _stage_config(args)
    summary = generate(config, args.out)
    say(summary.describe())
    return 0


def _data_validate(args: argparse.Namespace) -> int:
    from atflrec.data.validate import validate_dataset

    report = validate_dataset(args.dir)
    say(report.describe())
    return 0 if report.usable else 1


def _data_import_microlens(args: argparse.Namespace) -> int:
    from atflrec.data.microlens import import_microlens

    config = _stage_config(args)
    summary = import_microlens(args.src, args.out, config)
    say(summary.describe())
    return 0


def _data_import_instructions(args: argparse.Namespace) -> int:
    from atflrec.samples.instructions import import_instructions

    count = import_instructions(args.file, args.out, split=args.split)
    say(f"wrote {count} {args.split} samples to {args.out}")
    return 0


def _data_parsers(verbs: Subparsers) -> None:
    data = verbs.add_parser("data", help="create, import and validate datasets")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")

    synth = _verb(data_verbs, "synth", _data_synth, "write the built-in benchmark dataset")
    synth.add_argument("--out", required=True, help="output dataset directory")
    _config_flags(synth, "atflrec.data.synth:SynthConfig", ("users", "items", "seed"))

    validate = _verb(data_verbs, "validate", _data_validate, "check a dataset directory; non-zero exit if unusable")
    validate.add_argument("dir", help="dataset directory")

    microlens = _verb(data_verbs, "import-microlens", _data_import_microlens, "import MicroLens's published layout")
    microlens.add_argument("src", help="MicroLens directory (pairs CSV, titles CSV, videos or audio)")
    microlens.add_argument("--out", required=True, help="output dataset directory")
    _config_flags(microlens, "atflrec.data.microlens:MicroLensImportConfig", ("negatives_per_positive", "seed"))

    instructions = _verb(data_verbs, "import-instructions", _data_import_instructions,
                         "import Alpaca-style instruction JSON (TALLRec) as text-only samples")
    instructions.add_argument("file", help="JSON list of {instruction, input, output} records")
    instructions.add_argument("--out", required=True, help="samples directory (one Parquet file per split)")
    instructions.add_argument("--split", default="train", help="split to write (default: train)")


# --- features --------------------------------------------------------------------------------------

def _features(args: argparse.Namespace) -> int:
    from atflrec.features.pipeline import build_feature_store

    config = _stage_config(args)
    summary = build_feature_store(args.data, args.out, config)
    say(summary.describe())
    return 0


def _features_parser(verbs: Subparsers) -> None:
    features = _verb(verbs, "features", _features, "Kaldi Mel filter-bank features into a Parquet store (Ray Data)")
    features.add_argument("--data", required=True, help="dataset directory (format v1)")
    features.add_argument("--out", required=True, help="feature store: local path or URI (s3://, gs://)")
    _config_flags(features, "atflrec.features.pipeline:FeatureConfig", ("n_mels", "clip_seconds", "address"),
                  switches=("prune",))
    _add_output_args(features)


# --- samples and single-process training -----------------------------------------------------------

def _samples(args: argparse.Namespace) -> int:
    from atflrec.data.format import load_dataset
    from atflrec.samples import make_samples

    config = _stage_config(args)
    counts = make_samples(load_dataset(args.data), args.out, config)
    say(", ".join(f"{split} {n}" for split, n in counts.items()) + f" samples in {args.out}")
    return 0


def _samples_parser(verbs: Subparsers) -> None:
    samples = _verb(verbs, "samples", _samples, "instruction samples with warm and cold-start splits")
    samples.add_argument("--data", required=True, help="dataset directory (format v1)")
    samples.add_argument("--out", required=True, help="samples directory to write")
    _config_flags(samples, "atflrec.samples:SampleConfig", ("history_len", "seed"))


def _train_local(args: argparse.Namespace) -> int:
    from atflrec.training.local import train_local

    config = _stage_config(args)
    result = train_local(config)
    if result.artifact is not None:
        say(f"artifact: {result.artifact}")
    return 0


def _train_local_parser(verbs: Subparsers) -> None:
    train_local = _verb(verbs, "train-local", _train_local, "train and evaluate one model in this process (no Ray)")
    _config_flags(train_local, "atflrec.training.local:LocalTrainConfig",
                  ("samples", "features", "out", "shots", "seed"))
    _add_output_args(train_local)


# --- Ray Train and Ray Tune ------------------------------------------------------------------------

def _train(args: argparse.Namespace) -> int:
    from atflrec.training.distributed import train

    config = _stage_config(args)
    outcome = train(config, resume=args.resume)
    say(f"run: {outcome.run_path}")
    if outcome.resumed_from is not None:
        where = outcome.resumed_from
        optimizer = "restored" if where.get("optimizer_restored") else "restarted"
        say(f"resumed at stage {where['stage_index']}, epoch {where['epoch']}, step {where['global_step']} "
            f"(optimizer state {optimizer})")
    if outcome.worker_groups > 1:
        say(f"worker groups started: {outcome.worker_groups} (a lost worker is replaced from the last checkpoint; "
            "--resume starts one)")
    for split, metrics in outcome.metrics.items():
        say(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if outcome.exported is not None:
        say(f"best checkpoint exported to {outcome.exported}")
    return 0


def _train_parser(verbs: Subparsers) -> None:
    train = _verb(verbs, "train", _train, "fine-tune with Ray Train and DeepSpeed (any number of workers)")
    _config_flags(train, "atflrec.training.distributed_config:TrainConfig", ("samples", "features", "out", "address"))
    train.add_argument("--resume", action="store_true",
                       help="continue the run named run.name from its latest checkpoint")
    _add_output_args(train)


def _tune(args: argparse.Namespace) -> int:
    from atflrec.tuning.search import run_search

    space = _stage_config(args)
    run_search(space, resume=args.resume)
    return 0


def _tune_parser(verbs: Subparsers) -> None:
    tune = _verb(verbs, "tune", _tune, "hyperparameter search with Ray Tune (each trial a Ray Train run)")
    tune.add_argument("--space", dest="config", required=True, metavar="NAME|FILE",
                      help="search space: a shipped one's name (e.g. tune/default) or a file")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="overrides of the space's keys, e.g. train.samples=DIR")
    _config_flags(tune, "atflrec.tuning.space:TuneSpace",
                  ("num_samples", "scheduler", "search", "address", "data", "out"), with_file=False)
    tune.add_argument("--resume", action="store_true", help="continue the search in --out; finished trials are kept")
    _add_output_args(tune)


# --- shipped configs -------------------------------------------------------------------------------

SUMMARY_WIDTH = 100


def _summary(path: Path) -> str:
    """A config's one-line summary: the first sentence of its first comment paragraph after the
    command that runs it (a DeepSpeed JSON file: of its ``_comment``)."""
    if path.suffix == ".json":
        text = str(json.loads(path.read_text()).get("_comment", ""))
    else:
        paragraph: list[str] = []
        for line in path.read_text().splitlines():
            words = line.removeprefix("#").strip()
            if not line.startswith("#") or (paragraph and (not words or words.startswith("- "))):
                break
            if words and not words.startswith("atflrec "):
                paragraph.append(words)
        text = " ".join(paragraph)
    sentence = re.match(r"(.*?(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)
    text = sentence.group(1) if sentence else text
    return text if len(text) <= SUMMARY_WIDTH else text[:SUMMARY_WIDTH].rsplit(" ", 1)[0] + " ..."


def _configs(args: argparse.Namespace) -> int:
    from atflrec.config import find_config, packaged_configs

    if args.action == "show":
        say(find_config(args.name).read_text(), end="")
        return 0
    configs = packaged_configs()
    width = max(map(len, configs))
    for name, path in configs.items():
        say(f"{name:<{width}}  {_summary(path)}")
    return 0


def _configs_parser(verbs: Subparsers) -> None:
    configs = _verb(verbs, "configs", _configs, "the shipped configs (name them with --config / --space)")
    config_actions = configs.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_actions.add_parser("list", help="every shipped config's name and summary")
    show = config_actions.add_parser("show", help="print a shipped config (e.g. to start your own from it)")
    show.add_argument("name", help="its name, e.g. train/cpu")


# --- model -----------------------------------------------------------------------------------------

def _model_fetch(args: argparse.Namespace) -> int:
    from atflrec.base_model.fetch import DEFAULT_MODEL, fetch_model

    path = fetch_model(args.name or DEFAULT_MODEL, cache_dir=args.cache_dir, force=args.force)
    say(path)
    return 0


def _model_parser(verbs: Subparsers) -> None:
    model = verbs.add_parser("model", help="base models")
    model_verbs = model.add_subparsers(dest="model_verb", required=True, metavar="ACTION")
    fetch = _verb(model_verbs, "fetch", _model_fetch, "fetch a base model into the local cache")
    fetch.add_argument("name", nargs="?", help="model name (default: the built-in SmolLM2-135M-Instruct)")
    fetch.add_argument("--cache-dir", help="cache directory (default: ~/.cache/atflrec/models)")
    fetch.add_argument("--force", action="store_true", help="rebuild even if cached")


# --- cluster: pipeline verbs as Ray jobs -----------------------------------------------------------

def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the head's Jobs API, http://HEAD:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")
    parser.add_argument("--runtime-env", help="runtime_env YAML for the job, e.g. cluster/runtime_env.yaml")
    parser.add_argument("--job-id", help="submission id for the job (default: one Ray generates)")
    parser.add_argument("--wait", action="store_true", help="stream the job's logs; exit 1 unless it SUCCEEDED")


def _submit_command(args: argparse.Namespace) -> list[str]:
    """The verb and its arguments. Submit's own options may also follow them (``atflrec submit
    features --data D --out S --address URL``), so they are taken out of the verb's arguments
    here: ``--address`` always names the head, since a job's stage joins its own cluster."""
    late = argparse.ArgumentParser(prog="atflrec submit", add_help=False, allow_abbrev=False)
    _add_submit_options(late)
    options, command = late.parse_known_args(args.command)
    for key, value in vars(options).items():
        if value not in (None, False):
            if getattr(args, key) not in (None, False):
                raise UserError(f"atflrec submit: --{key.replace('_', '-')} is given twice")
            setattr(args, key, value)
    if not command:
        raise UserError("atflrec submit: name the verb to run, e.g. "
                        "`atflrec submit features --data DIR --out STORE --address http://HEAD:8265`")
    if command[0] in ("submit", "jobs"):
        raise UserError(f"atflrec submit: {command[0]!r} talks to a cluster itself; run it here")
    parse_args(command)  # the verb's own arguments, checked here rather than after a trip to the cluster
    return command


def _follow(jobs: Jobs, job_id: str) -> int:
    try:
        info = jobs.wait(job_id, logs=sys.stdout, progress=sys.stderr)
    except KeyboardInterrupt:
        say(f"stopped following; job {job_id} keeps running "
            f"(atflrec jobs stop {job_id} --address {jobs.address})", err=True)
        return 130
    if info.status == "SUCCEEDED":
        return 0
    say(f"error: job {job_id} {info.status}: {info.message}", err=True)
    return 1


def _submit(args: argparse.Namespace) -> int:
    from atflrec.cluster.jobs import Jobs, entrypoint, load_runtime_env

    command = _submit_command(args)
    runtime_env = load_runtime_env(args.runtime_env) if args.runtime_env else None
    jobs = Jobs(args.address)
    job_id = jobs.submit(command, runtime_env=runtime_env, job_id=args.job_id)
    say(job_id)
    say(f"submitted `{entrypoint(command)}` to {jobs.address} as job {job_id}", err=True)
    if args.wait:
        return _follow(jobs, job_id)
    say(f"follow it: atflrec jobs logs {job_id} --follow --address {jobs.address}", err=True)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from atflrec.cluster.jobs import Jobs, describe

    jobs = Jobs(args.address)
    if args.action == "status":
        say(describe(jobs.info(args.job_id)))
    elif args.action == "logs":
        if args.follow:
            return _follow(jobs, args.job_id)
        say(jobs.logs(args.job_id), end="")
    elif args.action == "stop":
        stopped = jobs.stop(args.job_id)
        say(f"{args.job_id}: " + ("stop requested" if stopped else "had already finished"))
    else:
        for info in sorted(jobs.list(), key=lambda i: i.start_time or 0):
            say(f"{info.submission_id}  {info.status}  {info.entrypoint}")
    return 0


def _cluster_parsers(verbs: Subparsers) -> None:
    submit = verbs.add_parser(
        "submit", help="run a pipeline verb as a Ray job on a cluster (Ray Jobs API)",
        usage="atflrec submit [--address URL] [--runtime-env FILE] [--job-id ID] [--wait] VERB [ARGS...]",
        description="Runs `atflrec VERB ARGS` as a Ray job. Submit's options may come before VERB or "
                    "after its arguments; --address always names the head's Jobs API.",
    )
    _add_submit_options(submit)
    submit.add_argument("command", nargs=argparse.REMAINDER, metavar="VERB [ARGS...]",
                        help="the atflrec command to run")
    submit.set_defaults(handler=_submit)

    jobs = verbs.add_parser("jobs", help="status, logs, stop and list of Ray jobs on a cluster")
    job_actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("status", "a job's status"), ("logs", "a job's logs so far"), ("stop", "stop a job")):
        job = job_actions.add_parser(action, help=text)
        job.add_argument("job_id", metavar="ID", help="the submission id `atflrec submit` printed")
        if action == "logs":
            job.add_argument("--follow", action="store_true",
                             help="stream until the job ends; exit 1 unless it SUCCEEDED")
    job_actions.add_parser("list", help="every job the cluster knows")
    for job in job_actions.choices.values():
        job.add_argument("--address", help="the head's Jobs API, http://HEAD:8265 "
                         "(default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")
        job.set_defaults(handler=_jobs)


# --- evaluation ------------------------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    from atflrec.evaluation import quick_config, run_evaluation

    config = _stage_config(args)
    if args.quick:
        config = quick_config(config)
    command = ["atflrec evaluate"] + ([f"--config {args.config}"] if args.config else [])
    command += [f"--{key} {getattr(args, key)}" for key in args.shorthands if getattr(args, key) is not None]
    command += (["--quick"] if args.quick else []) + (["--replace"] if args.replace else []) + list(args.overrides)
    run_evaluation(config, command=" ".join(command), replace=args.replace)
    return 0


def _evaluate_parser(verbs: Subparsers) -> None:
    evaluate = _verb(verbs, "evaluate", _evaluate, "baselines, ATFLRec and ablations on warm and cold-start "
                     "splits; results.parquet, report.md, plots")
    _config_flags(evaluate, "atflrec.evaluation.config:EvalConfig", ("samples", "features", "data", "out"))
    evaluate.add_argument("--quick", action="store_true", help="shrink to the config's quick settings (smoke run)")
    evaluate.add_argument("--replace", action="store_true",
                          help="write into an --out that holds another configuration's evaluation (else refused)")
    _add_output_args(evaluate)


# --- serving ---------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    import os

    import ray

    from atflrec.ray_connect import connect
    from atflrec.serving.config import load_serve_config
    from atflrec.serving.launch import checkpoint_overrides, deploy, serve_until_interrupted

    launch = load_serve_config(args.config, checkpoint_overrides(args.checkpoint or (), args.data, args.features)
                               + list(args.overrides))
    if args.port is not None:
        launch.http_options["port"] = args.port
    if not args.blocking and not (args.address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        raise UserError("--no-blocking leaves the app on a running cluster: give --address (e.g. auto)")
    connect(args.address)
    url = deploy(launch)
    say(f"serving {', '.join(launch.args.models)} at {url} (API docs: {url}docs)")
    if args.blocking:
        say("Ctrl-C stops it")
        serve_until_interrupted(launch.name)
    return 0


def _serve_parser(verbs: Subparsers) -> None:
    serve = verbs.add_parser("serve", help="serve models over HTTP with Ray Serve (config: serve/*.yaml)")
    serve.add_argument("--checkpoint", action="append", metavar="[ID=]DIR",
                       help="model artifact to serve (repeatable; id defaults to the directory name; "
                            "the first is the default model); replaces the config's models")
    serve.add_argument("--data", help="dataset directory (the catalogue)")
    serve.add_argument("--features", help="feature store of the dataset")
    serve.add_argument("--port", type=int, help="HTTP port (default: the config's, else 8000)")
    serve.add_argument("--address", help="Ray cluster to deploy on (e.g. auto); default starts Ray locally")
    serve.add_argument("--blocking", action=argparse.BooleanOptionalAction, default=True,
                       help="stay in the foreground until Ctrl-C (default); --no-blocking deploys and exits")
    serve.add_argument("--config", help="Serve config YAML, e.g. serve/local.yaml (its app args take overrides)")
    serve.add_argument("overrides", nargs="*", metavar="key=value", help="app args overrides, e.g. limits.max_k=20")
    _add_output_args(serve)
    serve.set_defaults(handler=_serve)


# --- demo ------------------------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    from atflrec.demo import run_demo

    config = _stage_config(args)
    if args.keep_serving:
        config = config.model_copy(update={"keep_serving": True})
    run_demo(config)
    return 0


def _demo_parser(verbs: Subparsers) -> None:
    demo = _verb(verbs, "demo", _demo, "run the whole pipeline on the built-in data and model")
    _config_flags(demo, "atflrec.demo:DemoConfig", ("workdir",))
    demo.add_argument("--keep-serving", action="store_true",
                      help="leave the endpoint up at the end (Ctrl-C stops it) and print curl lines for each route")
    _add_output_args(demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atflrec", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_data_parsers, _features_parser, _samples_parser, _train_local_parser, _train_parser, _tune_parser,
                _configs_parser, _model_parser, _cluster_parsers, _evaluate_parser, _serve_parser, _demo_parser):
        add(verbs)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting positionals at the first option, so key=value overrides written
    # after an option (`--out DIR seed=1`) arrive here; accept them where the verb takes overrides.
    late_overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in late_overrides]
    if unknown or (late_overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if late_overrides:
        args.overrides = list(args.overrides) + late_overrides
    return args


def _log_dir(args: argparse.Namespace) -> Path:
    """Where a quiet verb's log goes: ``--log-dir``, else the demo's workdir/logs, else runs/logs."""
    if args.log_dir is not None:
        return Path(args.log_dir)
    if args.verb == "demo":
        return Path(_stage_config(args).workdir) / "logs"
    return Path("runs/logs")


def _run(args: argparse.Namespace) -> int:
    """The verb's handler; long verbs run quietly (their own lines only) unless ``-v``."""
    handler: Handler = args.handler
    if hasattr(args, "verbose") and not args.verbose:
        from atflrec.console import log_path, quiet

        with quiet(log_path(_log_dir(args), args.verb)) as log:
            say(f"(Ray, DeepSpeed and transformers write to {log}; -v shows them here)")
            return handler(args)
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:  # config errors, bad datasets, unreachable services: no traceback
        say(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

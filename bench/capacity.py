"""Capacity model: the benchmarks' unit costs and what they imply for a catalogue-scale deployment.

    python bench/capacity.py      # writes cluster/CAPACITY.md and bench/results/capacity.json

Reads the committed results of ``bench/features.py``, ``train.py``, ``tune.py`` and
``serve_load.py`` (``bench/results/{features,train,tune,serve}.json``) and the shipped configs the
projections are about (``tune/default``'s training config, ``train/gpu_7b_zero3``, the retrieval
defaults of ``/v1/recommend``). Every number is a measured figure (a results file and key), a
config value, a scenario input, a stated assumption, or a formula over those; a key the results
lack stays null and the document names the benchmark to rerun. Nothing here measures anything:
rerun this script after any of those benchmarks (a test checks that the committed document and
JSON match what it writes).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from atflrec.config import find_config, read_yaml
from atflrec.serving.retrieval import RetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
RERUN = {"features.json": "bench/features.py", "train.json": "bench/train.py", "tune.json": "bench/tune.py",
         "tune_scale.json": "bench/tune_scale.py", "serve.json": "bench/serve_load.py"}
KINDS = {"S": "scenario", "M": "measured", "C": "configs", "A": "assumptions", "D": "derived"}
SECTIONS = ("features", "training", "search", "serving", "growth")
SERVE_SIZES = (1000, 10000, 100000)  # catalogue sizes of serve.json's recommend_p50_ms
FEATURE_BYTES = 4  # float32 per Mel energy in the store


@dataclass(frozen=True)
class Scenario:
    """The deployment the issue asks about (#20 part 4)."""

    catalogue_items: int = 1_000_000
    clip_seconds: float = 30.0
    feature_hours: tuple[int, ...] = (1, 8)
    trials: int = 1000
    requests_per_s: float = 100.0
    k: int = 10
    node_cores: int = 8  # a CPU worker pod of cluster/raycluster.yaml
    node_gpus: int = 8  # one 8-GPU node: what train/gpu_7b_zero3 runs on
    nodes: tuple[int, ...] = (1, 4, 16)


@dataclass(frozen=True)
class LLM:
    params: float
    layers: int
    hidden: int
    source: str


# Base models the projected configs name; a config naming another one fails here, not silently.
MODELS = {
    "smollm2-135m-instruct": LLM(134.5e6, 30, 576, "its config.json: 30 layers, hidden 576, tied embeddings"),
    "Qwen/Qwen2.5-7B-Instruct": LLM(7.61e9, 28, 3584, "Qwen2.5-7B-Instruct model card: 7.61B, 28 layers, hidden 3584"),
}
# Tokens of the built-in prompt with a 10-item history, (shared prefix, one candidate's suffix), with
# SmolLM2's tokenizer and chat template and one audio token per item. No benchmark records them: counted
# once by hand (2026-11-29) on the v2 demo data, 10 histories x 50 candidates (means 132.4 + 11.1 text,
# 160.4 + 14.1 audio), through atflrec.prompts.render_prompt and atflrec.model.prefix.shared_length.
PROMPT_TOKENS = {"text": (132, 11), "audio": (160, 14)}
GPU_PEAK_FLOPS = 312e12  # A100 SXM, bf16 dense tensor cores (NVIDIA datasheet)
GPU_MFU = 0.30
# LLM passes per sample and stage (atflrec/model/fusion.py): 6·N·tokens for a stage that trains an
# adapter (forward, backward, gradients), 2·N·tokens for a frozen forward; the prompt kind sets the tokens.
STAGE_PASSES = {
    "early": ((6, "audio"),),
    "text_only": ((6, "text"),),
    "audio_only": ((6, "audio"),),
    "late_weighted": ((6, "text"), (6, "audio"), (2, "text"), (2, "audio")),
    "late_head": ((6, "text"), (6, "audio"), (2, "text"), (2, "audio")),
}


@dataclass(frozen=True)
class Figure:
    id: str  # S1, M3, C2, A1, D7: how the document and the formulas name it
    key: str  # its name in capacity.json
    label: str
    value: Any  # a number, or a setting (a string, a list); None when not known
    unit: str
    source: str  # file and key, config key, the reason for an assumption, or the formula over ids
    missing: str = ""  # why the value is None
    section: str = ""  # derived figures: the part of the document they belong to


@dataclass
class Ledger:
    """Every figure of the model by key, in order of creation."""

    results: Mapping[str, Mapping[str, Any]]
    figures: dict[str, Figure] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Figure:
        return self.figures[key]

    def _add(self, kind: str, **fields: Any) -> Figure:
        number = sum(f.id[0] == kind for f in self.figures.values()) + 1
        figure = Figure(id=f"{kind}{number}", **fields)
        if figure.key in self.figures:
            raise ValueError(f"figure {figure.key!r} defined twice")
        self.figures[figure.key] = figure
        return figure

    def measured(self, key: str, label: str, unit: str, file: str, path: str) -> Figure:
        data = self.results.get(file, {})
        value = lookup(data, path)
        missing = "" if value is not None else f"not measured yet (rerun {RERUN[file]})"
        return self._add("M", key=key, label=label, value=value, unit=unit,
                         source=f"`{file}` › `{path}` ({str(data.get('date', 'undated'))[:10]})", missing=missing)

    def given(self, kind: str, key: str, label: str, value: Any, unit: str, source: str) -> Figure:
        """A scenario input, config value or assumption."""
        missing = "" if value is not None else f"not set ({source})"
        return self._add(kind, key=key, label=label, value=value, unit=unit, source=source, missing=missing)

    def config(self, name: str, path: str, label: str, unit: str = "") -> Figure:
        key = f"{name}.{path}"
        return self.given("C", key, label, lookup(read_yaml(find_config(name)), path), unit, f"`{name}` › `{path}`")

    def derived(self, section: str, key: str, label: str, unit: str, formula: str,
                compute: Callable[..., Any], *inputs: Figure) -> Figure:
        """``compute`` over the inputs' values; ``formula`` names them ``{0}``, ``{1}``, ... (their ids)."""
        missing = next((f.missing for f in inputs if f.value is None), "")
        value = None if missing else compute(*(f.value for f in inputs))
        return self._add("D", key=key, label=label, value=value, unit=unit,
                         source=formula.format(*(f.id for f in inputs)), missing=missing, section=section)


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` of nested mappings, None where any step is absent."""
    for part in path.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def frames(seconds: float) -> int:
    """Kaldi frames of a clip (25 ms windows every 10 ms at 16 kHz, whole frames only), as
    atflrec.features.fbank.frame_count counts them (not imported: it would load torch)."""
    samples = round(seconds * 16000)
    return 0 if samples < 400 else 1 + (samples - 400) // 160


def model_facts(name: str) -> LLM:
    if name not in MODELS:
        raise KeyError(f"no parameter count for base model {name!r}: add it to MODELS in bench/capacity.py")
    return MODELS[name]


def llm_flops_per_sample(strategy: str, params: float, tokens: Mapping[str, int]) -> float:
    """LLM FLOPs of one training sample through every stage of ``strategy`` (one epoch each)."""
    if strategy not in STAGE_PASSES:
        raise KeyError(f"no stage passes for fusion strategy {strategy!r}: add it to STAGE_PASSES")
    return params * sum(times * tokens[kind] for times, kind in STAGE_PASSES[strategy])


def request_tokens(strategy: str, candidates: int, prompt: Mapping[str, tuple[int, int]]) -> int:
    """Tokens one recommend request runs: per adapter's prompt kind, the shared prefix once and
    each candidate's suffix (early fusion: the audio prompt; late fusion: both)."""
    kinds = {kind for times, kind in STAGE_PASSES[strategy] if times == 6}
    return sum(prompt[kind][0] + candidates * prompt[kind][1] for kind in sorted(kinds))


# --- the model ----------------------------------------------------------------------------------


def scenario_figures(ledger: Ledger, s: Scenario) -> None:
    given = ledger.given
    given("S", "catalogue_items", "catalogue items", s.catalogue_items, "items", "issue #20")
    given("S", "clip_seconds", "audio per item", s.clip_seconds, "s", "issue #20")
    given("S", "trials", "search trials", s.trials, "trials", "issue #20")
    given("S", "requests_per_s", "serving load", s.requests_per_s, "requests/s", "issue #20")
    given("S", "k", "recommendations per request", s.k, "items", "issue #20 (top-k of the re-ranked shortlist)")
    given("S", "node_cores", "cores per CPU node", s.node_cores, "cores", "a CPU worker pod of cluster/raycluster.yaml")
    given("S", "node_gpus", "GPUs per GPU node", s.node_gpus, "GPUs", "train/gpu_7b_zero3 runs on 8")


def assumptions(ledger: Ledger) -> None:
    given = ledger.given
    given("A", "linear_in_length", "feature cost per clip", "∝ audio length", "",
          "Kaldi FBank works per 10 ms frame (a 25 ms window, one FFT, one Mel product per frame), WAV "
          "decoding and the store's bytes are per sample or frame; per-clip fixed costs shrink relative "
          "to a longer clip, so scaling up from the measured length errs high")
    for kind, (prefix, suffix) in PROMPT_TOKENS.items():
        why = "counted once by hand with SmolLM2's tokenizer on built-in data (10-item history); no result holds it"
        given("A", f"tokens_{kind}_prefix", f"{kind} prompt: shared prefix", prefix, "tokens", why)
        given("A", f"tokens_{kind}_suffix", f"{kind} prompt: one candidate's suffix", suffix, "tokens", why)
    for name, facts in MODELS.items():
        given("A", f"params.{name}", f"parameters of {name}", facts.params, "", facts.source)
    given("A", "gpu_peak_flops", "GPU peak", GPU_PEAK_FLOPS, "FLOP/s", "A100 SXM, bf16 dense (NVIDIA datasheet)")
    given("A", "gpu_mfu", "GPU model FLOPs utilisation", GPU_MFU, "",
          "a middle value for LLM fine-tuning and batched prefill; short prompts and ZeRO-3 traffic push it lower")
    given("A", "flops_rule", "LLM FLOPs", "6·N per trained token, 2·N per forward token", "",
          "the standard dense-transformer estimate; LoRA skips the frozen weights' gradients (≈4·N), so "
          "6·N errs on the slow side by up to 1.5×; attention and the audio encoder are left out (see growth)")


TOKEN_KEYS = tuple(f"tokens_{kind}_{part}" for kind in PROMPT_TOKENS for part in ("prefix", "suffix"))


def token_figures(ledger: Ledger) -> list[Figure]:
    """The prompt-token assumptions, in the order :func:`tokens_from` reads them."""
    return [ledger[key] for key in TOKEN_KEYS]


def tokens_from(*counts: int) -> dict[str, tuple[int, int]]:
    """(prefix, suffix) per prompt kind from the values of :func:`token_figures`."""
    return {kind: (counts[2 * n], counts[2 * n + 1]) for n, kind in enumerate(PROMPT_TOKENS)}


def sample_flops(strategy: str, base_model: str, *counts: int) -> float:
    return llm_flops_per_sample(strategy, model_facts(base_model).params,
                                {kind: sum(pair) for kind, pair in tokens_from(*counts).items()})


def features(ledger: Ledger, s: Scenario) -> None:
    rate = ledger.measured("features.ray_pipeline_clips_per_s", "Ray Data feature pipeline (decode, FBank, Parquet)",
                           "clips/s", "features.json", "variants.ray_pipeline.clips_per_s")
    cores = ledger.measured("features.cores", "cores it ran on", "cores", "features.json", "cores")
    clip = ledger.measured("features.clip_seconds", "audio per clip", "s", "features.json", "clip_seconds")
    mels = ledger.measured("features.n_mels", "Mel-bin counts per pass", "", "features.json", "n_mels")
    ledger.measured("features.one_thread_clips_per_s", "one thread, all Mel-bin counts from one spectrum (no Ray, "
                    "no store: an upper bound)", "clips/s", "features.json", "variants.multimel_one_pass.clips_per_s")
    items, length = ledger["catalogue_items"], ledger["clip_seconds"]
    d = ledger.derived
    per_core = d("features", "feature_clips_per_s_per_core", "clips/s per core, measured clip length", "clips/s",
                 "{0} ÷ {1}", lambda r, c: r / c, rate, cores)
    scaled = d("features", "feature_clips_per_s_per_core_scenario", "clips/s per core at the scenario's clip length",
               "clips/s", "{0} × {1} ÷ {2} (by {3})", lambda r, m, t, _: r * m / t, per_core, clip, length,
               ledger["linear_in_length"])
    core_hours = d("features", "feature_core_hours", "core-hours for the catalogue", "core-h",
                   "{0} ÷ {1} ÷ 3600", lambda n, r: n / r / 3600, items, scaled)
    for hours in s.feature_hours:
        cores_needed = d("features", f"feature_cores_{hours}h", f"cores to finish in {hours} h", "cores",
                         f"⌈{{0}} ÷ {hours} h⌉", lambda h, hours=hours: math.ceil(h / hours), core_hours)
        d("features", f"feature_nodes_{hours}h", f"{s.node_cores}-core nodes to finish in {hours} h", "nodes",
          "⌈{0} ÷ {1}⌉", lambda c, n: math.ceil(c / n), cores_needed, ledger["node_cores"])
    d("features", "feature_store_tb", "feature store size (float32, before Parquet compression)", "TB",
      f"{{0}} × {FEATURE_BYTES} B × frames({{1}}) × Σ{{2}}",
      lambda n, t, m: n * FEATURE_BYTES * frames(t) * sum(m) / 1e12, items, length, mels)


def training(ledger: Ledger) -> None:
    one = ledger.measured("train.ray_ds_1w", "Ray Train + DeepSpeed, 1 worker × 1 thread", "samples/s",
                          "train.json", "samples_per_s.ray_ds_1w")
    two = ledger.measured("train.ray_ds_2w", "the same, 2 workers × 1 thread on one 2-core machine", "samples/s",
                          "train.json", "samples_per_s.ray_ds_2w")
    strategy = ledger.measured("train.fusion", "fusion strategy measured", "", "train.json", "setup.fusion")
    base = ledger.measured("train.base_model", "base model measured", "", "train.json", "setup.base_model")
    d = ledger.derived
    d("training", "train_samples_per_s_per_worker_2w", "samples/s per worker at 2 workers", "samples/s",
      "{0} ÷ 2", lambda r: r / 2, two)
    d("training", "train_scaling_efficiency_2w", "2-worker scaling efficiency", "", "{0} ÷ (2 × {1})",
      lambda r2, r1: r2 / (2 * r1), two, one)
    d("training", "train_flops_per_sample_measured", "LLM FLOPs per sample, measured setting", "FLOP",
      "passes({0}) × N({1}) × tokens({2}…{5})", sample_flops, strategy, base, *token_figures(ledger))
    big = {p: ledger.config("train/gpu_7b_zero3", p, label) for p, label in (
        ("model.base_model", "7B config: base model"), ("model.fusion.strategy", "7B config: fusion"),
        ("shots", "7B config: training samples"), ("optim.epochs", "7B config: epochs per stage"),
        ("scaling.num_workers", "7B config: GPU workers"))}
    peak, mfu = ledger["gpu_peak_flops"], ledger["gpu_mfu"]
    d("training", "train_7b_samples_per_s_per_gpu_early", "7B: samples/s per GPU, one early-fusion pass "
      "(comparable with the measured unit) — projection", "samples/s", "{0} × {1} ÷ (6 × N({2}) × ({3}+{4}))",
      lambda p, u, b, pre, suf: p * u / (6 * model_facts(b).params * (pre + suf)), peak, mfu,
      big["model.base_model"], ledger["tokens_audio_prefix"], ledger["tokens_audio_suffix"])
    flops = d("training", "train_7b_flops_per_sample", "7B config: LLM FLOPs per sample, every stage", "FLOP",
              "passes({0}) × N({1}) × tokens({2}…{5})", sample_flops, big["model.fusion.strategy"],
              big["model.base_model"], *token_figures(ledger))
    gpu_s = d("training", "train_7b_run_gpu_seconds", "7B config: one training run, compute only — projection",
              "GPU-s", "{0} × {1} × {2} ÷ ({3} × {4})", lambda n, e, f, p, u: n * e * f / (p * u),
              big["shots"], big["optim.epochs"], flops, peak, mfu)
    d("training", "train_7b_run_wall_seconds", "the same run's wall time on its GPUs, compute only — projection",
      "s", "{0} ÷ {1}", lambda g, w: g / w, gpu_s, big["scaling.num_workers"])


def tune_fit(ledger: Ledger) -> Figure:
    """A trial's fixed cost from tune.json's two searches of the same trials: the wall-time difference
    over the trial-epoch difference is one trial-epoch, the rest is fixed; core-s = wall × cores."""
    m = ledger.measured
    trials = m("tune.trials", "trials per search (tiny model, 1 worker each)", "trials", "tune.json", "trials")
    cores = m("tune.cores", "cores it ran on", "cores", "tune.json", "cores")
    fifo_s = m("tune.fifo_seconds", "FIFO search wall time", "s", "tune.json", "fifo.seconds")
    asha_s = m("tune.asha_seconds", "ASHA search wall time", "s", "tune.json", "asha.seconds")
    fifo_e = m("tune.fifo_trial_epochs", "FIFO trial-epochs", "", "tune.json", "fifo.trial_epochs")
    asha_e = m("tune.asha_trial_epochs", "ASHA trial-epochs", "", "tune.json", "asha.trial_epochs")
    epoch = ledger.derived("search", "tune_epoch_core_seconds", "one trial-epoch of the tiny model (two-point fit)",
                           "core-s", "({0} − {1}) ÷ ({2} − {3}) × {4}",
                           lambda fs, as_, fe, ae, c: (fs - as_) / (fe - ae) * c, fifo_s, asha_s, fifo_e, asha_e,
                           cores)
    return ledger.derived("search", "tune_trial_fixed_core_seconds", "a trial's fixed cost: worker start, "
                          "DeepSpeed, model load (two-point fit)", "core-s", "({0} × {1} − {2} × {3}) ÷ {4}",
                          lambda fs, c, fe, e, t: (fs * c - fe * e) / t, fifo_s, cores, fifo_e, epoch, trials)


def search_cpu(ledger: Ledger, s: Scenario, fixed: Figure, ratio: Figure) -> None:
    base = read_yaml(find_config("tune/default"))["base"]
    cfg = {p: ledger.config(base, p, f"tune/default trials ({base}): {label}") for p, label in (
        ("model.base_model", "base model"), ("model.fusion.strategy", "fusion"), ("shots", "training samples"),
        ("optim.epochs", "epochs per stage"), ("scaling.num_workers", "workers"),
        ("scaling.cpus_per_worker", "CPUs per worker"))}
    d = ledger.derived
    flops = d("search", "search_trial_flops_per_sample", f"LLM FLOPs per sample of a {base} trial", "FLOP",
              "passes({0}) × N({1}) × tokens({2}…{5})", sample_flops, cfg["model.fusion.strategy"],
              cfg["model.base_model"], *token_figures(ledger))
    compute = d("search", "search_trial_compute_core_seconds", f"a {base} trial's training compute", "core-s",
                "{0} × {1} × ({2} ÷ {3}) ÷ {4} × {5}", lambda n, e, f, fm, r, c: n * e * f / fm / r * c,
                cfg["shots"], cfg["optim.epochs"], flops, ledger["train_flops_per_sample_measured"],
                ledger["train_samples_per_s_per_worker_2w"], cfg["scaling.cpus_per_worker"])
    trials = ledger["trials"]
    totals = {
        "fifo": d("search", "search_core_hours_fifo", f"{s.trials:,} trials, FIFO", "core-h",
                  "{0} × ({1} + {2}) ÷ 3600", lambda n, f, c: n * (f + c) / 3600, trials, fixed, compute),
        # ASHA stops trials after fewer epochs: it cuts the training compute, not the fixed start-up
        "asha": d("search", "search_core_hours_asha", f"{s.trials:,} trials, ASHA", "core-h",
                  "{0} × ({1} + {2} × {3}) ÷ 3600", lambda n, f, c, r: n * (f + c * r) / 3600, trials, fixed,
                  compute, ratio),
    }
    for scheduler, total in totals.items():
        for nodes in s.nodes:
            d("search", f"search_hours_{scheduler}_{nodes}_nodes", f"{scheduler.upper()} on {nodes} × "
              f"{s.node_cores}-core nodes", "h", f"{{0}} ÷ ({nodes} × {{1}})", lambda h, c, k=nodes: h / (k * c),
              total, ledger["node_cores"])


def search_7b(ledger: Ledger, s: Scenario, ratio: Figure) -> None:
    d, trials, run = ledger.derived, ledger["trials"], ledger["train_7b_run_gpu_seconds"]
    label = f"7B config, {s.trials:,} trials, compute only, {{}} — projection"
    totals = {
        "fifo": d("search", "search_7b_gpu_hours_fifo", label.format("FIFO"), "GPU-h", "{0} × {1} ÷ 3600",
                  lambda n, g: n * g / 3600, trials, run),
        "asha": d("search", "search_7b_gpu_hours_asha", label.format("ASHA"), "GPU-h", "{0} × {1} × {2} ÷ 3600",
                  lambda n, g, r: n * g * r / 3600, trials, run, ratio),
    }
    nodes = s.nodes[-1]
    for scheduler, total in totals.items():
        d("search", f"search_7b_hours_{scheduler}_{nodes}_nodes", f"{scheduler.upper()} on {nodes} × "
          f"{s.node_gpus}-GPU nodes", "h", f"{{0}} ÷ ({nodes} × {{1}})", lambda h, g: h / (nodes * g), total,
          ledger["node_gpus"])


def search_at_scale(ledger: Ledger) -> None:
    """What the large search (tune_scale.json) says of the driver's and the cluster's state as trials grow."""
    m = ledger.measured
    trials = m("tune_scale.trials", "trials in the large search (tiny model, ASHA, a node lost)", "trials",
               "tune_scale.json", "trials")
    for key, label in (("lost", "trials lost"), ("repeated", "trials that trained an epoch twice")):
        m(f"tune_scale.{key}", f"{label} in it", "trials", "tune_scale.json", key)
    m("tune_scale.rate_last_vs_first_window", "its scheduling rate, last 25 trials ÷ first 25", "",
      "tune_scale.json", "rate_last_vs_first_window")
    m("tune_scale.worker_nodes", "its 1-CPU worker nodes at the start (one is lost half-way)", "nodes",
      "tune_scale.json", "nodes.worker_nodes")
    driver = m("tune_scale.driver_rss_mb", "its driver's peak RSS (Tune's trial table)", "MB", "tune_scale.json",
               "driver_rss_mb")
    gcs = m("tune_scale.gcs_rss_mb", "the head's GCS peak RSS", "MB", "tune_scale.json", "gcs_rss_mb")
    m("tune_scale.peak_disk_mb", "the search directory's peak size, pruning on", "MB", "tune_scale.json",
      "peak_disk_mb")
    ledger.derived("search", "search_state_mb_at_scenario", "driver + GCS memory at the scenario's trials if it "
                   "grew in proportion to the trials (an upper bound)", "MB", "({0} + {1}) × {2} ÷ {3}",
                   lambda d, g, n, t: (d + g) * n / t, driver, gcs, ledger["trials"], trials)


def search(ledger: Ledger, s: Scenario) -> None:
    fixed = tune_fit(ledger)
    ratio = ledger.measured("tune.reports_asha_vs_fifo", "ASHA's trial-epochs ÷ FIFO's", "", "tune.json",
                            "reports_asha_vs_fifo")
    search_cpu(ledger, s, fixed, ratio)
    search_7b(ledger, s, ratio)
    search_at_scale(ledger)


def serving_cpu(ledger: Ledger) -> None:
    m = ledger.measured
    prefix_s = m("serve.shared_prefix_s", "whole-catalogue re-rank of one 10-item history, SmolLM2, early fusion, "
                 "1 thread, shared prefix", "s", "serve.json", "recommend.shared_prefix_s")
    scored = m("serve.candidates", "candidates in that re-rank", "", "serve.json", "recommend.candidates")
    for n in SERVE_SIZES:  # whole requests: flat in the catalogue size when the re-rank dominates
        m(f"serve.recommend_p50_ms_{n}", f"/v1/recommend p50 at {n:,} items", "ms", "serve.json",
          f"recommend_p50_ms.{n}")
    retrieval = m("serve.retrieve_p50_ms_100000", "retrieval alone at 100,000 items (exact faiss search, in process)",
                  "ms", "serve.json", "scale.levels.100000.retrieve_p50_ms")
    shortlist, items, rate = ledger["rerank_candidates"], ledger["catalogue_items"], ledger["requests_per_s"]
    d = ledger.derived
    per_candidate = d("serving", "rerank_ms_per_candidate", "re-rank per candidate (SmolLM2, 1 thread)", "ms",
                      "{0} × 1000 ÷ {1}", lambda t, c: t * 1000 / c, prefix_s, scored)
    per_100k = d("serving", "retrieval_ms_per_100k_items", "retrieval per 100,000 items (exact search: linear in "
                 "items)", "ms", "{0}", lambda ms: ms, retrieval)
    rerank_s = d("serving", "rerank_core_seconds_per_request", "re-rank per request", "core-s",
                 "{0} × {1} ÷ 1000", lambda c, ms: c * ms / 1000, shortlist, per_candidate)
    retrieve_s = d("serving", "retrieval_seconds_per_request", "retrieval per request at the catalogue size", "s",
                   "{0} × {1} ÷ 100,000 ÷ 1000", lambda ms, n: ms * n / 1e5 / 1000, per_100k, items)
    cpu = d("serving", "serve_cpu_rerank_cores", "busy cores for the re-rank (early fusion, as measured)", "cores",
            "{0} × {1}", lambda r, t: r * t, rate, rerank_s)
    d("serving", "serve_cpu_rerank_replicas", "1-CPU replicas for the re-rank alone, at 100% busy", "replicas",
      "⌈{0}⌉", math.ceil, cpu)
    late = d("serving", "serve_late_vs_early_tokens", "late fusion's tokens per request ÷ early fusion's", "",
             "tokens(late, {0}, {1}…{4}) ÷ tokens(early, {0}, {1}…{4})",
             lambda c, *counts: request_tokens("late_weighted", c, tokens_from(*counts))
             / request_tokens("early", c, tokens_from(*counts)), shortlist, *token_figures(ledger))
    d("serving", "serve_cpu_rerank_cores_late", "the same for late fusion (two adapters) — projection", "cores",
      "{0} × {1}", lambda c, r: c * r, cpu, late)
    retrieve_cores = d("serving", "serve_cpu_retrieval_cores", "busy cores for retrieval", "cores", "{0} × {1}",
                       lambda r, t: r * t, rate, retrieve_s)
    d("serving", "serve_cpu_replicas", "1-CPU replicas, re-rank + retrieval, at 100% busy", "replicas",
      "⌈{0} + {1}⌉", lambda a, b: math.ceil(a + b), cpu, retrieve_cores)
    d("serving", "full_catalogue_core_hours_per_request", "one request scored against the whole catalogue "
      "(no retrieval)", "core-h", "{0} × {1} ÷ 3,600,000", lambda n, ms: n * ms / 3.6e6, items, per_candidate)
    d("serving", "index_mb_per_replica", "exact index (faiss IndexFlatIP) per replica", "MB", "{0} × {1} × 4 B",
      lambda n, w: n * w * 4 / 1e6, items, ledger["index_dims"])


def serving_gpu(ledger: Ledger) -> None:
    d = ledger.derived
    flops = d("serving", "serve_7b_flops_per_request", "7B config: forward FLOPs per request", "FLOP",
              "2 × N({0}) × tokens({1}, {2}, {3}…{6})",
              lambda b, st, c, *counts: 2 * model_facts(b).params * request_tokens(st, c, tokens_from(*counts)),
              ledger["train/gpu_7b_zero3.model.base_model"], ledger["train/gpu_7b_zero3.model.fusion.strategy"],
              ledger["rerank_candidates"], *token_figures(ledger))
    gpus = d("serving", "serve_7b_gpus", "7B config: busy GPUs for the re-rank — projection", "GPUs",
             "{0} × {1} ÷ ({2} × {3})", lambda r, f, p, u: r * f / (p * u), ledger["requests_per_s"], flops,
             ledger["gpu_peak_flops"], ledger["gpu_mfu"])
    d("serving", "serve_7b_replicas", "1-GPU replicas at 100% busy — projection", "replicas", "⌈{0}⌉",
      math.ceil, gpus)


def serving(ledger: Ledger) -> None:
    retrieval = RetrievalConfig()
    source = "`atflrec/serving/retrieval.py` › `RetrievalConfig.{}` (default)"
    ledger.given("C", "rerank_candidates", "candidates re-ranked per request", retrieval.rerank_candidates, "",
                 source.format("rerank_candidates"))
    ledger.given("C", "index_dims", "index vector width (text + audio + popularity)",
                 retrieval.text_dims + retrieval.audio_dims + 1, "floats",
                 source.format("text_dims") + " + `audio_dims` + 1")
    serving_cpu(ledger)
    serving_gpu(ledger)


def growth(ledger: Ledger) -> None:
    """Attention's share next to the 6·N estimate at the built-in prompt length, per model."""
    audio = [ledger["tokens_audio_prefix"], ledger["tokens_audio_suffix"]]
    for name, facts in MODELS.items():
        ledger.derived("growth", f"attention_share.{name}", f"attention-score FLOPs ÷ 2·N per token, {name} "
                       "(full-context count: an upper bound)", "",
                       f"4 × {facts.layers} layers × ({{0}}+{{1}}) × {facts.hidden} ÷ (2 × {{2}})",
                       lambda pre, suf, n, f=facts: 4 * f.layers * (pre + suf) * f.hidden / (2 * n),
                       *audio, ledger[f"params.{name}"])


def build(results: Mapping[str, Mapping[str, Any]], scenario: Scenario = Scenario()) -> Ledger:
    ledger = Ledger(results)
    scenario_figures(ledger, scenario)
    assumptions(ledger)
    features(ledger, scenario)
    training(ledger)
    search(ledger, scenario)
    serving(ledger)
    growth(ledger)
    return ledger


# --- output -------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e7:
        mantissa, exponent = f"{value:.3g}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def shown(figure: Figure) -> str:
    """The value with its unit, or why there is none."""
    if figure.value is None:
        return f"**{figure.missing}**"
    return f"{fmt(figure.value)} {figure.unit}".strip()


def table(figures: list[Figure]) -> list[str]:
    rows = ["| id | figure | value | from |", "|---|---|---|---|"]
    rows += [f"| {f.id} | {f.label} | {shown(f)} | {f.source} |" for f in figures]
    return rows + [""]


def value(ledger: Ledger, key: str) -> str:
    """A figure's value and id for the prose, e.g. ``415 cores (D31)``."""
    return f"{shown(ledger[key])} ({ledger[key].id})"


def ids(ledger: Ledger, *keys: str) -> str:
    return ", ".join(ledger[key].id for key in keys)


INTRO = (
    "Generated by `bench/capacity.py` from the committed benchmark results; do not edit by hand: rerun "
    "`python bench/capacity.py` after any benchmark (a test fails while this file and "
    "`bench/results/capacity.json` are out of date). Every number has an id: **M** measured (results file "
    "› key, measurement date), **C** a shipped config, **S** the scenario of issue #20, **A** an "
    "assumption (with its reason), **D** derived (the formula over ids). Figures marked *projection* "
    "rest on assumptions, not on a measurement of that setting."
)


def section(ledger: Ledger, name: str) -> list[Figure]:
    return [f for f in ledger.figures.values() if f.section == name]


def sources_text(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["## Sources", "", "| file | measured | machine and note |", "|---|---|---|"]
    for file, script in RERUN.items():
        data = results.get(file, {})
        cores = data.get("cores") or lookup(data, "machine.cores") or "?"
        note = f"; {data['note']}" if data.get("note") else ""
        date = data.get("date", f"missing (run {script})")
        lines.append(f"| `bench/results/{file}` | {date} | {cores} cores{note} |")
    return lines + [""]


def inputs_text(ledger: Ledger) -> list[str]:
    kinds = {kind: [f for f in ledger.figures.values() if f.id[0] == kind] for kind in KINDS}
    return ["## Inputs", "", "Scenario, configs and assumptions:", "", *table(kinds["S"] + kinds["C"] + kinds["A"]),
            "Measured (the machines are in Sources):", "", *table(kinds["M"])]


def features_text(ledger: Ledger, s: Scenario) -> list[str]:
    v = partial(value, ledger)
    first, last = s.feature_hours[0], s.feature_hours[-1]
    return [
        f"## Features: {s.catalogue_items:,} items × {s.clip_seconds:g} s clips", "",
        *table(section(ledger, "features")),
        f"The pipeline's measured rate per core ({v('feature_clips_per_s_per_core')}) covers decoding, FBank for "
        f"every Mel-bin count of the run and the Parquet write. Scaled linearly to {s.clip_seconds:g} s clips "
        f"({ids(ledger, 'linear_in_length')}: Kaldi FBank costs per frame), the catalogue takes "
        f"{v('feature_core_hours')}: "
        f"{v(f'feature_cores_{first}h')} for {first} h, {v(f'feature_cores_{last}h')} for {last} h. Measured on "
        "16 kHz WAV; decoding compressed audio (MP3, AAC) costs more and is not measured. The store itself, "
        f"{v('feature_store_tb')} before compression, may weigh more on a cluster than the compute.",
        "",
    ]


def training_text(ledger: Ledger) -> list[str]:
    v = partial(value, ledger)
    weights_gb = 2 * model_facts(ledger["train/gpu_7b_zero3.model.base_model"].value).params / 1e9
    return [
        "## Training", "", *table(section(ledger, "training")),
        f"The built-in model trains at {v('train_samples_per_s_per_worker_2w')} per worker on CPU with 2 workers "
        f"on one machine ({v('train_scaling_efficiency_2w')} of twice one worker). The 7B rows are projections "
        f"from FLOPs ({ids(ledger, 'flops_rule', 'gpu_peak_flops', 'gpu_mfu', *TOKEN_KEYS)}: 6·N per token, the "
        "stated GPU and utilisation, SmolLM2's token counts for Qwen's tokenizer): one run of "
        f"`train/gpu_7b_zero3` is {v('train_7b_run_gpu_seconds')} of compute, "
        f"{v('train_7b_run_wall_seconds')} on its GPUs. At few-shot sizes the compute is small; start-up "
        f"(loading {weights_gb:.0f} GB of bf16 weights onto the GPUs, DeepSpeed ZeRO-3 initialisation) is not "
        "measured and may well dominate a run.",
        "",
    ]


def search_text(ledger: Ledger, s: Scenario) -> list[str]:
    v = partial(value, ledger)
    return [
        f"## Search: {s.trials:,} trials", "", *table(section(ledger, "search")),
        "The fixed and per-epoch costs come from the two tune.json searches of the same trials (FIFO and "
        "ASHA): the difference in wall time over the difference in trial-epochs is one trial-epoch, the rest "
        "is fixed (wall time × the machine's cores, an upper bound on the CPU used). The FIFO search also built "
        "the search's features once (ASHA's reused them), so the fit counts that build as epochs: the fixed "
        f"cost is if anything low. A trial of `tune/default` then costs {v('tune_trial_fixed_core_seconds')} "
        f"fixed plus {v('search_trial_compute_core_seconds')} of SmolLM2 training; ASHA's measured trial-epoch "
        f"ratio ({v('tune.reports_asha_vs_fifo')}) cuts the compute part only. {s.trials:,} trials: "
        f"{v('search_core_hours_fifo')} FIFO, {v('search_core_hours_asha')} ASHA, "
        f"{v(f'search_hours_asha_{s.nodes[-1]}_nodes')} on {s.nodes[-1]} nodes. ASHA's ratio at {s.trials:,} "
        "trials and other rungs is assumed equal to the measured one; the 7B rows are compute only.",
        "",
    ]


def serving_text(ledger: Ledger, s: Scenario) -> list[str]:
    v = partial(value, ledger)
    return [
        f"## Serving: {s.requests_per_s:g} requests/s, k = {s.k}", "", *table(section(ledger, "serving")),
        f"A request re-ranks {v('rerank_candidates')} retrieved candidates whatever k is (k only picks the top "
        f"of them). At {v('rerank_ms_per_candidate')} per candidate (the measured whole-catalogue re-rank's "
        f"time over its candidates, shared prefix included) that is {v('rerank_core_seconds_per_request')} per "
        "request on one thread — also the request's latency there — and "
        f"{v('serve_cpu_rerank_cores')} busy for {s.requests_per_s:g} requests/s, "
        f"{v('serve_cpu_rerank_replicas')} of one CPU (Little's law at 100% busy: plan headroom above it; "
        f"late fusion's two adapters: {v('serve_cpu_rerank_cores_late')}). Retrieval: "
        f"{v('retrieval_ms_per_100k_items')} per 100,000 items; replicas with it: {v('serve_cpu_replicas')}. "
        f"The 7B config on GPUs (projection): {v('serve_7b_gpus')}, {v('serve_7b_replicas')}. Without "
        f"retrieval, one request against the whole catalogue would cost {v('full_catalogue_core_hours_per_request')}.",
        "",
    ]


def ranking(ledger: Ledger) -> list[str]:
    """The stages' CPU core-hours at the scenario, largest first: which one is the bottleneck."""
    stages = {"serving, one hour at the scenario's load (re-rank only)": "serve_cpu_rerank_cores",
              "the search, ASHA": "search_core_hours_asha", "the feature pass over the catalogue": "feature_core_hours"}
    known = sorted(((ledger[k].value, name, k) for name, k in stages.items() if ledger[k].value is not None),
                   reverse=True)
    lines = [f"{n}. {name}: {fmt(v)} core-hours ({ledger[k].id})" for n, (v, name, k) in enumerate(known, 1)]
    return lines + [f"- {name}: {ledger[k].missing}" for name, k in stages.items() if ledger[k].value is None]


def growth_text(ledger: Ledger, s: Scenario) -> list[str]:
    v = partial(value, ledger)
    efficiency = ledger["train_scaling_efficiency_2w"].value
    sublinear = (": sub-linear, so cost per sample rises with workers per trial (across nodes, gradient "
                 "all-reduce adds to it)." if efficiency is not None and efficiency < 1 else ".")
    return [
        "## Bottleneck and super-linear growth", "",
        "CPU core-hours of each stage at the scenario (built-in model, from measurements), largest first:", "",
        *ranking(ledger), "",
        "Serving's cost recurs every hour; the feature pass and the search are paid once per catalogue and per "
        f"search. On GPUs (7B config, projections): serving needs {v('serve_7b_gpus')} continuously, the "
        f"search {v('search_7b_gpu_hours_asha')} in all.",
        "", *table(section(ledger, "growth")),
        "What grows faster than the catalogue or the trial count, and what does not ([measured] follows from "
        "the results, [algorithm] from the code):",
        "",
        "- [measured] Scoring without retrieval is linear in items per request "
        f"({v('rerank_ms_per_candidate')} per candidate), so serving every user that way grows as users × "
        "items; the retrieval shortlist keeps the LLM's work per request constant "
        f"({v('rerank_candidates')} candidates) at any catalogue size.",
        "- [algorithm] Retrieval is exact (faiss `IndexFlatIP`): linear in items per query, so at a fixed "
        f"request rate its cost grows with the catalogue ({v('retrieval_ms_per_100k_items')} per 100,000 "
        f"items), and every replica holds the index ({v('index_mb_per_replica')}). An approximate index "
        "(IVF, HNSW) would make it sub-linear; none is used.",
        "- [measured] Data-parallel training: 2 workers on one 2-core machine gave "
        f"{v('train_scaling_efficiency_2w')} of twice one worker's rate{sublinear}",
        f"- [measured] Scheduling at {v('tune_scale.trials')}: a search that lost a node half-way lost "
        f"{v('tune_scale.lost')} and repeated {v('tune_scale.repeated')}; its last 25 trials finished at "
        f"{v('tune_scale.rate_last_vs_first_window')} × the first 25's rate, on one worker node fewer than "
        f"the {v('tune_scale.worker_nodes')} it started with, with its driver at "
        f"{v('tune_scale.driver_rss_mb')} and the GCS at {v('tune_scale.gcs_rss_mb')} peak RSS; even grown in "
        f"proportion to the trials, {s.trials:,} trials' state is {v('search_state_mb_at_scenario')}.",
        "- [algorithm] ASHA's bookkeeping: Ray 2.60's `AsyncHyperBand` takes a percentile over every result "
        "recorded at a rung on each report, O(trials) per report and O(trials²) per search — of the order of "
        f"{s.trials ** 2:,} element operations per rung at {s.trials:,} trials, negligible next to the trials.",
        "- [algorithm] Attention is quadratic in prompt length (the prompt grows with the history); at the "
        f"built-in length its share next to the 6·N estimate is {v('attention_share.Qwen/Qwen2.5-7B-Instruct')} "
        f"for the 7B model and {v('attention_share.smollm2-135m-instruct')} for SmolLM2.",
        "- [algorithm] Linear, not super-linear: the feature pass and the store in items × clip length × "
        "Mel bins; a search's fixed start-up in trials.",
        "",
    ]


def undetermined_text(ledger: Ledger) -> list[str]:
    retrieval = ledger["retrieval_ms_per_100k_items"]
    lines = ["## Not determined here", ""]
    if retrieval.value is None:
        lines.append(f"- Retrieval cost and whole-request latency at catalogue scale: {retrieval.missing} "
                     "(serve.json's `recommend_p50_ms`).")
    return lines + [
        "- Every GPU figure is a projection from FLOPs: no result read here was measured on a GPU. For "
        "SmolLM2 on a GPU no FLOPs projection is given: a 135M model is bound by kernel launches, not FLOPs.",
        "- Start-up of a 7B trial or replica (weights from storage onto GPUs), which bounds the 7B search.",
        "- Compressed-audio decoding, multi-node feature throughput (object store, shared storage), and "
        "ASHA's savings at 1,000 trials with other rungs.",
        "",
    ]


def render(ledger: Ledger, results: Mapping[str, Mapping[str, Any]], s: Scenario) -> str:
    return "\n".join(["# Capacity model", "", INTRO, "", *sources_text(results), *inputs_text(ledger),
                      *features_text(ledger, s), *training_text(ledger), *search_text(ledger, s),
                      *serving_text(ledger, s), *growth_text(ledger, s), *undetermined_text(ledger)])


def as_json(ledger: Ledger, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    def entry(f: Figure) -> dict[str, Any]:
        number = isinstance(f.value, float) and not f.value.is_integer()
        return {"id": f.id, "label": f.label, "value": float(f"{f.value:.6g}") if number else f.value,
                "unit": f.unit, "from": f.source.replace("`", "")} | ({"missing": f.missing} if f.value is None else {})

    groups = {KINDS[kind]: {f.key: entry(f) for f in ledger.figures.values() if f.id[0] == kind and kind != "D"}
              for kind in KINDS if kind != "D"}
    derived = {name: {f.key: entry(f) for f in ledger.figures.values() if f.section == name} for name in SECTIONS}
    sources = {file: results.get(file, {}).get("date") for file in RERUN}
    return {"sources": sources, **groups, "derived": derived}


def read_results(directory: Path) -> dict[str, dict[str, Any]]:
    """The benchmark results present in ``directory``; a missing file reads as empty."""
    return {file: json.loads((directory / file).read_text()) if (directory / file).is_file() else {}
            for file in RERUN}


def write(results_dir: Path, doc: Path, out: Path, scenario: Scenario = Scenario()) -> Ledger:
    results = read_results(results_dir)
    ledger = build(results, scenario)
    doc.write_text(render(ledger, results, scenario))
    out.write_text(json.dumps(as_json(ledger, results), indent=2, ensure_ascii=False) + "\n")
    return ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="benchmark results folder")
    parser.add_argument("--doc", type=Path, default=ROOT / "cluster" / "CAPACITY.md", help="Markdown to write")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity.json", help="JSON to write")
    args = parser.parse_args()
    ledger = write(args.results, args.doc, args.out)
    for line in ranking(ledger):
        print(line)
    print(f"wrote {args.doc} and {args.out}")


if __name__ == "__main__":
    main()

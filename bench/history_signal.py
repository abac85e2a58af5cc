"""What the built-in benchmark lets any model reach: the signal analysis that chooses its defaults.

    python bench/history_signal.py --out bench/results/history_signal.json

Every model in this project sees the same thing per sample: the target item and up to ``history_len``
earlier items of the user, split into liked and disliked. This analysis asks what that can reveal
when the item attributes are known exactly (read from the generator's hidden ground truth, which
no model gets). It draws the benchmark's world with the generator's own functions (no audio is
rendered), cuts samples with the project's own ``build_samples``, and scores the warm test rows and
the cold-start rows with:

``ceiling``       the like function's noise-free logit z: the bound no model can pass.
``oracle_N``      logistic regression fitted on ``N`` training samples (drawn ``--draws`` times) on
                  what a perfect item understanding gives: the history's like share; the target's
                  appeal features (genre, energy, quality); and, per attribute (genre, mode, tempo,
                  energy, acoustic), the target's value times (mean liked - mean disliked) history.
``like_share``    the history's like share alone (the ``user_rate`` baseline).
``item_only_N``   the oracle's item appeal features alone (no user information), N shots.
``audio_view_N``  the oracle restricted to what the audio carries: genre, mode, tempo, energy and
                  the audible defect instead of the quality (cold rows).
``text_view_N``   the oracle restricted to what title and tags say: the genre tag, the title's genre
                  word, and the mode / tempo / energy tags where present (cold rows).
``popularity``    the project's ``popularity`` baseline fitted on all training rows.

For each data seed of ``--data-seeds`` and size of ``--sizes`` (users x items); the ``summary`` holds
the means over seeds at ``--summary-size`` (the demo's). ``--candidates`` also scores other
generator settings at that size, so the record shows why the defaults were chosen. Writes JSON and
a PNG beside it. It takes a minute or two, times nothing, and trains no model of this project.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from atflrec.baselines import Context, build_recommender
from atflrec.baselines.user_rate import like_share
from atflrec.data.format import Dataset, interactions_table, items_table
from atflrec.data.synth import ACOUSTIC_GENRES, GENERATOR_VERSION, STYLES, SynthConfig, World, draw_world, item_terms
from atflrec.metrics import auc
from atflrec.samples import SampleConfig, build_samples

Row = dict[str, Any]
SPLIT_OF = {"warm": "test", "cold": "cold"}
SUMMARY_KEYS = ("ceiling_warm", "ceiling_cold", "oracle_64_warm", "oracle_64_cold", "oracle_256_warm",
                "oracle_256_cold", "like_share_cold", "audio_view_cold_64", "text_view_cold_64", "popularity_cold")
# Settings compared against the defaults at the summary size; the record shows what each reaches.
CANDIDATES: dict[str, dict[str, Any]] = {
    "v1": SynthConfig.version_1().model_dump(),
    "v2_silent_quality": {"audible_quality": 0.0},
    "v2_no_attribute_tags": {"tag_attribute_rate": 0.0},
    "v2_noisier": {"like": {"noise": 1.0}},
}
ATTRIBUTE_TAGS = ("major key", "minor key", "slow", "mid-tempo", "fast", "calm", "energetic")


class View:
    """Per-item feature tables of one view of the catalogue, indexed by row number."""

    def __init__(self, appeal: np.ndarray, taste: np.ndarray) -> None:
        self.appeal = appeal  # features that act the same for every user
        self.taste = taste  # features matched against the user's history


def oracle_view(config: SynthConfig, world: World, audio_only: bool = False) -> View:
    """The hidden attributes, as the like function uses them; ``audio_only``: what a clip carries."""
    items, terms = world.items, item_terms(config, world.items)
    genre = np.eye(config.genres)[items.genre]
    taste = np.column_stack([genre, terms.mode, terms.tempo, terms.energy, terms.acoustic])
    quality = items.defect if audio_only else items.quality
    return View(np.column_stack([genre, terms.energy, quality]), taste)


def text_view(config: SynthConfig, world: World) -> View:
    """What title and tags say: the genre tag, the title's genre word and the attribute tags (0: absent)."""
    names = [s.name for s in config.styles()]
    tag_genre = np.array([[float(name in tags) for name in names] for tags in world.tags])
    title_genre = np.array([[float(bool(set(s.title_words) & set(title.split()))) for s in STYLES[:config.genres]]
                            for title in world.titles])

    def tagged(yes: str, no: str) -> np.ndarray:
        return np.array([1.0 if yes in tags else -1.0 if no in tags else 0.0 for tags in world.tags])

    tempo = np.array([1.0 if "fast" in t else -1.0 if "slow" in t else 0.0 for t in world.tags])
    attributes = np.column_stack([tagged("major key", "minor key"), tempo, tagged("energetic", "calm")])
    genre = np.clip(tag_genre + title_genre, 0, 1)
    acoustic = (genre @ np.array([1.0 if name in ACOUSTIC_GENRES else -1.0 for name in names])
                / np.maximum(genre.sum(1), 1))
    return View(np.column_stack([genre, attributes[:, 2]]), np.column_stack([genre, attributes, acoustic]))


def sample_splits(world: World, samples: SampleConfig) -> dict[str, list[Row]]:
    """The world's interactions cut into the project's splits (titles and tags do not matter here)."""
    inter = world.interactions
    dataset = Dataset(
        root=Path("."),
        items=items_table(world.item_ids, world.titles, world.tags, [f"{i}.wav" for i in world.item_ids]),
        interactions=interactions_table([world.user_ids[u] for u in inter.user],
                                        [world.item_ids[i] for i in inter.item],
                                        inter.label.tolist(), inter.timestamp.tolist()),
    )
    return {split: table.to_pylist() for split, table in build_samples(dataset, samples).items()}


class Design:
    """Feature rows of the oracle family for one view, from row numbers of items."""

    def __init__(self, view: View, position: dict[str, int]) -> None:
        self.view, self.position = view, position

    def profile(self, ids: Sequence[str]) -> np.ndarray:
        taste = self.view.taste
        return taste[[self.position[i] for i in ids]].mean(axis=0) if ids else np.zeros(taste.shape[1])

    def __call__(self, rows: Sequence[Row], user: bool = True, item: bool = True) -> np.ndarray:
        columns = []
        targets = [self.position[r["item_id"]] for r in rows]
        if user:
            columns.append(like_share(rows)[:, None])
        if item:
            columns.append(self.view.appeal[targets])
        if user and item:
            contrast = np.array([self.profile(r["liked_ids"]) - self.profile(r["disliked_ids"]) for r in rows])
            columns.append(self.view.taste[targets] * contrast)
        return np.hstack(columns)


def few_shot_auc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 draws: list[np.ndarray]) -> dict[str, float]:
    """Mean, sd, min and max held-out AUC of a logistic regression over the few-shot draws."""
    values = []
    for index in draws:
        if len(set(y_train[index])) < 2:
            values.append(0.5)  # a one-class draw leaves nothing to fit
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train[index], y_train[index])
        values.append(auc(y_test, model.predict_proba(x_test)[:, 1]))
    return {"mean": float(np.mean(values)), "sd": float(np.std(values)), "min": float(np.min(values)),
            "max": float(np.max(values)), "draws": len(values)}


def popularity_auc(train: list[Row], rows: list[Row], world: World) -> float:
    model = build_recommender("popularity")
    model.fit(train, Context(items={}))
    return auc([r["label"] for r in rows], model.score(rows))


def analyse(config: SynthConfig, samples: SampleConfig, shots: list[int], draws: int) -> dict[str, Any]:
    world = draw_world(config)
    position = {item: n for n, item in enumerate(world.item_ids)}
    user_position = {user: n for n, user in enumerate(world.user_ids)}
    z = np.full((config.users, config.items), np.nan)
    z[world.interactions.user, world.interactions.item] = world.interactions.logit
    splits = sample_splits(world, samples)
    train = splits["train"]
    y_train = np.array([r["label"] for r in train])
    rng = np.random.default_rng(0)
    draws_of = {n: [rng.choice(len(train), n, replace=False) for _ in range(draws)] for n in shots}
    views: dict[str, Design] = {
        "oracle": Design(oracle_view(config, world), position),
        "audio_view": Design(oracle_view(config, world, audio_only=True), position),
        "text_view": Design(text_view(config, world), position),
    }
    fitted: dict[tuple[str, bool, bool], np.ndarray] = {}

    def learner(view: str, user: bool = True, item: bool = True) -> Callable[[list[Row], list[int]], dict]:
        key = (view, user, item)
        if key not in fitted:
            fitted[key] = views[view](train, user, item)

        def score(rows: list[Row], n: int) -> dict[str, float]:
            y = np.array([r["label"] for r in rows])
            return few_shot_auc(fitted[key], y_train, views[view](rows, user, item), y, draws_of[n])
        return score

    result: dict[str, Any] = {"train_rows": len(train), "like_rate": float(world.interactions.label.mean())}
    for where, split in SPLIT_OF.items():
        rows = splits[split]
        y = [r["label"] for r in rows]
        users = {r["user_id"] for r in rows}
        block: dict[str, Any] = {
            "rows": len(rows), "users": len(users),
            "ceiling": auc(y, [z[user_position[r["user_id"]], position[r["item_id"]]] for r in rows]),
            "like_share": auc(y, like_share(rows)),
            "popularity": popularity_auc(train, rows, world),
        }
        for n in shots:
            block[f"oracle_{n}"] = learner("oracle")(rows, n)
            block[f"item_only_{n}"] = learner("oracle", user=False)(rows, n)
            block[f"audio_view_{n}"] = learner("audio_view")(rows, n)
            block[f"text_view_{n}"] = learner("text_view")(rows, n)
        result[where] = block
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, float]:
    """The issue's summary keys: means over the seeds given."""

    def mean(where: str, key: str) -> float:
        values = [r[where][key] for r in results]
        return float(np.mean([v["mean"] if isinstance(v, dict) else v for v in values]))

    out = {
        "ceiling_warm": mean("warm", "ceiling"), "ceiling_cold": mean("cold", "ceiling"),
        "oracle_64_warm": mean("warm", "oracle_64"), "oracle_64_cold": mean("cold", "oracle_64"),
        "oracle_256_warm": mean("warm", "oracle_256"), "oracle_256_cold": mean("cold", "oracle_256"),
        "like_share_cold": mean("cold", "like_share"),
        "audio_view_cold_64": mean("cold", "audio_view_64"), "text_view_cold_64": mean("cold", "text_view_64"),
        "popularity_cold": mean("cold", "popularity"),
    }
    assert tuple(out) == SUMMARY_KEYS
    return out


def goals(summary: dict[str, float]) -> dict[str, bool]:
    """The benchmark's acceptance criteria (issue #15), checked on a summary."""
    s = summary
    return {
        "ceiling >= 0.85": min(s["ceiling_warm"], s["ceiling_cold"]) >= 0.85,
        "oracle_64 >= 0.70": min(s["oracle_64_warm"], s["oracle_64_cold"]) >= 0.70,
        "oracle_256 > oracle_64": (s["oracle_256_warm"] > s["oracle_64_warm"]
                                   and s["oracle_256_cold"] > s["oracle_64_cold"]),
        "audio_view_cold_64 >= text_view_cold_64 + 0.05": s["audio_view_cold_64"] >= s["text_view_cold_64"] + 0.05,
        "popularity_cold == 0.5": abs(s["popularity_cold"] - 0.5) < 1e-9,
        "like_share_cold <= oracle_256_cold - 0.03": s["like_share_cold"] <= s["oracle_256_cold"] - 0.03,
    }


def plot(results: list[dict[str, Any]], shots: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labels = [f"{r['users']}x{r['items']}\nseed {r['data_seed']}" for r in results]
    x = np.arange(len(results))
    for ax, where in zip(axes, SPLIT_OF):
        series = [("ceiling (noise-free z)", [r[where]["ceiling"] for r in results], None),
                  *[(f"oracle, {n} shots", [r[where][f"oracle_{n}"]["mean"] for r in results],
                     [r[where][f"oracle_{n}"]["sd"] for r in results]) for n in shots],
                  ("like share alone", [r[where]["like_share"] for r in results], None),
                  (f"item alone, {shots[-1]} shots", [r[where][f"item_only_{shots[-1]}"]["mean"] for r in results],
                   None)]
        if where == "cold":
            series += [(f"audio view, {n} shots", [r[where][f"audio_view_{n}"]["mean"] for r in results], None)
                       for n in shots if n == 64]
            series += [(f"text view, {n} shots", [r[where][f"text_view_{n}"]["mean"] for r in results], None)
                       for n in shots if n == 64]
        width = 0.85 / len(series)
        for k, (name, values, errors) in enumerate(series):
            ax.bar(x + (k - len(series) / 2 + 0.5) * width, values, width, yerr=errors, label=name, capsize=2)
        ax.axhline(0.5, color="black", lw=0.8, ls=":")
        ax.set_ylim(0.4, 1.0)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(f"{where} rows ({SPLIT_OF[where]} split)")
        ax.legend(fontsize=6, ncol=2)
    axes[0].set_ylabel("AUC")
    fig.suptitle(f"Benchmark v{GENERATOR_VERSION}: what any model can reach from the sample history")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/history_signal.json"))
    parser.add_argument("--sizes", default="100x160,300x480", help="users x items, comma-separated")
    parser.add_argument("--summary-size", default="300x480", help="the size the summary averages (the demo's)")
    parser.add_argument("--data-seeds", default="0,1,2")
    parser.add_argument("--shots", default="16,64,256")
    parser.add_argument("--draws", type=int, default=20, help="few-shot draws per size and seed")
    parser.add_argument("--history-len", type=int, default=SampleConfig().history_len)
    parser.add_argument("--no-candidates", action="store_true", help="skip the other generator settings")
    args = parser.parse_args()

    shots = sorted({int(s) for s in args.shots.split(",")} | {64, 256})
    samples = SampleConfig(history_len=args.history_len)
    seeds = [int(s) for s in args.data_seeds.split(",")]

    def run(size: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
        users, items = (int(v) for v in size.split("x"))
        rows = []
        for seed in seeds:
            config = SynthConfig.model_validate({**settings, "seed": seed, "users": users, "items": items})
            row = {"users": users, "items": items, "data_seed": seed, **analyse(config, samples, shots, args.draws)}
            rows.append(row)
            print(f"  {size} seed {seed}: " + ", ".join(
                f"{where} ceiling {row[where]['ceiling']:.3f} oracle64 {row[where]['oracle_64']['mean']:.3f} "
                f"like share {row[where]['like_share']:.3f}" for where in SPLIT_OF), flush=True)
        return rows

    print(f"generator v{GENERATOR_VERSION} defaults", flush=True)
    results = [row for size in args.sizes.split(",") for row in run(size, {})]
    at_summary = [r for r in results if f"{r['users']}x{r['items']}" == args.summary_size]
    summary = {**summarise(at_summary), "generator_version": GENERATOR_VERSION}
    candidates = {}
    if not args.no_candidates:
        for name, settings in CANDIDATES.items():
            print(f"candidate {name}", flush=True)
            candidate = summarise(run(args.summary_size, settings))
            candidates[name] = {"settings": settings, "summary": candidate, "goals": goals(candidate)}
    record = {
        "benchmark": "history_signal",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "settings": {"history_len": args.history_len, "shots": shots, "draws": args.draws, "data_seeds": seeds,
                     "summary_size": args.summary_size, "warm_rows": SPLIT_OF["warm"], "cold_rows": SPLIT_OF["cold"],
                     "defaults": SynthConfig().model_dump(mode="json")},
        "summary": summary,
        "goals": goals(summary),
        "candidates": candidates,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(results, shots, args.out.with_suffix(".png"))
    print(json.dumps({"summary": summary, "goals": record["goals"]}, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

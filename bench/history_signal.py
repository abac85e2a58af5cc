"""How much the benchmark's sample histories say about the label: a ceiling for every model.

    python bench/history_signal.py --out bench/results/history_signal.json

Every model in this project sees the same thing per sample: the target item and up to ``history_len``
earlier items of the user, split into liked and disliked. This analysis asks what that can reveal
when the item attributes are known exactly (read from the generator's hidden ground truth, which
no model gets). It draws the benchmark's users, items and labels with the generator's own functions
(no audio is rendered), cuts samples with the project's own ``build_samples``, and scores the
held-out rows (warm test + cold-start, as the SmolLM2 integration test does) three ways:

``noise_free``    the like function's noise-free logit z: the bound the evaluation report quotes.
``ideal_rule``    the like function applied to the history: target attributes times (mean liked
                  - mean disliked) attributes, weighted by the like weights; no learning at all.
``oracle_lr_N``   logistic regression on those products, fitted on ``N`` training samples drawn
                  ``--draws`` times (N = each of ``--shots``, and all of train): what any learner
                  with perfect item understanding could reach from N shots; mean, sd, min, max.

For each data seed of ``--data-seeds`` and each size of ``--sizes`` (users x items). Writes JSON
and a PNG beside it. It takes seconds, times nothing, and changes no defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from atflrec.data.format import Dataset, interactions_table, items_table
from atflrec.data.synth import (TEMPO_CENTRE_BPM, TEMPO_SCALE_BPM, SynthConfig, draw_interactions, draw_items,
                                draw_users)
from atflrec.metrics import auc
from atflrec.samples import SampleConfig, build_samples

HELD_OUT = ("test", "cold")


def attribute_matrix(config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per item: [genre one-hot, M, T, E] as the like function uses them, and the matching weights."""
    items = draw_items(config)
    genre = np.eye(config.genres)[items.genre]
    mode = np.where(items.major, 1.0, -1.0)
    tempo = np.clip((items.tempo_bpm - TEMPO_CENTRE_BPM) / TEMPO_SCALE_BPM, -1.5, 1.5)
    energy = 2 * items.energy - 1
    w = config.like
    weights = np.r_[np.full(config.genres, w.genre), w.mode, w.tempo, w.energy]
    return np.column_stack([genre, mode, tempo, energy]), weights


def sample_splits(config: SynthConfig,
                  samples: SampleConfig) -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], float]]:
    """The generator's interactions cut into the project's splits, and each interaction's noise-free z."""
    items, users = draw_items(config), draw_users(config)
    inter = draw_interactions(config, items, users)
    item_ids = [f"i{n}" for n in range(config.items)]
    user_ids = [f"u{n}" for n in range(config.users)]
    dataset = Dataset(
        root=Path("."),
        items=items_table(item_ids, item_ids, [[] for _ in item_ids], [f"{i}.wav" for i in item_ids]),
        interactions=interactions_table([user_ids[u] for u in inter.user], [item_ids[i] for i in inter.item],
                                        inter.label.tolist(), inter.timestamp.tolist()),
    )
    z = {(user_ids[u], item_ids[i]): float(v) for u, i, v in zip(inter.user, inter.item, inter.logit)}
    return {split: table.to_pylist() for split, table in build_samples(dataset, samples).items()}, z


def comparison_features(rows: list[dict[str, Any]], attributes: np.ndarray) -> np.ndarray:
    """Target attributes times (mean liked - mean disliked) history attributes, per row."""

    def mean(ids: list[str]) -> np.ndarray:
        return attributes[[int(i[1:]) for i in ids]].mean(axis=0) if ids else np.zeros(attributes.shape[1])

    return np.array([attributes[int(r["item_id"][1:])] * (mean(r["liked_ids"]) - mean(r["disliked_ids"]))
                     for r in rows])


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values)), "min": float(np.min(values)),
            "max": float(np.max(values)), "draws": len(values)}


def analyse(config: SynthConfig, samples: SampleConfig, shots: list[int], draws: int) -> dict[str, Any]:
    attributes, weights = attribute_matrix(config)
    splits, z = sample_splits(config, samples)
    held = [r for split in HELD_OUT for r in splits[split]]
    y = [r["label"] for r in held]
    x_held, x_train = comparison_features(held, attributes), comparison_features(splits["train"], attributes)
    y_train = np.array([r["label"] for r in splits["train"]])
    rng = np.random.default_rng(0)

    def oracle_auc(index: np.ndarray) -> float:
        if len(set(y_train[index])) < 2:
            return 0.5  # a one-class draw leaves nothing to fit
        model = LogisticRegression(max_iter=1000).fit(x_train[index], y_train[index])
        return auc(y, model.predict_proba(x_held)[:, 1])

    result = {
        "held_out_rows": len(held),
        "train_rows": len(y_train),
        "noise_free": auc(y, [z[(r["user_id"], r["item_id"])] for r in held]),
        "ideal_rule": auc(y, x_held @ weights),
        "oracle_lr_all": oracle_auc(np.arange(len(y_train))),
    }
    for n in shots:
        result[f"oracle_lr_{n}"] = summary([oracle_auc(rng.choice(len(y_train), n, replace=False))
                                            for _ in range(draws)])
    return result


def plot(results: list[dict[str, Any]], shots: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['users']}x{r['items']}\nseed {r['data_seed']}" for r in results]
    x = np.arange(len(results))
    width = 0.8 / (len(shots) + 3)
    series = [("noise-free z", [r["noise_free"] for r in results], None),
              ("ideal rule", [r["ideal_rule"] for r in results], None),
              *[(f"oracle LR, {n} shots", [r[f"oracle_lr_{n}"]["mean"] for r in results],
                 [r[f"oracle_lr_{n}"]["sd"] for r in results]) for n in shots],
              ("oracle LR, all train", [r["oracle_lr_all"] for r in results], None)]
    for k, (name, values, errors) in enumerate(series):
        ax.bar(x + (k - len(series) / 2 + 0.5) * width, values, width, yerr=errors, label=name, capsize=2)
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set_ylim(0.4, 0.85)
    ax.set_xticks(x, labels)
    ax.set_ylabel("held-out AUC (test + cold)")
    ax.set_title("What the sample history can reveal, with perfect item attributes")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/history_signal.json"))
    parser.add_argument("--sizes", default="100x160,300x480", help="users x items, comma-separated")
    parser.add_argument("--data-seeds", default="0,1,2")
    parser.add_argument("--shots", default="64,256")
    parser.add_argument("--draws", type=int, default=20, help="few-shot draws per size")
    parser.add_argument("--history-len", type=int, default=SampleConfig().history_len)
    args = parser.parse_args()

    shots = [int(s) for s in args.shots.split(",")]
    samples = SampleConfig(history_len=args.history_len)
    results = []
    for size in args.sizes.split(","):
        users, items = (int(v) for v in size.split("x"))
        for seed in (int(s) for s in args.data_seeds.split(",")):
            row = {"users": users, "items": items, "data_seed": seed,
                   **analyse(SynthConfig(seed=seed, users=users, items=items), samples, shots, args.draws)}
            results.append(row)
            few = ", ".join(f"{n} shots {row[f'oracle_lr_{n}']['mean']:.3f}±{row[f'oracle_lr_{n}']['sd']:.3f}"
                            for n in shots)
            print(f"{users}x{items} seed {seed}: noise-free {row['noise_free']:.3f}, ideal rule "
                  f"{row['ideal_rule']:.3f}, oracle LR {few}, all train {row['oracle_lr_all']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "history_signal",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "settings": {"history_len": args.history_len, "shots": shots, "draws": args.draws,
                     "held_out": list(HELD_OUT), "generator_defaults_otherwise": True},
        "results": results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(results, shots, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""TALLRec's Book data (real, text only): the text-only LLM at 16/64/256 shots beside ``user_rate``.

    python bench/tallrec.py --data data_cache/tallrec/book --out bench/results/tallrec_book.json

``--data`` holds TALLRec's public Book instruction files ``valid.json`` (here the few-shot
training pool: TALLRec draws its shots from ``train.json`` and selects models on ``valid.json``,
but ``train.json`` is the repository's largest file and was not in the snapshot we could fetch)
and ``test.json``, fetched at measurement time from the TALLRec repository (``data/book/``) into
an ignored folder; they are never committed. Both go through the project's
importer (``atflrec data import-instructions``): one sample per record, each record its own user,
an item's id its ``<title> by <author>``.

For each size of ``--shots`` and seed of ``--seeds`` it draws the training rows from valid with
:func:`atflrec.samples.few_shot`, trains the ``text_llm`` recommender (TALLRec's setting: one
LoRA text adapter, the Book instruction and prompt) and scores the test rows: all of them, or a
subsample of ``--max-test-rows`` drawn with ``--test-seed`` (the same rows for every model and
seed). Beside it, ``user_rate`` scores each row by its history alone, liked / (liked + disliked)
(0.5 with no history), and needs no training: the registered kind with ``prior: 0``. Metric: AUC over
the test rows. GAUC is not meaningful here: every record is its own user with one target.

Writes ``--out`` as ``{"16": {"text_llm": mean AUC over the seeds run, "user_rate": AUC}, ...}``
(only the sizes run), a ``*_detail.json`` beside it (per-seed AUCs, settings, timings, TALLRec's
published table, what was run) and a PNG plot. Seeds are the outer loop (every size at the first
seed, then the next seed) and the results are rewritten after every fit, so an interrupted run
keeps what it finished; ``finished`` in the detail says whether the whole grid ran. A rerun with
the same settings extends the earlier run (its fits are kept and skipped; ``--shots`` and
``--seeds`` may name new ones); a rerun with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from atflrec.baselines import Context, Item, build_recommender
from atflrec.metrics import auc
from atflrec.samples import few_shot, read_samples
from atflrec.samples.instructions import import_instructions

BOOK_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target "
    'book by answering "Yes." or "No.".'
)
BOOK_INPUT = (
    "User Preference: {liked}\nUser Unpreference: {disliked}\n"
    "Whether the user will like the target book {target}?"
)
# TALLRec (Bao et al., RecSys 2023): AUC of TALLRec (LLaMA-7B, LoRA) on Book by training shots, as
# printed in the "Main results" table of the TALLRec repository's README (commit c1db29c). The
# sequential baselines of that table (GRU, Caser, SASRec, DROS, GRU-BERT, DROS-BERT) are all within
# 0.4898-0.5020 on Book.
PUBLISHED_TALLREC_BOOK = {"16": 0.5636, "64": 0.6039, "256": 0.6438}
PUBLISHED_NOTE = ("github.com/SAI990323/TALLRec README 'Main results' (commit c1db29c), TALLRec (ours), book "
                  "columns 56.36 / 60.39 / 64.38; sequential baselines there 48.98-50.20 on Book")


def load_split(data: Path, name: str, work: Path) -> pa.Table:
    """``data/<name>.json`` through the project's importer, as a sample table."""
    import_instructions(data / f"{name}.json", work / name, split=name)
    return read_samples(work / name, name)


def text_llm_settings(args: argparse.Namespace, longest_title: int) -> dict[str, Any]:
    return {
        "model": {
            "base_model": args.base_model,
            "prompt": {"instruction": BOOK_INSTRUCTION, "input_template": BOOK_INPUT,
                       "max_title_chars": max(longest_title, 80)},  # titles whole: no cut
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
        },
        "optim": {"lr": args.lr, "batch_size": args.batch_size, "epochs": args.epochs},
        "eval_batch_size": args.eval_batch_size,
        "device": args.device,
    }


def plot(detail: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = detail["text_llm_runs"]
    shots = sorted({r["shots"] for r in runs})
    for n in shots:
        values = [r["auc"] for r in runs if r["shots"] == n]
        ax.scatter([n] * len(values), values, color="tab:blue", s=14, alpha=0.6)
    if shots:
        ax.plot(shots, [np.mean([r["auc"] for r in runs if r["shots"] == n]) for n in shots], "o-",
                color="tab:blue", label=f"text_llm ({detail['settings']['base_model']}), mean over seeds")
    ax.axhline(detail["user_rate_auc"], color="tab:green", ls="--", label="user_rate (history like share)")
    published = detail["published_tallrec_book"]["values"]
    ax.plot([int(k) for k in published], list(published.values()), "s:", color="tab:red",
            label="TALLRec LLaMA-7B (published)")
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks([16, 64, 256], ["16", "64", "256"])
    ax.set_xlabel("training shots (from valid.json)")
    ax.set_ylabel(f"AUC on test.json ({detail['settings']['test_rows']} rows)")
    ax.set_title("TALLRec Book, text only")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(args: argparse.Namespace, detail: dict[str, Any]) -> None:
    runs = detail["text_llm_runs"]
    top = {str(n): {"text_llm": float(np.mean([r["auc"] for r in runs if r["shots"] == n])),
                    "user_rate": detail["user_rate_auc"]}
           for n in sorted({r["shots"] for r in runs})}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(top, indent=2) + "\n")
    detail["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    detail_path = args.out.with_name(args.out.stem + "_detail.json")
    detail_path.write_text(json.dumps(detail, indent=2) + "\n")
    plot(detail, args.out.with_suffix(".png"))


SAME_RUN_KEYS = ("shots", "seeds", "import_s")  # settings that may differ between invocations of one run


def resume(args: argparse.Namespace, detail: dict[str, Any]) -> set[tuple[int, int]]:
    """Carry the finished fits of an earlier invocation with the same settings into ``detail``
    (the grid is the union of both); a different setting is refused, never silently replaced."""
    path = args.out.with_name(args.out.stem + "_detail.json")
    if not path.exists():
        return set()
    earlier = json.loads(path.read_text())
    mine = {k: v for k, v in detail["settings"].items() if k not in SAME_RUN_KEYS}
    theirs = {k: v for k, v in earlier["settings"].items() if k not in SAME_RUN_KEYS}
    # Optimizer knobs the code gained since the earlier run (their defaults keep the old behaviour:
    # this script gives no validation rows, so e.g. eval_every has nothing to act on) are accepted
    # and recorded; a knob whose value changed is refused like any other setting.
    added = {k: v for k, v in mine.get("optim_defaults", {}).items() if k not in theirs.get("optim_defaults", {})}
    if added and "optim_defaults" in theirs:
        mine = {**mine, "optim_defaults": {k: v for k, v in mine["optim_defaults"].items() if k not in added}}
        detail["optim_defaults_added_since_earlier_fits"] = {
            **earlier.get("optim_defaults_added_since_earlier_fits", {}), **added}
    if mine != theirs:
        differ = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
        raise SystemExit(f"{path} holds a run with other settings ({', '.join(differ)}): "
                         "rerun with its settings to extend it, or choose another --out")
    for key in ("shots", "seeds"):
        detail["settings"][key] = sorted({*earlier["settings"][key], *detail["settings"][key]})
    detail["text_llm_runs"] = earlier["text_llm_runs"]
    detail["earlier_invocations"] = [*earlier.get("earlier_invocations", []),
                                     {k: earlier[k] for k in ("note", "when", "finished", "stopped_early")
                                      if k in earlier}]
    return {(r["shots"], r["seed"]) for r in earlier["text_llm_runs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with TALLRec's Book valid.json and test.json")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tallrec_book.json"))
    parser.add_argument("--shots", default="16,64,256")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-test-rows", type=int, help="seeded subsample of test.json (default: every row)")
    parser.add_argument("--test-seed", type=int, default=0)
    parser.add_argument("--base-model", default="smollm2-135m-instruct")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (eval/default's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--note", default="", help="anything else running on the machine")
    args = parser.parse_args()
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        pool_table = load_split(args.data, "valid", Path(tmp))
        pool, test = pool_table.to_pylist(), load_split(args.data, "test", Path(tmp)).to_pylist()
        import_s = time.perf_counter() - started
    test_all = len(test)
    if args.max_test_rows is not None and args.max_test_rows < len(test):
        rng = np.random.default_rng(args.test_seed)
        test = [test[i] for i in sorted(rng.choice(len(test), size=args.max_test_rows, replace=False))]
    labels = [r["label"] for r in test]
    ids = {i for r in [*pool, *test] for i in [r["item_id"], *r["liked_ids"], *r["disliked_ids"]]}
    context_items = {i: Item(title=i) for i in ids}
    longest = max(len(i) for i in ids)
    settings = text_llm_settings(args, longest)

    user_rate = build_recommender("user_rate", {"prior": 0.0})  # the raw share, 0.5 for no history
    user_rate.fit([], Context(items=context_items))
    rate_scores = user_rate.score(test)
    rate_source = "build_recommender('user_rate', {'prior': 0.0}), fit on no rows"
    rate_auc = auc(labels, rate_scores)
    print(f"{len(pool)} valid rows (pool), {len(test)} of {test_all} test rows; user_rate AUC {rate_auc:.4f}",
          flush=True)

    from atflrec.training.local import OptimConfig  # the defaults the settings do not name

    detail: dict[str, Any] = {
        "benchmark": "tallrec_book",
        "machine": platform.platform(),
        "note": args.note,
        "settings": {
            "data": "TALLRec data/book/valid.json (pool) and test.json, github.com/SAI990323/TALLRec",
            "pool_rows": len(pool), "test_rows_all": test_all, "test_rows": len(test),
            "max_test_rows": args.max_test_rows, "test_seed": args.test_seed,
            "test_positive_share": float(np.mean(labels)),
            "shots": shots, "seeds": seeds, "base_model": args.base_model,
            "text_llm": settings, "optim_defaults": OptimConfig().model_dump(mode="json"),
            "distinct_item_ids": len(ids), "import_s": round(import_s, 2),
            "metric": "AUC over the test rows; GAUC not meaningful (each record is its own user)",
        },
        "user_rate_auc": rate_auc, "user_rate_source": rate_source,
        "published_tallrec_book": {"values": PUBLISHED_TALLREC_BOOK, "source": PUBLISHED_NOTE},
        "text_llm_runs": [],
    }
    done = resume(args, detail)
    # Seed-major: every size at seed 0 first, so a run stopped early still covers every size.
    detail["finished"] = False
    for seed in seeds:
        for n in shots:
            if (n, seed) in done:
                print(f"{n} shots, seed {seed}: already in {args.out}, skipped", flush=True)
                continue
            train = few_shot(pool_table, n, seed).to_pylist()
            model = build_recommender("text_llm", settings)
            t0 = time.perf_counter()
            model.fit(train, Context(items=context_items, seed=seed))
            fit_s = time.perf_counter() - t0
            scores = model.score(test)
            score_s = time.perf_counter() - t0 - fit_s
            value = auc(labels, scores)
            detail["text_llm_runs"].append({"shots": n, "seed": seed, "auc": value, "fit_s": round(fit_s, 1),
                                            "score_s": round(score_s, 1),
                                            "train_positive_share": float(np.mean([r["label"] for r in train]))})
            print(f"{n} shots, seed {seed}: text_llm AUC {value:.4f} (fit {fit_s:.0f} s, score {score_s:.0f} s)",
                  flush=True)
            write(args, detail)
    detail["finished"] = True
    write(args, detail)
    print(f"wrote {args.out}, {args.out.with_name(args.out.stem + '_detail.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

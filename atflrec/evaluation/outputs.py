"""What an evaluation writes into its output directory: the runner writes these files, the report reads
them."""

from __future__ import annotations

import pyarrow as pa

CONFIG_FILE = "config.yaml"  # the configuration evaluated (a rerun with another one is refused)
RUN_FILE = "run.json"  # the run: command, invocations and timings, machine, data facts
RESULTS_FILE = "results.parquet"  # one row per (job, split), rewritten after every job
EVAL_ROWS_FILE = "eval_rows.parquet"  # the evaluation rows every model scored, in order
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"

# The columns of RESULTS_FILE.
RESULTS_SCHEMA = pa.schema([
    ("model", pa.string()), ("kind", pa.string()), ("variant", pa.string()), ("ablation", pa.string()),
    ("shots", pa.int64()), ("seed", pa.int64()), ("split", pa.string()), ("n_eval", pa.int64()),
    ("auc", pa.float64()), ("gauc", pa.float64()), ("log_loss", pa.float64()),
    ("fit_seconds", pa.float64()), ("score_seconds", pa.float64()),
    ("settings_key", pa.string()), ("data_key", pa.string()),
    ("scores", pa.list_(pa.float64())),  # per evaluation row, in EVAL_ROWS_FILE's order (paired tests)
    ("chosen", pa.string()), ("val_auc", pa.float64()),  # a search's selected point and its validation AUC
])

"""#18 finding 9: `atflrec evaluate` into an --out holding another configuration's evaluation is
refused (before any work) unless --replace; the same configuration resumes; a foreign non-empty
directory is never written into."""

from __future__ import annotations

from pathlib import Path

import pytest

from atflrec.config import dump_config
from atflrec.evaluation import EvalConfig, quick_config, run_evaluation
from atflrec.evaluation.runner import EvalOutError, check_out


def config(samples: str = "/nowhere/samples") -> EvalConfig:
    return EvalConfig.model_validate({"samples": samples, "shots": [8, 16], "seeds": [0, 1],
                                      "models": [{"name": "user_rate"}, {"name": "mf", "settings": {"epochs": 20}}]})


def earlier_evaluation(out: Path, of: EvalConfig) -> Path:
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(of))
    (out / "results.parquet").write_bytes(b"earlier results")
    (out / "report.md").write_text("# the committed evaluation\n")
    return out


def test_another_configuration_is_refused_before_any_work(tmp_path) -> None:
    out = earlier_evaluation(tmp_path / "eval", config())
    for other in (quick_config(config()), config(samples="/elsewhere")):
        with pytest.raises(EvalOutError, match="another configuration.*--replace"):
            run_evaluation(other, out)  # raises before reading the (missing) samples
    assert (out / "results.parquet").read_bytes() == b"earlier results"
    assert (out / "config.yaml").read_text() == dump_config(config())


def test_the_same_configuration_resumes_and_replace_is_explicit(tmp_path) -> None:
    out = earlier_evaluation(tmp_path / "eval", config())
    check_out(out, config())  # a rerun of the same evaluation resumes it
    (out / "config.yaml").write_text(dump_config(config()).replace("ablations: []\n", ""))
    check_out(out, config())  # a record written before a field existed: its default is meant
    check_out(out, quick_config(config()), replace=True)
    check_out(tmp_path / "new", quick_config(config()))
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", config())


def test_a_directory_that_holds_no_evaluation_is_never_written(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an evaluation")
    for replace in (False, True):
        with pytest.raises(EvalOutError, match="without an evaluation"):
            run_evaluation(config(), tmp_path, replace=replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

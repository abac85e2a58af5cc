"""The command line: verbs, help, overrides, and errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atflrec.cli import main, parse_args


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["data", "--help"], ["data", "validate", "--help"], ["features", "--help"],
                 ["model", "fetch", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0, argv
    assert "--n-mels" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "synth", "--out", "d", "users=3", "--seed", "2"],
        ["data", "synth", "users=3", "--out", "d", "--seed", "2"],
        ["data", "import-microlens", "src", "--out", "d", "users=3", "--seed", "2"],
    ],
)
def test_overrides_may_follow_options(argv: list[str]) -> None:
    args = parse_args(argv)
    assert args.overrides == ["users=3"]
    assert args.seed == 2 and args.out == "d"


def test_unknown_argument_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "validate", "somewhere", "users=3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: users=3" in capsys.readouterr().err


def test_config_error_exits_2_naming_the_key(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "ds"), "userz=3"]) == 2
    err = capsys.readouterr().err
    assert "userz: unknown key" in err and "Traceback" not in err


def test_console_script_runs_without_traceback(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atflrec.cli", "data", "validate", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "does not exist" in result.stdout + result.stderr


def test_synth_then_samples_through_the_cli(tmp_path) -> None:
    data, samples = tmp_path / "ds", tmp_path / "samples"
    assert main(["data", "synth", "--out", str(data), "--users", "12", "--items", "30", "clip_seconds=1"]) == 0
    assert main(["data", "validate", str(data)]) == 0
    assert main(["samples", "--data", str(data), "--out", str(samples)]) == 0
    assert sorted(p.name for p in samples.glob("*.parquet"))


def test_configs_list_names_every_shipped_config_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    from atflrec.config import packaged_configs

    assert main(["configs", "list"]) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == set(packaged_configs()) >= {"train/cpu", "eval/default", "tune/demo", "deepspeed/zero2_cpu"}
    assert lines["train/cpu"].startswith("Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers")
    assert lines["deepspeed/zero2_cpu"] == "ZeRO-2 on CPU workers (gloo)."


def test_configs_show_prints_the_file_and_names_what_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    from atflrec.config import find_config

    assert main(["configs", "show", "tune/demo"]) == 0
    assert capsys.readouterr().out == find_config("tune/demo").read_text()
    assert main(["configs", "show", "train/nope"]) == 2
    assert "'train/nope': no such file in the current directory, nor a shipped config" in capsys.readouterr().err


def test_config_key_flags_are_typed_and_described_by_the_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    from atflrec.tuning.space import TuneSpace

    with pytest.raises(SystemExit):
        main(["tune", "--space", "tune/demo", "--scheduler", "bogus"])
    assert "argument --scheduler: choose from asha, fifo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", "d", "--users", "many"])
    assert "argument --users: not an integer: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for key in ("num_samples", "scheduler", "out"):
        assert " ".join(TuneSpace.model_fields[key].description.split()) in help_text
    assert parse_args(["features", "--data", "d", "--out", "s", "--n-mels", "40,80"]).n_mels == "[40,80]"
    assert parse_args(["data", "synth", "--out", "d", "--users", "7"]).users == 7


def test_a_boolean_config_key_is_a_bare_switch(capsys: pytest.CaptureFixture[str]) -> None:
    from atflrec.cli import _stage_config
    from atflrec.features.pipeline import FeatureConfig

    argv = ["features", "--data", "d", "--out", "s"]
    assert _stage_config(parse_args([*argv, "--prune"])).prune is True
    assert _stage_config(parse_args(argv)).prune is False
    assert _stage_config(parse_args([*argv, "--prune", "prune=false"])).prune is False  # overrides win
    with pytest.raises(SystemExit):
        main(["features", "--help"])
    described = " ".join(FeatureConfig.model_fields["prune"].description.split())
    assert described in " ".join(capsys.readouterr().out.split())

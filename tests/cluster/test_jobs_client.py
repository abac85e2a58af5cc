"""`atflrec submit` / `atflrec jobs` without a cluster: addresses, tokens, argument handling and
the errors a user sees when the head cannot be reached."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from atflrec.cli import main, parse_args
from atflrec.cluster.jobs import auth_token, entrypoint, load_runtime_env, resolve_address
from atflrec.cluster.local import free_ports
from atflrec.config import ConfigError
from atflrec.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Ray address or token from the environment; HOME is an empty temp dir."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def dead_address() -> str:
    """A loopback address nothing listens on."""
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def test_unreachable_head_exits_2_naming_the_address(clean_env: Path, dead_address: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atflrec.cli", "submit", "features", "--data", "d", "--out", "s",
         "--address", dead_address, "--wait"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert f"cannot reach the Ray Jobs API at {dead_address}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("action", [["status", "raysubmit_x"], ["logs", "raysubmit_x"], ["stop", "raysubmit_x"],
                                    ["list"]])
def test_jobs_actions_report_an_unreachable_head(clean_env: Path, dead_address: str, action: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", *action, "--address", dead_address]) == 2
    assert f"cannot reach the Ray Jobs API at {dead_address}" in capsys.readouterr().err


def test_no_address_anywhere_is_a_clear_error(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "list"]) == 2
    assert "--address http://HEAD:8265" in capsys.readouterr().err


def test_address_explicit_then_api_server_then_ray_address(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://from-ray-address:8265")
    assert resolve_address(None) == "http://from-ray-address:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://from-api-server:8265/")
    assert resolve_address(None) == "http://from-api-server:8265"
    assert resolve_address("http://explicit:8265") == "http://explicit:8265"


def test_address_from_the_environment_is_used(clean_env: Path, dead_address: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_ADDRESS", dead_address)
    assert main(["jobs", "list"]) == 2
    assert dead_address in capsys.readouterr().err


def test_token_lookup_follows_rays_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = "http://127.0.0.1:8265"
    assert auth_token(local) is None
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_token(local) == "from-home"
    token_file = clean_env / "token"
    token_file.write_text("  from-path \n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert auth_token(local) == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token(local) == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_token(local) is None


@pytest.mark.parametrize("address", ["http://localhost:8265", "127.0.0.1:8265", "http://[::1]:8265", "auto"])
def test_the_home_token_goes_to_a_local_head(clean_env: Path, address: str) -> None:
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-home")
    assert auth_token(address) == "from-home"


def test_the_home_token_goes_elsewhere_only_when_asked(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-home")
    assert auth_token("http://ray-head.example:8265") is None
    assert auth_token("http://10.1.2.3:8265") is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert auth_token("http://ray-head.example:8265") == "from-home"
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "explicit")
    assert auth_token("http://ray-head.example:8265") == "explicit"


def test_an_unreadable_token_path_is_an_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_env / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH=.*cannot read"):
        auth_token("http://127.0.0.1:8265")
    (clean_env / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_env / "empty"))
    with pytest.raises(UserError, match="empty"):
        auth_token("http://127.0.0.1:8265")


def test_entrypoint_quotes_each_argument() -> None:
    argv = ["features", "--data", "/mnt/my data", "--out", "s3://b/store", "n_mels=[40,80]"]
    command = entrypoint(argv)
    assert command.startswith("atflrec features ")
    assert shlex.split(command) == ["atflrec", *argv]


def test_submit_options_may_follow_the_verb(clean_env: Path, dead_address: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Options after the verb's arguments belong to submit: the connection error names this address.
    assert main(["submit", "features", "--data", "d", "--out", "s", "--address", dead_address, "--wait"]) == 2
    assert dead_address in capsys.readouterr().err


def test_submit_option_given_twice_is_refused(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--wait", "features", "--data", "d", "--out", "s", "--wait"]) == 2
    assert "--wait is given twice" in capsys.readouterr().err


def test_the_verbs_arguments_are_checked_before_submitting(clean_env: Path, dead_address: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--address", dead_address, "features", "--data", "d"])  # --out missing
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot reach" not in err


@pytest.mark.parametrize("argv", [["submit", "--address", "http://h:8265"], ["submit", "jobs", "list"]])
def test_submit_needs_a_pipeline_verb(clean_env: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "atflrec submit:" in capsys.readouterr().err


def test_submit_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["submit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--address", "--runtime-env", "--wait", "--job-id"))


def test_runtime_env_file_is_checked(tmp_path: Path) -> None:
    assert load_runtime_env(ROOT / "cluster/runtime_env.yaml")["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text("env_var:\n  A: '1'\n")
    with pytest.raises(ConfigError, match=r"unknown runtime_env key\(s\) \['env_var'\]"):
        load_runtime_env(misspelt)
    wrong_type = tmp_path / "wrong_type.yaml"
    wrong_type.write_text("env_vars:\n  A: 1\n")
    with pytest.raises(ConfigError, match="env_vars"):
        load_runtime_env(wrong_type)


def test_a_token_over_plain_http_to_another_host_is_warned_about(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """#18 finding 10: the Jobs token travels in a header; over http beyond loopback it is readable."""
    from atflrec.cluster.jobs import Jobs, cleartext

    assert cleartext("http://10.0.0.5:8265") and cleartext("head.example:8265")
    assert not cleartext("https://head.example") and not cleartext("http://127.0.0.1:8265") and not cleartext("auto")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    with pytest.raises(UserError, match="cannot reach"):  # nothing listens there; the warning comes first
        Jobs("http://head.invalid:9")  # .invalid never resolves: fails at once
    assert "over plain http" in capsys.readouterr().err

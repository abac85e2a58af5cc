"""The shipped Serve configs: valid for Ray Serve, their args valid for the app, and the launch
options (`atflrec serve` reads the same files) taken from them; CLI shorthands become args."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from atflrec.config import ConfigError
from atflrec.serving.config import DEPLOYMENT, IMPORT_PATH, ServeArgs, load_serve_config
from atflrec.serving.launch import checkpoint_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["serve/local.yaml", "serve/cluster.yaml"]


@pytest.mark.parametrize("relative", CONFIGS)
def test_shipped_serve_config_is_valid_for_serve_and_for_the_app(relative: str, monkeypatch) -> None:
    monkeypatch.setenv("ATFLREC_API_TOKEN", "test-token")  # cluster.yaml requires one
    path = ROOT / relative
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(("# atflrec serve ", "# serve deploy ", "# serve run ")), "open with the command"
    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)  # Ray Serve's own schema for `serve run` / `serve deploy`
    (app,) = raw["applications"]
    module, _, attribute = app["import_path"].partition(":")
    assert app["import_path"] == IMPORT_PATH and callable(getattr(importlib.import_module(module), attribute))
    args = ServeArgs.model_validate(app["args"])
    (deployment,) = app["deployments"]
    assert deployment["name"] == DEPLOYMENT
    scaling = deployment["autoscaling_config"]
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"] and scaling["target_ongoing_requests"] > 0
    # A replica must admit a whole batch, or batches never fill (Serve warns about it).
    assert deployment["max_ongoing_requests"] >= args.batching.max_batch_size

    # Hardening (#18): bounded queues answering 503 with Retry-After, a request timeout.
    assert deployment["max_queued_requests"] > 0 and deployment["backpressure_config"]["retry_after_s"] > 0
    assert raw["http_options"]["request_timeout_s"] > 0
    launch = load_serve_config(path)
    loopback = raw["http_options"]["host"] == "127.0.0.1"
    assert launch.args.auth.required is (False if loopback else True)
    assert (launch.args.model_copy(update={"auth": args.auth}) == args and launch.name == "atflrec"
            and launch.route_prefix == "/")
    assert launch.deployment_options["autoscaling_config"]["max_replicas"] == scaling["max_replicas"]
    assert launch.http_options["port"] == raw["http_options"]["port"]


def test_overrides_and_shorthands_replace_args() -> None:
    overrides = checkpoint_overrides(["runs/a/best", "tuned=/x/y z"], dataset="/d", features="s3://b/f")
    launch = load_serve_config(ROOT / "serve/local.yaml", overrides + ["limits.max_k=7"])
    assert launch.args.models == {"best": "runs/a/best", "tuned": "/x/y z"} and launch.args.default_model == "best"
    assert launch.args.dataset == "/d" and launch.args.features == "s3://b/f" and launch.args.limits.max_k == 7
    resolved = launch.args.resolved()
    assert Path(resolved.models["best"]).is_absolute() and resolved.features == "s3://b/f"


def test_bad_args_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="limits.max_kk: unknown key"):
        load_serve_config(ROOT / "serve/local.yaml", ["limits.max_kk=3"])
    with pytest.raises(ConfigError, match="batching.max_batch_size: Input should be greater than or equal to 1"):
        load_serve_config(ROOT / "serve/local.yaml", ["batching.max_batch_size=0"])
    with pytest.raises(ConfigError, match="models: .*model ids must match"):
        load_serve_config(ROOT / "serve/local.yaml", ['models={"bad id": "/x"}'])
    with pytest.raises(ConfigError, match="dataset: Field required"):
        load_serve_config(None, ['models={"m": "/x"}', "features=/f"])
    other = tmp_path / "other.yaml"
    other.write_text("applications:\n  - name: x\n    import_path: some.module:app\n")
    with pytest.raises(ConfigError, match="expected one application with import_path"):
        load_serve_config(other)


def test_binding_beyond_loopback_needs_a_token_unless_disabled(monkeypatch, tmp_path) -> None:
    """#18 finding 3: a config binding 0.0.0.0 without a token is refused before deploying."""
    monkeypatch.delenv("ATFLREC_API_TOKEN", raising=False)
    wide = tmp_path / "wide.yaml"
    raw = yaml.safe_load((ROOT / "serve/local.yaml").read_text())
    raw["http_options"]["host"] = "0.0.0.0"
    wide.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="no API token is set"):
        load_serve_config(wide)
    assert load_serve_config(wide, ["auth.required=false"]).args.auth.required is False  # open on purpose
    assert load_serve_config(None, ['models={"m": "/x"}', "dataset=/d", "features=/f"]).http_options == {
        "request_timeout_s": 60.0}  # a request timeout even without a config file
    monkeypatch.setenv("ATFLREC_API_TOKEN", "secret")
    assert load_serve_config(wide).args.auth.required is True
    monkeypatch.delenv("ATFLREC_API_TOKEN")
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    launch = load_serve_config(wide, [f"auth.token_file={token}"])
    assert launch.args.auth.required is True and launch.args.auth.token() == "from-a-file"
    token.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_serve_config(wide, [f"auth.token_file={token}"])

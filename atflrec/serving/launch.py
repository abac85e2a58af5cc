"""Deploying the application from Python or the CLI (``atflrec serve``), the way ``serve run`` would."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from atflrec.serving.config import MODEL_ID, ServeLaunch


def checkpoint_overrides(checkpoints: Sequence[str] = (), dataset: str | None = None,
                         features: str | None = None) -> list[str]:
    """``key=value`` overrides of the app args from ``--checkpoint [ID=]DIR`` (repeatable; the id
    defaults to the directory's name; the first is the default model), ``--data`` and ``--features``."""
    overrides = []
    if checkpoints:
        models = {}
        for text in checkpoints:
            model_id, sep, path = text.partition("=")
            if not (sep and MODEL_ID.fullmatch(model_id)):
                model_id, path = Path(text).resolve().name, text
            models[model_id] = path
        overrides.append(f"models={json.dumps(models)}")  # JSON is YAML: paths stay strings
    if dataset is not None:
        overrides.append(f"dataset={json.dumps(dataset)}")
    if features is not None:
        overrides.append(f"features={json.dumps(features)}")
    return overrides


def deploy(launch: ServeLaunch) -> str:
    """Start Serve with the config's HTTP options (unless it runs already) and run the app on the
    connected Ray cluster; returns the app's base URL."""
    from ray import serve

    from atflrec.serving.app import make_app

    app = make_app(launch.args, launch.deployment_options)
    serve.start(http_options=launch.http_options or None, proxy_location=launch.proxy_location)
    serve.run(app, name=launch.name, route_prefix=launch.route_prefix)
    host = launch.http_options.get("host", "127.0.0.1")
    port = launch.http_options.get("port", 8000)
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}{launch.route_prefix.rstrip('/')}/"


def serve_until_interrupted(name: str) -> None:
    """Keep this process (and a Ray cluster it started) alive; Ctrl-C deletes the application."""
    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(name)

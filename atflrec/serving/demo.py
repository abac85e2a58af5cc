"""The demo's last step: deploy a model, ask for recommendations over HTTP, print the answer."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from atflrec.console import say
from atflrec.serving.config import APP_NAME, ServeArgs, ServeLaunch


def example_history(dataset_dir: str | Path, length: int = 10) -> list[dict[str, Any]]:
    """The latest ``length`` interactions of the dataset's most active user, oldest first."""
    from atflrec.data.format import read_interactions

    rows = read_interactions(dataset_dir).to_pylist()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["user_id"]] = counts.get(row["user_id"], 0) + 1
    user = max(sorted(counts), key=counts.__getitem__)
    mine = sorted((r for r in rows if r["user_id"] == user), key=lambda r: r["timestamp"])[-length:]
    return [{"item_id": r["item_id"], "liked": bool(r["label"])} for r in mine]


def post_json(url: str, body: dict[str, Any], timeout_s: float = 300) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def serve_and_query(artifact_dir: str | Path, dataset_dir: str | Path, features_uri: str, *, k: int = 5,
                    port: int = 8000, items_dir: str | Path | None = None,
                    keep_running: bool = False) -> dict[str, Any]:
    """Deploy ``artifact_dir`` on 127.0.0.1:``port`` (joining the running Ray cluster or starting
    one), send one ``POST /v1/recommend`` for the dataset's most active user, print the answer, its
    latency and both stages' scores, and delete the application unless ``keep_running``. Returns the
    URL, the request and the answer."""
    from ray import serve

    from atflrec.ray_connect import connect
    from atflrec.serving.launch import deploy

    args = ServeArgs(models={"best": str(artifact_dir)}, dataset=str(dataset_dir), features=features_uri,
                     items_dir=str(items_dir or Path(artifact_dir).parent / "serve-items"))
    connect(None)
    url = deploy(ServeLaunch(args, http_options={"host": "127.0.0.1", "port": port}))
    request = {"history": example_history(dataset_dir), "k": k}
    say(f"POST {url}v1/recommend  (history of {len(request['history'])} items, k={k})")
    start = time.perf_counter()
    answer = post_json(url + "v1/recommend", request)
    seconds = time.perf_counter() - start
    say(f"  {seconds:.1f} s: the retrieval stage shortlisted {answer['retrieved']} of {answer['catalogue_size']} "
        "items and the LLM re-ranked only those")
    for rank, item in enumerate(answer["items"], 1):
        say(f"  {rank}. {item['item_id']}  {item['title']!r}  P(yes)={item['score']:.3f}  "
            f"(retrieval rank {item['retrieval_rank']}, score {item['retrieval_score']:.3f})")
    if not keep_running:
        serve.delete(APP_NAME)
    return {"url": url, "request": request, "response": answer}

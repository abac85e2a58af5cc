"""bench/badinput.py without a server: enough hostile cases, every one a 4xx (the quota fillers
aside), and only ever sent to 127.0.0.1. (The live run is the benchmark itself:
bench/results/badinput.json.)"""

from __future__ import annotations

from pathlib import Path

from bench_scripts import load_script


def load():
    return load_script("badinput")


def test_the_cases_are_hostile_bounded_and_local() -> None:
    bench = load()
    cases = bench.cases([f"i{n}" for n in range(10)])
    assert len(cases) >= 40 and len({c[0] for c in cases}) == len(cases)
    for name, _method, path, _kwargs, accepted in cases:
        assert path.startswith("/") and "://" not in path, name
        assert all(400 <= s < 500 for s in accepted) or name.startswith(("quota filler", "text/plain")), name
    assert bench.HOST == "127.0.0.1"
    config = bench.serve_config({k: Path("/x") for k in ("model", "dataset", "features", "items")}, 8123)
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["applications"][0]["args"]["auth"]["required"] is True

"""Every file in cluster/ is parsed and checked against what KubeRay and Ray expect.

KubeRay manifests: the CRD-derived schemas in kuberay_schema.py, plus the rules a cluster of this
project needs (Ray version of the installed Ray, one image everywhere, token auth, autoscaling,
volumes that exist, replica bounds). Job entrypoints must be atflrec commands this CLI accepts, with
config files that exist; the embedded runtime env and Serve config must equal the files they copy.
The launcher config is checked by Ray's own schema and the checks `ray up` runs before it starts.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from kuberay_schema import SCHEMAS
from ray.serve.schema import ServeDeploySchema

from atflrec.cli import build_parser, parse_args
from atflrec.cluster.jobs import load_runtime_env
from atflrec.config import load_config, packaged_configs

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY_FILES = ["shared-storage.yaml", "raycluster.yaml", "rayjob-features.yaml", "rayjob-train.yaml",
                 "rayjob-tune.yaml", "rayservice.yaml", "networkpolicy.yaml"]
OTHER_FILES = ["aws.yaml", "runtime_env.yaml"]  # the launcher config and the runtime env, checked below
PATH_FLAGS = ("--config", "--space")  # flags whose value names a shipped config
CONFIG_MODELS = {  # the config model each verb loads its --config / --space file into
    "features": "atflrec.features.pipeline:FeatureConfig",
    "samples": "atflrec.samples:SampleConfig",
    "train": "atflrec.training.distributed_config:TrainConfig",
    "tune": "atflrec.tuning.space:TuneSpace",
}


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc is not None]


def kuberay_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in KUBERAY_FILES:
        for doc in documents(name):
            yield name, doc


def ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s.get("rayClusterSpec"),
            "RayService": lambda s: s["rayClusterConfig"]}.get(doc["kind"], lambda s: None)(doc["spec"])


def pod_specs(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["template"]["spec"]


def the_image() -> str:
    """The atflrec image: the one raycluster.yaml's head runs; every other file must agree."""
    return documents("raycluster.yaml")[0]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def test_every_file_in_cluster_is_checked() -> None:
    shipped = {p.name for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml")}
    assert shipped == set(KUBERAY_FILES + OTHER_FILES)


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_manifest_matches_the_crd_schema(name: str) -> None:
    for doc in documents(name):
        assert doc.get("kind") in SCHEMAS, f"{name}: unexpected kind {doc.get('kind')!r}"
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])


@pytest.mark.parametrize(
    "break_it",
    [
        lambda spec: spec.pop("headGroupSpec"),
        lambda spec: spec.update(enableInTreeAutoscalling=True),
        lambda spec: spec["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        lambda spec: spec["workerGroupSpecs"][0].pop("minReplicas"),
        lambda spec: spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        .update(memory="16GB"),
        lambda spec: spec["autoscalerOptions"].update(version="v3"),
    ],
    ids=["no-head", "misspelt-key", "int-start-param", "no-min-replicas", "bad-quantity", "bad-enum"],
)
def test_the_schema_rejects_broken_manifests(break_it: Any) -> None:
    doc = copy.deepcopy(documents("raycluster.yaml")[0])
    break_it(doc["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMAS["RayCluster"])


@pytest.mark.parametrize("name", [n for n in KUBERAY_FILES if n.startswith("ray")])
def test_ray_clusters_fit_this_project(name: str) -> None:
    claims = {doc["metadata"]["name"] for doc in documents("shared-storage.yaml")}
    for doc in documents(name):
        cluster = ray_cluster_spec(doc)
        assert cluster is not None, f"{name}: {doc['kind']} without a Ray cluster spec"
        assert cluster["rayVersion"] == ray.__version__, "rayVersion must be the Ray atflrec pins"
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["authOptions"]["mode"] == "token"
        assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "the head runs no tasks"
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        for pod in pod_specs(cluster):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                assert container["image"] == the_image()
                assert container["resources"]["requests"] == container["resources"]["limits"]
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"{name}: mount of undeclared volume {mount['name']!r}"
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims


def gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|Ti)", quantity).groups()
    return float(number) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[unit]


@pytest.mark.parametrize("name", [n for n in KUBERAY_FILES if n.startswith("ray")])
def test_pods_run_unprivileged_with_bounded_shared_memory(name: str) -> None:
    """#18 finding 10: non-root, no privilege escalation, no capabilities, seccomp RuntimeDefault;
    /dev/shm (memory-backed) bounded, with room for Ray's default object store (30 % of memory)."""
    for doc in documents(name):
        for pod in pod_specs(ray_cluster_spec(doc)):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            (container,) = pod["containers"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"].get("privileged", False) is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            memory = gibibytes(container["resources"]["limits"]["memory"])
            for volume in pod["volumes"]:
                if volume.get("emptyDir", {}).get("medium") == "Memory":
                    assert 0.3 * memory <= gibibytes(volume["emptyDir"]["sizeLimit"]) <= 0.5 * memory, (name, volume)


def test_the_serve_port_needs_a_token_and_a_network_policy() -> None:
    """#18 findings 3 and 10: the RayService requires the API token (from a Secret, on every pod),
    and a NetworkPolicy admits only named clients to :8000 and only the operator to Ray's dashboard."""
    (service,) = documents("rayservice.yaml")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["applications"][0]["args"]["auth"]["required"] is True
    (policy,) = documents("networkpolicy.yaml")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for pod_template in [service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]] + [
            g["template"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        assert selected.items() <= pod_template["metadata"]["labels"].items()
        env = {e["name"]: e for e in pod_template["spec"]["containers"][0]["env"]}
        token = env[serve_config["applications"][0]["args"]["auth"]["token_env"]]
        assert "secretKeyRef" in token["valueFrom"] and "value" not in token
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_ports = set()
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "a rule without peers admits everyone"
        ports = {p["port"] for p in rule.get("ports", [])}
        if not ports:  # only the cluster's own pods may reach every port
            assert rule["from"] == [{"podSelector": {"matchLabels": selected}}]
        open_ports |= ports
    assert open_ports == {8000, 8265, 52365}


def test_raycluster_has_cpu_and_gpu_workers() -> None:
    groups = documents("raycluster.yaml")[0]["spec"]["workerGroupSpecs"]
    gpus = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in groups}
    assert any(gpus.values()) and not all(gpus.values()), gpus


def atflrec_commands(entrypoint: str) -> list[list[str]]:
    """The atflrec commands in a RayJob entrypoint: one command, or `bash -c 'A && B'`."""
    words = shlex.split(entrypoint)
    if words[:2] == ["bash", "-c"] and len(words) == 3:
        return [shlex.split(part) for part in words[2].split("&&")]
    return [words]


@pytest.mark.parametrize("name", ["rayjob-features.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"])
def test_rayjob_runs_atflrec_in_the_shipped_runtime_env(name: str) -> None:
    (job,) = documents(name)
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == load_runtime_env(CLUSTER / "runtime_env.yaml")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    verbs = build_parser()._subparsers._group_actions[0].choices  # the verbs this CLI has
    for command in atflrec_commands(job["spec"]["entrypoint"]):
        assert command[0] == "atflrec", command
        if command[1] not in verbs:
            pytest.skip(f"`atflrec {command[1]}` is not in this checkout yet; {name} cannot be checked")
        parse_args(command[1:])  # exits (fails the test) on a flag the verb does not have
        config_file = None
        for flag, value in zip(command, command[1:]):
            if flag in PATH_FLAGS:
                assert value in packaged_configs(), f"{name}: {flag} {value} is not a shipped config's name"
                config_file = value
        if command[1] in CONFIG_MODELS:  # the config file with the entrypoint's key=value overrides
            module, _, model = CONFIG_MODELS[command[1]].partition(":")
            overrides = [word for word in command[2:] if "=" in word and not word.startswith("-")]
            load_config(getattr(importlib.import_module(module), model), config_file, overrides)


def test_rayservice_serves_the_cluster_serve_config() -> None:
    (service,) = documents("rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)  # Ray Serve's own schema for `serve deploy` configs
    serve_config = ROOT / "serve/cluster.yaml"
    if not serve_config.is_file():
        pytest.skip("serve/cluster.yaml is not written yet (serving issue)")
    assert embedded == yaml.safe_load(serve_config.read_text()), "serveConfigV2 must equal serve/cluster.yaml"


def test_runtime_env_is_valid_for_ray() -> None:
    env = load_runtime_env(CLUSTER / "runtime_env.yaml")  # Ray's RuntimeEnv class checks it
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def test_launcher_config_passes_rays_checks() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks before launching
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == the_image()
    types = config["available_node_types"]
    gpu_types = [t for t in types.values() if re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu_types and len(gpu_types) < len(types) - 1, "needs GPU and CPU worker types besides the head"
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert all("RAY_AUTH_MODE=token ray start" in " ".join(config[key])
               for key in ("head_start_ray_commands", "worker_start_ray_commands"))


def test_dockerfile_builds_on_the_pinned_ray_and_python() -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.MULTILINE)
    assert base is not None
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base.group(1).startswith(f"rayproject/ray:{ray.__version__}-{python}-")

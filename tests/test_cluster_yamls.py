"""Offline checks of the Ray cluster launcher YAMLs under cluster/.

Every cluster/*.yaml is validated with Ray's own code, exactly as `ray up` starts:
``validate_config(prepare_config(cfg))`` from ``ray.autoscaler._private.util``.

What that covers offline (read from the ray 2.60 source):
  * ``prepare_config`` - for ``provider.type: local`` it runs ``prepare_local`` (builds Ray's single
    node type from head_ip/worker_ips, refuses ``available_node_types``); otherwise it merges the
    provider's ``defaults.yaml`` shipped inside the ray wheel (a file read), prepends
    ``setup_commands`` to the head/worker setup commands, checks the docker section and fills
    per-node-type min/max workers. It never imports a node provider class, boto3 or
    googleapiclient, and needs no credentials.
  * ``validate_config`` - jsonschema against ``ray/autoscaler/ray-schema.json`` (unknown keys are
    rejected at the top level and inside node types, min/max_workers must be integers, resource
    values must be schema "integer" >= 0), plus ``head_node_type`` in ``available_node_types`` and
    sum(min_workers) <= max_workers.

What needs the cloud and is therefore NOT called here: ``commands._bootstrap_config`` ->
``NodeProvider.fillout_available_node_types_resources`` (AWS: ec2.describe_instance_types) and
``NodeProvider.bootstrap_config`` (AWS: IAM profile, key pair, subnets, security group, AMI;
GCP: project, service account, SSH keys, subnets). So AMI ids, instance/machine types, GPU
types, zones, quotas and IAM are not checked by this test.

Ray's schema uses draft-07 "integer", which accepts 1.0 (a float with no fraction); our own
check below requires real ints.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private import providers
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
CLUSTER_YAMLS = sorted(CLUSTER_DIR.glob("*.yaml"))
EXPECTED = {"aws-gpu.yaml", "gcp-gpu.yaml", "local-multinode.yaml"}

REPO_MOUNT = "/home/ray/lth-sweep"
INSTALL_RE = re.compile(r"\bpip install\b.*(?:-e|--editable)\s+" + re.escape(REPO_MOUNT) + r"/?(?:\s|\[|$)")
IMAGE_RE = re.compile(
    r"^rayproject/ray:(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)"
    r"-py(?P<py>3\d+)(?:-(?P<platform>cpu|gpu|cu\d+))?$"
)
STORAGE_HINT = {"aws": "s3://", "gcp": "gs://", "local": "NFS"}


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def ray_validate(cfg: dict) -> dict:
    """Ray's own offline validation; returns the prepared (defaults-filled) config."""
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def resource_problems(cfg: dict) -> list[str]:
    """Our stricter check: every `resources` value must be a real int >= 0 (no float, no bool)."""
    problems = []
    for name, node_type in (cfg.get("available_node_types") or {}).items():
        for key, value in (node_type.get("resources") or {}).items():
            if type(value) is not int or value < 0:
                problems.append(f"{name}.resources.{key} = {value!r} (must be an integer >= 0)")
    return problems


def check_cluster_config(cfg: dict) -> dict:
    """Ray's validation followed by ours; raises on the first problem."""
    prepared = ray_validate(cfg)
    problems = resource_problems(cfg) + resource_problems(prepared)
    if problems:
        raise ValueError("; ".join(problems))
    return prepared


def worker_types(prepared: dict) -> dict:
    head = prepared["head_node_type"]
    return {k: v for k, v in prepared["available_node_types"].items() if k != head}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network and no cloud SDK: fail loudly if Ray's offline path ever starts using them."""

    def no_network(*args, **kwargs):
        raise AssertionError("cluster YAML validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    def no_provider(provider_config):
        raise AssertionError(f"validation loaded the {provider_config.get('type')} node provider (cloud SDK)")

    for provider_type in list(providers._NODE_PROVIDERS):
        monkeypatch.setitem(providers._NODE_PROVIDERS, provider_type, no_provider)


def test_expected_cluster_files_exist():
    assert EXPECTED <= {p.name for p in CLUSTER_YAMLS}
    assert (CLUSTER_DIR / "README.md").is_file()


@pytest.fixture(params=CLUSTER_YAMLS, ids=lambda p: p.name)
def cluster_yaml(request) -> Path:
    return request.param


def test_ray_validates_offline(cluster_yaml):
    prepared = check_cluster_config(load(cluster_yaml))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_resources_are_integers(cluster_yaml):
    cfg = load(cluster_yaml)
    assert resource_problems(cfg) == []
    assert resource_problems(ray_validate(cfg)) == []


def test_worker_types_have_gpus_and_sane_bounds(cluster_yaml):
    cfg = load(cluster_yaml)
    prepared = ray_validate(cfg)
    assert prepared["max_workers"] >= 0
    for name, node_type in prepared["available_node_types"].items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] <= prepared["max_workers"], name

    if cfg["provider"]["type"] == "local":
        # Ray refuses available_node_types for local clusters; it detects CPUs/GPUs when each
        # machine starts Ray, so there is no per-type GPU resource to check.
        assert "available_node_types" not in cfg
        return

    workers = worker_types(prepared)
    assert workers, "no GPU worker node type"
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"worker type {name} has no GPU resource"
        assert node_type["resources"].get("CPU", 0) >= 1, f"worker type {name} has no CPU resource"
        # GPU nodes are only started on demand.
        assert cfg["available_node_types"][name].get("min_workers") == 0, name
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is meant to be a CPU node"


def test_docker_image_matches_installed_ray(cluster_yaml):
    cfg = load(cluster_yaml)
    docker = cfg.get("docker") or {}
    images = [docker.get(k) for k in ("image", "head_image", "worker_image") if docker.get(k)]
    for node_type in (cfg.get("available_node_types") or {}).values():
        if (node_type.get("docker") or {}).get("worker_image"):
            images.append(node_type["docker"]["worker_image"])
    assert images, "no docker image"

    ray_major, ray_minor = ray.__version__.split(".")[:2]
    for image in images:
        m = IMAGE_RE.match(image)
        assert m, f"{image!r} is not a versioned rayproject/ray image (ray-ml stopped after 2.49)"
        assert (m["major"], m["minor"]) == (ray_major, ray_minor), f"{image} vs ray {ray.__version__}"
        assert int(m["py"][1:]) >= 10, f"{image}: lth-sweep needs Python >= 3.10"
        assert m["platform"] and m["platform"] != "cpu", f"{image}: GPU nodes need a -gpu/-cuXXX image"


def test_file_mounts_sync_the_repo(cluster_yaml):
    cfg = load(cluster_yaml)
    local = cfg.get("file_mounts", {}).get(REPO_MOUNT)
    assert local is not None, f"file_mounts must mount the repo at {REPO_MOUNT}"
    # `ray up` resolves a relative local path against its working directory: the repo root.
    source = (ROOT / Path(local).expanduser()).resolve()
    assert source == ROOT, f"{local!r} is not the repository root"
    pyproject = (source / "pyproject.toml").read_text()
    assert re.search(r'^name\s*=\s*"lth-sweep"', pyproject, re.M), "not the lth-sweep repository"


def test_setup_commands_install_lth_sweep_on_every_node(cluster_yaml):
    cfg = load(cluster_yaml)
    assert any(INSTALL_RE.search(c) for c in cfg.get("setup_commands", [])), "setup_commands"
    prepared = ray_validate(cfg)
    lists = {
        "head_setup_commands": prepared["head_setup_commands"],
        "worker_setup_commands": prepared["worker_setup_commands"],
    }
    # A node type's own worker_setup_commands replace the global setup for that type.
    for name, node_type in prepared["available_node_types"].items():
        if "worker_setup_commands" in node_type:
            lists[f"{name}.worker_setup_commands"] = node_type["worker_setup_commands"]
    for where, commands in lists.items():
        assert any(INSTALL_RE.search(c) for c in commands), f"{where} does not install lth-sweep"


def test_yaml_tells_user_about_shared_storage(cluster_yaml):
    text = cluster_yaml.read_text()
    provider_type = load(cluster_yaml)["provider"]["type"]
    assert "--storage" in text
    assert STORAGE_HINT[provider_type] in text


# ---------------------------------------------------------------- negative cases


@pytest.fixture
def aws_cfg() -> dict:
    return load(CLUSTER_DIR / "aws-gpu.yaml")


def first_gpu_worker(cfg: dict) -> dict:
    head = cfg["head_node_type"]
    return next(v for k, v in cfg["available_node_types"].items() if k != head)


def test_fractional_gpu_resource_is_rejected_by_ray(aws_cfg):
    first_gpu_worker(aws_cfg)["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(aws_cfg)
    assert resource_problems(aws_cfg)


@pytest.mark.parametrize("value", [1.0, True])
def test_non_int_resource_is_rejected_by_our_check(aws_cfg, value):
    # Ray's draft-07 schema accepts 1.0 as an "integer"; our check does not.
    first_gpu_worker(aws_cfg)["resources"]["GPU"] = value
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        check_cluster_config(aws_cfg)


def test_unknown_top_level_key_is_rejected(aws_cfg):
    aws_cfg["max_worker"] = 4  # typo of max_workers
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(aws_cfg)


def test_unknown_node_type_key_is_rejected(aws_cfg):
    first_gpu_worker(aws_cfg)["resource"] = {"GPU": 1}  # typo of resources
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(aws_cfg)


def test_unknown_head_node_type_is_rejected(aws_cfg):
    aws_cfg["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        ray_validate(aws_cfg)

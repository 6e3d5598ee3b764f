"""`lth-sweep cluster validate` and the shipped cluster files (launcher YAMLs, KubeRay manifests), offline.

Launcher YAMLs are validated with Ray's own code, exactly as `ray up` starts:
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

KubeRay manifests are validated against the ray.io/v1 openAPIV3Schema of KubeRay's own CRDs (release
v1.7.0, package data under lth_sweep/sweep/kuberay_schemas/). No Kubernetes API server exists here, so
what only a cluster knows (the image exists, GPU nodes exist, the Secrets exist) is not checked.

Ray's schema uses draft-07 "integer", which accepts 1.0 (a float with no fraction); our own check
requires real ints.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private import providers
from ray.autoscaler._private.util import prepare_config, validate_config

from lth_sweep.cli import cli
from lth_sweep.errors import UserError
from lth_sweep.sweep import cluster as cluster_module
from lth_sweep.sweep.cluster import IMAGE_TAG_RE, kuberay_schema, validate_file

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
SHIPPED = sorted(p for p in CLUSTER_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))
LAUNCHER_YAMLS = sorted(CLUSTER_DIR.glob("*.yaml"))
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
KUBERAY_YAMLS = sorted(KUBERAY_DIR.glob("*.yaml"))
EXPECTED = {"aws-gpu.yaml", "gcp-gpu.yaml", "local-multinode.yaml", "kuberay/raycluster.yaml",
            "kuberay/rayjob.yaml", "kuberay/rayjob-resume.yaml"}

REPO_MOUNT = "/home/ray/lth-sweep"
INSTALL_RE = re.compile(r"\bpip install\b.*(?:-e|--editable)\s+" + re.escape(REPO_MOUNT) + r"/?(?:\s|\[|$)")
STORAGE_HINT = {"aws": "s3://", "gcp": "gs://", "local": "NFS"}
FAKE_WANDB_KEY = "lthfake0123456789abcdef0123456789abcdef01"
FAKE_AWS_SECRET = "lthFakeSecret0123456789abcdefGHIJKLMNOPQR"


def load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def ray_validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray's own offline validation; returns the prepared (defaults-filled) config."""
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def worker_types(prepared: dict[str, Any]) -> dict[str, Any]:
    head = prepared["head_node_type"]
    return {k: v for k, v in prepared["available_node_types"].items() if k != head}


def rel(path: Path) -> str:
    return path.relative_to(CLUSTER_DIR).as_posix()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network and no cloud SDK: fail loudly if Ray's offline path ever starts using them."""

    def no_network(*args, **kwargs):
        raise AssertionError("cluster file validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    def no_provider(provider_config):
        raise AssertionError(f"validation loaded the {provider_config.get('type')} node provider (cloud SDK)")

    for provider_type in list(providers._NODE_PROVIDERS):
        monkeypatch.setitem(providers._NODE_PROVIDERS, provider_type, no_provider)


def test_expected_cluster_files_exist():
    assert EXPECTED <= {rel(p) for p in SHIPPED}
    assert (CLUSTER_DIR / "README.md").is_file()
    assert (KUBERAY_DIR / "Dockerfile").is_file()


# ---------------------------------------------------------------- every shipped file passes


@pytest.mark.parametrize("path", SHIPPED, ids=rel)
def test_shipped_file_passes_our_validator(path):
    assert validate_file(path).line().startswith(f"{path}: ok (")


def test_cli_validates_every_shipped_file_by_default():
    proc = subprocess.run([sys.executable, "-m", "lth_sweep.cli", "cluster", "validate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(SHIPPED)
    for path, line in zip(SHIPPED, lines, strict=True):
        assert line.startswith(f"cluster/{rel(path)}: ok ("), line
    assert proc.stderr == ""


@pytest.fixture(params=LAUNCHER_YAMLS, ids=lambda p: p.name)
def cluster_yaml(request) -> Path:
    return request.param


def test_ray_validates_offline(cluster_yaml):
    prepared = ray_validate(load(cluster_yaml))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", KUBERAY_YAMLS, ids=lambda p: p.name)
def test_kuberay_manifest_passes_the_crd_schema(path):
    """KubeRay's schema as shipped (open, as the API server prunes) and closed (as strict validation refuses)."""
    doc = load(path)
    data = json.loads((ROOT / "lth_sweep/sweep/kuberay_schemas" / f"{doc['kind'].lower()}s.json").read_text())
    assert data["kuberay_version"] == "v1.7.0" and data["apiVersion"] == doc["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(data["openAPIV3Schema"]).validate(doc)
    kuberay_schema(doc["kind"])[1].validate(doc)


def test_schemas_are_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python >= 3.11; we support 3.10)
    section = pyproject.split("[tool.setuptools.package-data]\n", 1)[1].split("\n[", 1)[0]
    patterns = json.loads(re.search(r'^"lth_sweep\.sweep" = (\[.*\])$', section, re.M)[1])
    schema_dir = ROOT / "lth_sweep/sweep/kuberay_schemas"
    shipped = {p.relative_to(schema_dir.parent).as_posix() for p in schema_dir.glob("*.json")}
    assert shipped == {"kuberay_schemas/rayclusters.json", "kuberay_schemas/rayjobs.json"}
    assert all(any(Path(f).match(pattern) for pattern in patterns) for f in shipped)
    assert re.search(r'^    "jsonschema>=[\d.]+",', pyproject, re.M)
    for kind in ("RayCluster", "RayJob"):
        release, _ = kuberay_schema(kind)
        assert release == "v1.7.0"
    assert "v1.7.0" in (schema_dir / "README.md").read_text()


# ---------------------------------------------------------------- what the shipped launcher YAMLs promise


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
        assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
        return

    workers = worker_types(prepared)
    assert workers, "no GPU worker node type"
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"worker type {name} has no GPU resource"
        assert node_type["resources"].get("CPU", 0) >= 1, f"worker type {name} has no CPU resource"
        # GPU nodes are only started on demand.
        assert cfg["available_node_types"][name].get("min_workers") == 0, name
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head is a CPU node that runs no trials"


def test_docker_image_is_rays_gpu_image_of_the_installed_version(cluster_yaml):
    image = load(cluster_yaml)["docker"]["image"]
    repository, tag = image.rsplit(":", 1)
    match = IMAGE_TAG_RE.match(tag)
    assert repository == "rayproject/ray" and match, f"{image!r}: not a versioned rayproject/ray image"
    assert match["version"] == ray.__version__
    assert tag.endswith("-gpu"), f"{image}: GPU nodes need a -gpu image"


def test_file_mounts_sync_the_repo(cluster_yaml):
    cfg = load(cluster_yaml)
    local = cfg.get("file_mounts", {}).get(REPO_MOUNT)
    assert local is not None, f"file_mounts must mount the repo at {REPO_MOUNT}"
    # `ray up` resolves a relative local path against its working directory: the repo root.
    source = (ROOT / Path(local).expanduser()).resolve()
    assert source == ROOT, f"{local!r} is not the repository root"
    pyproject = (source / "pyproject.toml").read_text()
    assert re.search(r'^name\s*=\s*"lth-sweep"', pyproject, re.M), "not the lth-sweep repository"


def test_every_node_loads_the_secrets_folder_before_ray_start(cluster_yaml):
    """Workers read WANDB_API_KEY from their own environment: the env files are sourced before `ray start`."""
    cfg = load(cluster_yaml)
    assert cfg["file_mounts"]["/home/ray/.lth-sweep-env"] == "~/.lth-sweep/cluster-env"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if "ray start" in c)
        assert start.index(". \"$f\"") < start.index("ray start"), key
        assert "~/.lth-sweep-env/*.env" in start and start.startswith("set -a;"), key


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


# ---------------------------------------------------------------- what the shipped KubeRay manifests promise


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def ray_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_files_share_one_cluster_spec():
    specs = [cluster_spec(load(p)) for p in KUBERAY_YAMLS]
    assert [load(p)["kind"] for p in KUBERAY_YAMLS] == ["RayCluster", "RayJob", "RayJob"]
    assert all(spec == specs[0] for spec in specs[1:]), "raycluster.yaml and the RayJobs' clusters drifted apart"


def test_kuberay_cluster_is_an_autoscaled_gpu_cluster_with_a_cpu_head():
    spec = cluster_spec(load(KUBERAY_DIR / "raycluster.yaml"))
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in json.dumps(head)
    (workers,) = spec["workerGroupSpecs"]
    assert workers["minReplicas"] == 0 < workers["maxReplicas"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for container in ray_containers(spec):
        assert container["image"].rsplit(":", 1)[1].startswith(f"{ray.__version__}-py311-gpu")


def test_kuberay_containers_read_keys_from_secrets():
    for path in KUBERAY_YAMLS:
        for container in ray_containers(cluster_spec(load(path))):
            env = {e["name"]: e for e in container["env"]}
            for name in ("WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["key"] == name, name


def test_dockerfile_builds_on_the_installed_ray():
    text = (KUBERAY_DIR / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert "pip install --no-cache-dir -e /home/ray/lth-sweep" in text
    image = load(KUBERAY_DIR / "raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert f"-t {image} ." in text


def parse_command(group: click.Group, command: str) -> tuple[str, list[str]]:
    """Parse a command line with a click CLI's own definitions, without running it (raises if it is wrong)."""
    argv = shlex.split(command, comments=True)
    ctx = group.make_context(argv[0], list(argv[1:]))
    name, sub, rest = argv[0], group, argv[1:]
    while isinstance(sub, click.Group):  # `lth-sweep cluster validate`, `ray job submit`
        name, sub, rest = sub.resolve_command(ctx, rest)
        if isinstance(sub, click.Group):
            ctx = sub.make_context(name, list(rest), parent=ctx)
    sub.make_context(name, list(rest), parent=ctx)  # click consumes the list it parses
    return name, rest


def parse_lth_sweep(command: str) -> tuple[str, list[str]]:
    assert command.startswith("lth-sweep "), command
    return parse_command(cli, command)


def test_rayjob_entrypoints_are_commands_the_cli_accepts():
    launch = load(KUBERAY_DIR / "rayjob.yaml")["spec"]
    assert launch["shutdownAfterJobFinishes"] is True
    assert launch["submissionMode"] == "K8sJobMode"  # the runbook reads the driver with `kubectl logs job/NAME`
    name, args = parse_lth_sweep(launch["entrypoint"])
    assert name == "launch" and args[args.index("--storage") + 1].startswith("s3://")
    assert args[args.index("--address") + 1] == "auto"
    sweep_file = Path(args[0])
    assert (ROOT / sweep_file.relative_to(REPO_MOUNT)).is_file(), f"{sweep_file} is not in the image"
    resume = load(KUBERAY_DIR / "rayjob-resume.yaml")["spec"]
    assert resume["shutdownAfterJobFinishes"] is True
    name, args = parse_lth_sweep(resume["entrypoint"])
    sweep_name = launch["entrypoint"].split("--name ")[1].split()[0]
    assert name == "resume" and args[0] == f"s3://BUCKET/lth-sweep/{sweep_name}"


def shell_blocks(markdown: str) -> list[str]:
    """The bash/sh code blocks of a Markdown text, backslash-continued lines joined."""
    blocks, current, language = [], [], None
    for line in markdown.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if language is None:
                language = fence[3:].strip()
                current = []
            else:
                if language in ("bash", "sh"):
                    blocks.append("\n".join(current).replace("\\\n", " "))
                language = None
        elif language is not None:
            current.append(fence)
    return blocks


def test_runbook_lth_sweep_commands_are_ones_the_cli_accepts():
    """Every `lth-sweep ...` command in cluster/README.md's code blocks parses with the CLI's options."""
    commands = []
    for joined in shell_blocks((CLUSTER_DIR / "README.md").read_text()):
        for match in re.finditer(r"(?<![\w/-])lth-sweep ((?:launch|resume|status|report|cluster)\b[^'\n;&|]*)", joined):
            commands.append("lth-sweep " + match[1].strip())
    assert len(commands) >= 6, commands
    seen = set()
    for command in commands:
        name, args = parse_lth_sweep(command)
        seen.add(name)
        if name == "launch":
            sweep = Path(args[0])
            local = ROOT / (sweep.relative_to(REPO_MOUNT) if sweep.is_absolute() else sweep)
            assert local.is_file(), command
    assert {"launch", "resume", "status", "validate"} <= seen


def test_runbook_ray_commands_are_ones_ray_accepts():
    """Every `ray ...` command in cluster/README.md's code blocks parses with Ray's own CLI (not run)."""
    from ray.scripts.scripts import cli as ray_cli

    commands = [line for block in shell_blocks((CLUSTER_DIR / "README.md").read_text())
                for line in block.splitlines() if line.startswith("ray ")]
    seen = {parse_command(ray_cli, command)[0] for command in commands}
    assert {"up", "exec", "submit", "logs", "stop", "down", "dashboard"} <= seen, seen


# ---------------------------------------------------------------- broken copies fail, naming the file


@pytest.fixture
def broken(tmp_path: Path) -> Callable[..., Path]:
    """broken("aws-gpu.yaml", mutate) -> a mutated copy of a shipped file in tmp_path (comments dropped)."""

    def make(name: str, mutate: Callable[[dict[str, Any]], Any]) -> Path:
        docs = list(yaml.safe_load_all((CLUSTER_DIR / name).read_text()))
        mutate(docs[0])
        path = tmp_path / Path(name).name
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return path

    return make


def first_gpu_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    head = cfg["head_node_type"]
    return next(v for k, v in cfg["available_node_types"].items() if k != head)


def kuberay_worker(doc: dict[str, Any]) -> dict[str, Any]:
    return cluster_spec(doc)["workerGroupSpecs"][0]


def set_head_num_cpus(doc: dict[str, Any], value: str | None) -> None:
    params = cluster_spec(doc)["headGroupSpec"]["rayStartParams"]
    if value is None:
        params.pop("num-cpus")
    else:
        params["num-cpus"] = value


def run_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lth_sweep.cli", "cluster", "validate", *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


CLI_BREAKS = {
    "fractional GPU in resources": ("aws-gpu.yaml", lambda c: first_gpu_worker(c)["resources"].update(GPU=0.5),
                                    "resources.GPU"),
    "unknown head node type": ("gcp-gpu.yaml", lambda c: c.update(head_node_type="no.such.type"),
                               "head_node_type"),
    "missing image": ("aws-gpu.yaml", lambda c: c["docker"].pop("image"),
                      "Ray's validator: Must provide a container & image name"),
    "literal API key": ("local-multinode.yaml",
                        lambda c: c["setup_commands"].append(f"export WANDB_API_KEY={FAKE_WANDB_KEY}"),
                        "WANDB_API_KEY is given a literal value"),
    "KubeRay replicas as a string": ("kuberay/raycluster.yaml",
                                     lambda d: kuberay_worker(d).update(replicas="2"),
                                     "spec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'"),
    "KubeRay head that schedules trials": ("kuberay/rayjob.yaml", lambda d: set_head_num_cpus(d, "4"),
                                           "headGroupSpec.rayStartParams.num-cpus: '4'"),
}


@pytest.mark.parametrize("case", CLI_BREAKS, ids=list(CLI_BREAKS))
def test_cli_refuses_a_broken_copy_with_exit_2_naming_the_file(broken, case):
    name, mutate, expected = CLI_BREAKS[case]
    path = broken(name, mutate)
    proc = run_validate(CLUSTER_DIR / "aws-gpu.yaml", path, CLUSTER_DIR / "local-multinode.yaml")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # a line for every file: the one after the broken copy is checked too
    first, after = proc.stdout.splitlines()
    assert first.startswith(f"{CLUSTER_DIR / 'aws-gpu.yaml'}: ok ("), proc.stdout
    assert after.startswith(f"{CLUSTER_DIR / 'local-multinode.yaml'}: ok ("), proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"lth-sweep: error: {path}: "), line
    assert expected in line, line
    assert FAKE_WANDB_KEY not in line and "Traceback" not in proc.stderr


def problem(path: Path) -> str:
    with pytest.raises(UserError) as caught:
        validate_file(path)
    assert caught.value.key == str(path)
    return caught.value.message


# launcher YAMLs: Ray's own validator


def test_fractional_gpu_resource_is_rejected_by_ray(broken):
    path = broken("aws-gpu.yaml", lambda c: first_gpu_worker(c)["resources"].update(GPU=0.5))
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(load(path))
    assert problem(path).startswith("Ray's cluster schema: available_node_types.")


def test_float_resource_is_rejected_by_our_check(broken):
    # Ray's draft-07 schema accepts 1.0 as an "integer"; our check does not.
    path = broken("aws-gpu.yaml", lambda c: first_gpu_worker(c)["resources"].update(GPU=1.0))
    ray_validate(load(path))
    assert problem(path) == ("available_node_types.gpu.1x.a10g.resources.GPU = 1.0: must be a whole number; "
                             "fractions of a GPU belong in the sweep file's resources")


def test_bool_resource_is_rejected(broken):
    path = broken("aws-gpu.yaml", lambda c: first_gpu_worker(c)["resources"].update(GPU=True))
    assert "resources.GPU: True is not of type 'integer'" in problem(path)
    assert cluster_module.resource_problem({"available_node_types": {"w": {"resources": {"GPU": True}}}})


def test_launcher_without_docker_image_is_refused(broken):
    path = broken("gcp-gpu.yaml", lambda c: c.pop("docker"))
    assert problem(path).startswith("docker.image: missing image; use rayproject/ray:")


def test_unknown_top_level_key_is_rejected(broken):
    path = broken("aws-gpu.yaml", lambda c: c.update(max_worker=4))  # typo of max_workers
    assert "max_worker" in problem(path) and problem(path).startswith("Ray's cluster schema")


def test_unknown_node_type_key_is_rejected(broken):
    path = broken("aws-gpu.yaml", lambda c: first_gpu_worker(c).update(resource={"GPU": 1}))  # typo of resources
    assert "'resource' was unexpected" in problem(path)


def test_unknown_head_node_type_is_rejected(broken):
    path = broken("aws-gpu.yaml", lambda c: c.update(head_node_type="no.such.type"))
    with pytest.raises(ValueError):
        ray_validate(load(path))
    assert problem(path).startswith("Ray's validator: `head_node_type` must be one of")


def test_unknown_provider_type_is_refused(broken):
    path = broken("aws-gpu.yaml", lambda c: c["provider"].update(type="external", module="my.provider"))
    assert problem(path).startswith("provider.type: 'external' cannot be checked offline")
    path = broken("aws-gpu.yaml", lambda c: c.update(provider="aws"))
    assert problem(path).startswith("provider.type: None cannot be checked offline; allowed: aws, gcp, azure, local")


# launcher YAMLs: our checks


def test_head_that_offers_cpus_is_refused(broken):
    path = broken("aws-gpu.yaml", lambda c: c["available_node_types"]["ray.head.cpu"].update(resources={"CPU": 8}))
    assert problem(path).startswith("available_node_types.ray.head.cpu.resources.CPU = 8: the head must run no trials")


def test_a_cloud_head_needs_cpu_0_in_its_resources_not_the_flag(broken):
    """On AWS/GCP `ray up` fills a node type's missing resources in from its machine type and passes them to
    `ray start` as RAY_OVERRIDE_RESOURCES, which wins over `--num-cpus=0`: the head would get 8 CPUs."""
    for name in ("aws-gpu.yaml", "gcp-gpu.yaml"):
        head = "ray.head.cpu" if name == "aws-gpu.yaml" else load(CLUSTER_DIR / name)["head_node_type"]

        def flag_only(cfg: dict[str, Any], head: str = head) -> None:
            cfg["available_node_types"][head]["resources"] = {}
            cfg["head_start_ray_commands"] = [c.replace("--head", "--head --num-cpus=0")
                                              for c in cfg["head_start_ray_commands"]]

        assert problem(broken(name, flag_only)) == (
            f"available_node_types.{head}.resources.CPU is not set: the head must run no trials; set it to 0 (the "
            "driver and Optuna need no CPU resource; on a cloud, Ray fills a missing CPU in from the machine type, "
            "over --num-cpus in `ray start`)")


def test_local_head_without_num_cpus_zero_is_refused(broken):
    def drop_flag(cfg: dict[str, Any]) -> None:
        cfg["head_start_ray_commands"] = [c.replace(" --num-cpus=0", "") for c in cfg["head_start_ray_commands"]]

    assert problem(broken("local-multinode.yaml", drop_flag)).startswith("head_start_ray_commands: the head must")


@pytest.mark.parametrize("image,expected", [
    ("rayproject/ray:2.59.0-py311-gpu", "runs Ray 2.59.0, this machine has Ray"),
    ("rayproject/ray:latest-gpu", "has no Ray version in its tag"),
    ("rayproject/ray", "has no Ray version in its tag"),
    (f"rayproject/ray:{ray.__version__}-py39-gpu", "lth-sweep needs Python >= 3.10"),
])
def test_image_that_is_not_the_installed_ray_is_refused(broken, image, expected):
    path = broken("gcp-gpu.yaml", lambda c: c["docker"].update(image=image))
    assert expected in problem(path)


# KubeRay manifests: the CRD schema


def test_kuberay_unknown_field_is_refused_as_strict_validation_does(broken):
    def typo(doc: dict[str, Any]) -> None:
        kuberay_worker(doc)["replica"] = kuberay_worker(doc).pop("replicas")

    message = problem(broken("kuberay/raycluster.yaml", typo))
    assert message.startswith("KubeRay v1.7.0 RayCluster schema: spec.workerGroupSpecs[0]: ")
    assert "'replica' was unexpected" in message


def test_kuberay_missing_required_field_is_refused(broken):
    message = problem(broken("kuberay/rayjob.yaml", lambda d: kuberay_worker(d).pop("groupName")))
    assert "KubeRay v1.7.0 RayJob schema: spec.rayClusterSpec.workerGroupSpecs[0]: 'groupName'" in message


def test_kuberay_num_cpus_must_be_a_string_for_the_schema(broken):
    message = problem(broken("kuberay/raycluster.yaml", lambda d: d["spec"]["headGroupSpec"]["rayStartParams"]
                             .update({"num-cpus": 0})))
    assert "rayStartParams.num-cpus: 0 is not of type 'string'" in message


# KubeRay manifests: our checks


def test_kuberay_head_without_num_cpus_is_refused(broken):
    message = problem(broken("kuberay/raycluster.yaml", lambda d: set_head_num_cpus(d, None)))
    assert message.startswith("spec.headGroupSpec.rayStartParams.num-cpus: None; must be \"0\"")


def test_kuberay_fractional_gpu_limit_is_refused(broken):
    def half_gpu(doc: dict[str, Any]) -> None:
        kuberay_worker(doc)["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "0.5"

    message = problem(broken("kuberay/raycluster.yaml", half_gpu))  # a valid Kubernetes quantity, not a GPU count
    assert "containers[0].resources.limits.nvidia.com/gpu = '0.5': must be a whole number of GPUs" in message


def test_kuberay_ray_version_must_be_the_installed_one(broken):
    message = problem(broken("kuberay/rayjob.yaml", lambda d: cluster_spec(d).update(rayVersion="2.52.0")))
    assert message == f"spec.rayClusterSpec.rayVersion: '2.52.0'; must be the installed Ray '{ray.__version__}'"


def test_kuberay_missing_or_mismatched_image_is_refused(broken):
    def no_image(doc: dict[str, Any]) -> None:
        kuberay_worker(doc)["template"]["spec"]["containers"][0].pop("image")

    assert "workerGroupSpecs[0].template.spec.containers[0].image: missing image" in \
        problem(broken("kuberay/raycluster.yaml", no_image))

    def old_image(doc: dict[str, Any]) -> None:
        cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.52.0"

    assert "runs Ray 2.52.0" in problem(broken("kuberay/raycluster.yaml", old_image))


def test_kuberay_replicas_outside_bounds_are_refused(broken):
    message = problem(broken("kuberay/raycluster.yaml", lambda d: kuberay_worker(d).update(replicas=20)))
    assert message == "spec.workerGroupSpecs[0].replicas = 20: must lie in [minReplicas 0, maxReplicas 8]"


@pytest.mark.parametrize("entrypoint", [
    "cd /home/ray/lth-sweep && lth-sweep launch sweeps/lenet_mnist.yaml",
    "lth-sweep launch x.yaml --storage s3://b/p?endpoint_override=http://h:9000&scheme=http",
])
def test_rayjob_entrypoint_with_shell_operators_is_refused(broken, entrypoint):
    message = problem(broken("kuberay/rayjob.yaml", lambda d: d["spec"].update(entrypoint=entrypoint)))
    assert message.startswith("spec.entrypoint: '&") and "outside quotes" in message


def test_rayjob_entrypoint_with_a_quoted_uri_passes(broken):
    uri = "'s3://b/p?endpoint_override=http://h:9000&scheme=http'"
    assert validate_file(broken("kuberay/rayjob.yaml", lambda d: d["spec"].update(
        entrypoint=f"lth-sweep launch /home/ray/lth-sweep/sweeps/lenet_mnist.yaml --storage {uri}"))).line()


def test_unknown_kuberay_kind_and_secret_documents_are_refused(broken, tmp_path):
    assert "allowed ray.io/v1 RayCluster or RayJob" in problem(
        broken("kuberay/raycluster.yaml", lambda d: d.update(kind="RayService")))
    path = tmp_path / "with-secret.yaml"
    path.write_text((KUBERAY_DIR / "raycluster.yaml").read_text()
                    + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: lth-sweep-wandb}\n")
    assert problem(path) == ("document 2: kind Secret: keep Secrets out of files; create them with "
                             "`kubectl create secret` (cluster/README.md)")


def test_other_kubernetes_documents_are_skipped(tmp_path):
    path = tmp_path / "with-configmap.yaml"
    path.write_text((KUBERAY_DIR / "raycluster.yaml").read_text()
                    + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n")
    assert "document 2: v1 ConfigMap extra: not a KubeRay kind, not checked" in validate_file(path).line()


# secrets


def secret_env(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    def add(doc: dict[str, Any]) -> None:
        container = kuberay_worker(doc)["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != name] + [{"name": name, "value": value}]

    return add


@pytest.mark.parametrize("name,value", [
    ("WANDB_API_KEY", FAKE_WANDB_KEY),
    ("WANDB_API_KEY", "short"),                 # any literal value of a known secret variable
    ("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET),
    ("MY_SERVICE_TOKEN", "tok_0123456789abcdefXYZ"),
])
def test_literal_secret_in_a_kubernetes_env_entry_is_refused(broken, name, value):
    message = problem(broken("kuberay/rayjob.yaml", secret_env(name, value)))
    assert re.match(rf"line \d+: {name} is given a literal value", message), message
    assert value not in message


@pytest.mark.parametrize("line", [
    f"  - export WANDB_API_KEY={FAKE_WANDB_KEY}\n",
    f"  - wandb login {FAKE_WANDB_KEY[:8]} && MY_APP_SECRET='{FAKE_AWS_SECRET}' run\n",
    "# aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
    f"  - wandb login --relogin {FAKE_WANDB_KEY}\n",  # the key as the command's argument
    f"  - wandb login --host https://wandb.example.org '{FAKE_WANDB_KEY}'\n",
    f"  - aws configure set aws_secret_access_key {FAKE_AWS_SECRET}\n",
])
def test_literal_secret_in_a_command_or_comment_is_refused(tmp_path, line):
    text = (CLUSTER_DIR / "local-multinode.yaml").read_text()
    path = tmp_path / "local.yaml"
    anchor = "  - pip install -q -e /home/ray/lth-sweep\n"
    path.write_text(text.replace(anchor, anchor + line))
    message = problem(path)
    assert message.startswith(f"line {text.splitlines().index(anchor.rstrip()) + 2}: "), message
    assert FAKE_WANDB_KEY not in message and FAKE_AWS_SECRET not in message and "AKIAIOS" not in message


def test_secret_references_are_allowed(broken):
    def references(doc: dict[str, Any]) -> None:
        doc["setup_commands"].append("wandb login $WANDB_API_KEY && echo ${AWS_SECRET_ACCESS_KEY:+set}")
        doc["setup_commands"].append("wandb login --host https://wandb.example.org --relogin && "
                                     "aws configure set aws_secret_access_key \"$AWS_SECRET_ACCESS_KEY\"")

    assert validate_file(broken("local-multinode.yaml", references)).line()
    assert validate_file(broken("kuberay/rayjob.yaml", secret_env("WANDB_API_KEY", "$(WANDB_KEY_FROM_ENV)"))).line()
    # A path is not a key even in a *_key setting (Ray's own auth.ssh_private_key).
    assert cluster_module.secret_problem("auth:\n  ssh_private_key: ~/.ssh/id_ed25519_0123456789abcdef\n") is None


# files and folders


def test_recursive_yaml_does_not_hang_the_secret_scan():
    assert cluster_module.secret_problem("a: &loop [*loop]\n") is None


def test_not_a_cluster_file_and_bad_yaml_are_refused(tmp_path):
    assert problem(ROOT / "sweeps" / "quickstart.yaml").startswith("neither a Ray cluster-launcher config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: {type: aws\n")
    assert problem(bad).startswith("not valid YAML at line 2")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert problem(empty) == "empty file"


def test_cli_missing_file_and_folder_without_yaml_exit_2(tmp_path):
    proc = run_validate(tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert proc.stderr == f"lth-sweep: error: {tmp_path / 'nope.yaml'}: no such file or folder\n"
    proc = subprocess.run([sys.executable, "-m", "lth_sweep.cli", "cluster", "validate"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("lth-sweep: error: FILES: no cluster/ folder in ")


def test_folder_argument_is_searched_recursively():
    paths = cluster_module.cluster_files([CLUSTER_DIR])
    assert paths == SHIPPED

"""Offline validation of cluster files: Ray cluster-launcher YAMLs and KubeRay RayCluster/RayJob manifests.

Launcher YAMLs go through Ray's own ``prepare_config`` + ``validate_config`` (the first thing ``ray up``
does), KubeRay manifests through KubeRay's CRD OpenAPI schemas (``kuberay_schemas/``). Then our own checks:
integer resources, a head that runs no trials, image Ray version = installed Ray, no secrets in the file.
Every problem raises a UserError naming the file (the CLI prints one line and exits 2). Nothing here
contacts a cloud or a Kubernetes API server, so AMIs, machine types, quotas and images are not checked.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lth_sweep.errors import UserError

YAML_SUFFIXES = (".yaml", ".yml")
LAUNCHER_PROVIDERS = ("aws", "gcp", "azure", "local")  # the providers whose defaults ship inside Ray's wheel
KUBERAY_API_VERSION = "ray.io/v1"
KUBERAY_SCHEMA_FILES = {"RayCluster": "rayclusters.json", "RayJob": "rayjobs.json"}

# {ray version}[-py{python}][-{platform}], as rayproject/ray tags its images (and as our own images are tagged).
IMAGE_TAG_RE = re.compile(r"^(?P<version>\d+\.\d+\.\d+)(?:-py(?P<python>3)(?P<minor>\d+))?(?:-[A-Za-z0-9.]+)*$")
NUM_CPUS_ZERO_RE = re.compile(r"--num-cpus(?:=|\s+)[\"']?0[\"']?(?=\s|;|&|$)")
WHOLE_NUMBER_RE = re.compile(r"^\d+$")

# Secrets: variables whose literal value is always a leak, names that hold keys, and values that look like one.
KNOWN_SECRET_NAMES = {"WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
SECRET_NAME_RE = re.compile(r"(?:_KEY|_SECRET|TOKEN|PASSWORD)$")
KEY_LIKE_RE = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9+/=_.\-]{16,}$")
AWS_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
ASSIGNMENT_RE = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)[\"']?\s*[=:]\s*[\"']?(?P<value>[^\s\"',;&|}\]]+)")
# Commands that take a key as an argument: `wandb login [options] KEY`, `aws configure set aws_secret_access_key V`
WANDB_LOGIN_RE = re.compile(r"\bwandb\s+login\b(?P<args>[^;&|\n]*)")
AWS_CONFIGURE_RE = re.compile(
    r"\baws\s+configure\s+set\s+(?P<name>aws_secret_access_key|aws_access_key_id|aws_session_token)\s+"
    r"[\"']?(?P<value>[^\s\"';&|]+)")


class Problem(Exception):
    """One problem in a cluster file; validate_file turns it into a UserError naming the file."""


@dataclass(frozen=True)
class FileReport:
    """A cluster file that passed every check, and what it is."""

    path: Path
    summaries: tuple[str, ...]

    def line(self) -> str:
        return f"{self.path}: ok ({'; '.join(self.summaries)})"


def installed_ray_version() -> str:
    return metadata.version("ray")


# ------------------------------------------------------------------------------------ files


def cluster_files(args: Sequence[Path]) -> list[Path]:
    """The YAML files to check: the named files, the YAMLs under named folders; default ./cluster/."""
    if not args:
        if not Path("cluster").is_dir():
            raise UserError("FILES", f"no cluster/ folder in {Path.cwd()}; run from the repository root "
                                     "or name the files to check")
        args = [Path("cluster")]
    files: list[Path] = []
    for arg in args:
        if arg.is_dir():
            found = sorted(p for p in arg.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
            if not found:
                raise UserError(str(arg), "no .yaml or .yml files in this folder")
            files.extend(found)
        elif arg.is_file():
            files.append(arg)
        else:
            raise UserError(str(arg), "no such file or folder")
    return files


def validate_file(path: Path) -> FileReport:
    """Every check on one file; raises UserError(path, first problem)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(str(path), f"cannot read it: {getattr(err, 'strerror', None) or err}") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        problem = secret_problem(text)
        if problem:
            raise Problem(problem)
        return FileReport(path, tuple(check_documents(documents)))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(str(path), f"not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    except Problem as problem:
        raise UserError(str(path), str(problem)) from None


def check_documents(documents: list[Any]) -> Iterator[str]:
    """One summary per document: a launcher config (alone in its file) or KubeRay manifests."""
    if not documents:
        raise Problem("empty file")
    ray_version = installed_ray_version()
    for index, doc in enumerate(documents):
        where = f"document {index + 1}: " if len(documents) > 1 else ""
        try:
            yield where + check_document(doc, ray_version, alone=len(documents) == 1)
        except Problem as problem:
            raise Problem(where + str(problem)) from None


def check_document(doc: Any, ray_version: str, alone: bool) -> str:
    if not isinstance(doc, dict):
        raise Problem(f"expected a mapping, got {type(doc).__name__}")
    if "provider" in doc and "apiVersion" not in doc:
        if not alone:
            raise Problem("a Ray cluster-launcher config must be the only document in its file")
        return check_launcher(doc, ray_version)
    if "apiVersion" in doc and "kind" in doc:
        return check_manifest(doc, ray_version)
    raise Problem(f"neither a Ray cluster-launcher config (it has no provider:) nor a KubeRay "
                  f"manifest (apiVersion: {KUBERAY_API_VERSION}, kind: RayCluster or RayJob)")


# ------------------------------------------------------------------------------------ shared checks


def one_line(err: BaseException | str, limit: int = 240) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_error_text(err: jsonschema.ValidationError) -> str:
    return f"{json_path(list(err.absolute_path))}: {one_line(err.message)}"


def image_problem(where: str, image: Any, ray_version: str) -> str | None:
    """The image must exist and its tag must carry the installed Ray version (and Python >= 3.10 if named)."""
    if not isinstance(image, str) or not image.strip():
        return f"{where}: missing image; use rayproject/ray:{ray_version}-py311-gpu or an image built on it"
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    match = IMAGE_TAG_RE.match(tag)
    if not match:
        return (f"{where}: image {image} has no Ray version in its tag; tag it {ray_version}-py311-gpu "
                f"(like rayproject/ray:{ray_version}-py311-gpu) so its Ray is known to equal this one")
    if match["version"] != ray_version:
        return (f"{where}: image {image} runs Ray {match['version']}, this machine has Ray {ray_version}; "
                "they must be equal")
    if match["python"] and int(match["minor"]) < 10:
        return f"{where}: image {image} has Python 3.{match['minor']}; lth-sweep needs Python >= 3.10"
    return None


def is_whole_number(value: Any) -> bool:
    """An int >= 0 (not a bool, not a float) or a string of digits, e.g. a Kubernetes quantity "2"."""
    if isinstance(value, str):
        return bool(WHOLE_NUMBER_RE.match(value.strip()))
    return type(value) is int and value >= 0


# ------------------------------------------------------------------------------------ secrets


def is_reference(value: str) -> bool:
    return value.startswith("$") or value == ""


def looks_like_key(value: str) -> bool:
    return bool(KEY_LIKE_RE.match(value)) and not value.startswith(("/", "~", "."))


def secret_message(line: int, name: str) -> str:
    return (f"line {line}: {name} is given a literal value; never write a key in a file: read it from a "
            f"Kubernetes Secret (env valueFrom.secretKeyRef) or the node's environment (${name})")


def secret_problem(text: str) -> str | None:
    """The first secret written in the file (the message names where and never repeats the value)."""
    for document in yaml.compose_all(text):
        problem = node_secret_problem(document, set())
        if problem:
            return problem
    for number, line in enumerate(text.splitlines(), start=1):
        if AWS_KEY_ID_RE.search(line):
            return f"line {number}: an AWS access key id is written in the file; use a Kubernetes Secret or an IAM role"
        for match in ASSIGNMENT_RE.finditer(line):
            name, value = match["name"], match["value"]
            if SECRET_NAME_RE.search(name.upper()) and not is_reference(value) and looks_like_key(value):
                return secret_message(number, name)
        for match in WANDB_LOGIN_RE.finditer(line):
            if any(looks_like_key(arg.strip("\"'")) for arg in match["args"].split() if not arg.startswith("-")):
                return (f"line {number}: `wandb login` is given a literal key; never write a key in a file: put "
                        "WANDB_API_KEY in the node's environment (a Kubernetes Secret, or ~/.lth-sweep/cluster-env) "
                        "and run `wandb login` without one, or not at all")
        for match in AWS_CONFIGURE_RE.finditer(line):
            if not is_reference(match["value"]):
                return (f"line {number}: `aws configure set {match['name']}` is given a literal value; never write a "
                        "key in a file: use an IAM role (instance profile) or a Kubernetes Secret")
    return None


def literal_secret(name: str, value: str) -> bool:
    """A literal value in a variable that holds a secret: any value for the known names, key-like for others."""
    upper = name.upper()
    if is_reference(value.strip()):
        return False
    return upper in KNOWN_SECRET_NAMES or (bool(SECRET_NAME_RE.search(upper)) and looks_like_key(value.strip()))


def node_secret_problem(node: yaml.Node | None, seen: set[int]) -> str | None:
    """Mapping entries NAME: literal and Kubernetes env entries {name: NAME, value: literal}, anywhere."""
    if id(node) in seen:  # an alias of a node already walked (or a recursive one)
        return None
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problem = node_secret_problem(item, seen)
            if problem:
                return problem
    elif isinstance(node, yaml.MappingNode):
        scalars = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        env_name, env_value = scalars.get("name"), scalars.get("value")
        if isinstance(env_name, yaml.ScalarNode) and isinstance(env_value, yaml.ScalarNode) \
                and literal_secret(env_name.value, env_value.value):
            return secret_message(env_value.start_mark.line + 1, env_name.value)
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode) \
                    and literal_secret(key.value, value.value):
                return secret_message(value.start_mark.line + 1, key.value)
            problem = node_secret_problem(value, seen)
            if problem:
                return problem
    return None


# ------------------------------------------------------------------------------------ launcher YAMLs


def ray_prepared_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray's own offline validation, as `ray up` starts; returns the defaults-filled config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    ray_log = logging.getLogger("ray.autoscaler._private.util")
    level = ray_log.level
    ray_log.setLevel(logging.WARNING)  # "setting max workers for head node type to 0" is not news
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        raise Problem(f"Ray's cluster schema: {schema_error_text(err)}") from None
    except Exception as err:  # Ray raises ValueError, KeyError, AssertionError... on a bad file
        raise Problem(f"Ray's validator: {one_line(err)}") from None
    finally:
        ray_log.setLevel(level)
    return prepared


def resource_problem(cfg: dict[str, Any]) -> str | None:
    """Every node type's `resources` value must be a real int >= 0 (Ray's schema also accepts 1.0)."""
    for name, node_type in (cfg.get("available_node_types") or {}).items():
        for key, value in ((node_type or {}).get("resources") or {}).items():
            if type(value) is not int or value < 0:
                return (f"available_node_types.{name}.resources.{key} = {value!r}: must be a whole number; "
                        "fractions of a GPU belong in the sweep file's resources")
    return None


def head_problem(cfg: dict[str, Any], prepared: dict[str, Any]) -> str | None:
    """The head runs the driver and the search only: its CPU resource is 0, so no trial is placed there."""
    head_type = prepared["head_node_type"]
    head_resources = (prepared["available_node_types"][head_type] or {}).get("resources") or {}
    if cfg["provider"]["type"] != "local":
        # Ray fills a cloud node type's missing resources in from its machine type and hands them to `ray start`
        # (RAY_OVERRIDE_RESOURCES), above its flags: `--num-cpus=0` there does not keep trials off the head
        if head_resources.get("CPU") != 0:
            value = f" = {head_resources['CPU']!r}" if "CPU" in head_resources else " is not set"
            return (f"available_node_types.{head_type}.resources.CPU{value}: the head must run no trials; set it "
                    "to 0 (the driver and Optuna need no CPU resource; on a cloud, Ray fills a missing CPU in from "
                    "the machine type, over --num-cpus in `ray start`)")
        return None
    if any(NUM_CPUS_ZERO_RE.search(str(c)) for c in prepared.get("head_start_ray_commands") or []):
        return None
    return ("head_start_ray_commands: the head must run no trials; give it CPU: 0 in its resources, or "
            "--num-cpus=0 in its `ray start --head` command")


def launcher_images(cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    docker = cfg.get("docker") or {}
    images = [(f"docker.{key}", docker[key]) for key in ("image", "head_image", "worker_image") if key in docker]
    for name, node_type in (cfg.get("available_node_types") or {}).items():
        for key, value in ((node_type or {}).get("docker") or {}).items():
            if key in ("head_image", "worker_image"):
                images.append((f"available_node_types.{name}.docker.{key}", value))
    return images or [("docker.image", None)]


def check_launcher(cfg: dict[str, Any], ray_version: str) -> str:
    provider = cfg.get("provider")
    provider_type = provider.get("type") if isinstance(provider, dict) else None
    if provider_type not in LAUNCHER_PROVIDERS:
        raise Problem(f"provider.type: {provider_type!r} cannot be checked offline; allowed: "
                      f"{', '.join(LAUNCHER_PROVIDERS)}")
    prepared = ray_prepared_config(cfg)
    for problem in (resource_problem(cfg), resource_problem(prepared), head_problem(cfg, prepared),
                    *(image_problem(where, image, ray_version) for where, image in launcher_images(cfg))):
        if problem:
            raise Problem(problem)
    if provider_type == "local":
        machines = len(cfg["provider"].get("worker_ips") or [])
        workers = f"{machines} worker machine{'s' if machines != 1 else ''}"
    else:
        types = len(prepared["available_node_types"]) - 1
        workers = f"{types} worker type{'s' if types != 1 else ''}"
    return (f"Ray cluster launcher, provider {provider_type}, head {prepared['head_node_type']} runs no trials, "
            f"{workers}, Ray {ray_version}")


# ------------------------------------------------------------------------------------ KubeRay manifests


@functools.cache
def kuberay_schema(kind: str) -> tuple[str, jsonschema.Draft7Validator]:
    """(KubeRay release, validator) for a kind, from the CRD schemas shipped as package data."""
    text = resources.files("lth_sweep.sweep").joinpath("kuberay_schemas", KUBERAY_SCHEMA_FILES[kind]).read_text()
    data = json.loads(text)
    return data["kuberay_version"], jsonschema.Draft7Validator(closed(data["openAPIV3Schema"]))


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: ({n: closed(s) for n, s in value.items()} if key == "properties" else closed(value))
           for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def check_manifest(doc: dict[str, Any], ray_version: str) -> str:
    api_version, kind = doc["apiVersion"], doc["kind"]
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    if kind == "Secret":
        raise Problem("kind Secret: keep Secrets out of files; create them with `kubectl create secret` "
                      "(cluster/README.md)")
    if not str(api_version).startswith("ray.io/"):
        return f"{api_version} {kind} {name}: not a KubeRay kind, not checked"
    if api_version != KUBERAY_API_VERSION or kind not in KUBERAY_SCHEMA_FILES:
        raise Problem(f"{api_version} {kind}: allowed {KUBERAY_API_VERSION} "
                      f"{' or '.join(KUBERAY_SCHEMA_FILES)}")
    release, validator = kuberay_schema(kind)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        raise Problem(f"KubeRay {release} {kind} schema: {schema_error_text(error)}")
    spec = doc.get("spec") or {}
    if kind == "RayCluster":
        check_ray_cluster_spec(spec, "spec", ray_version)
        workers = len(spec.get("workerGroupSpecs") or [])
        return (f"KubeRay {kind} {name}, schema {release}, head runs no trials, "
                f"{workers} worker group{'s' if workers != 1 else ''}, Ray {ray_version}")
    problem = entrypoint_problem(spec.get("entrypoint"))
    if problem:
        raise Problem(problem)
    if "rayClusterSpec" in spec:
        check_ray_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec", ray_version)
    return (f"KubeRay {kind} {name}, schema {release}, "
            f"shutdownAfterJobFinishes {str(bool(spec.get('shutdownAfterJobFinishes'))).lower()}, Ray {ray_version}")


def entrypoint_problem(entrypoint: Any) -> str | None:
    """KubeRay pastes the entrypoint into its submitter's shell line: one command, no ; & | (quote URIs)."""
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        return "spec.entrypoint: missing; e.g. lth-sweep launch /home/ray/lth-sweep/sweeps/X.yaml --storage s3://..."
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=";&|")
    try:
        operators = [token for token in lexer if token and set(token) <= set(";&|")]
    except ValueError as err:
        return f"spec.entrypoint: {err} (unbalanced quotes)"
    if operators:
        return (f"spec.entrypoint: {operators[0]!r} outside quotes; KubeRay runs the entrypoint inside its own shell "
                "command line, so give one command and quote a URI that has '&' in it")
    return None


def check_ray_cluster_spec(spec: dict[str, Any], where: str, ray_version: str) -> None:
    """Our checks on a RayCluster spec (alone or inside a RayJob); the schema has passed."""
    if spec.get("rayVersion") != ray_version:
        raise Problem(f"{where}.rayVersion: {spec.get('rayVersion')!r}; must be the installed Ray {ray_version!r}")
    head = spec["headGroupSpec"]
    # KubeRay's group `resources` override rayStartParams, which override what the container limits imply.
    head_cpus = (head.get("resources") or {}).get("CPU", (head.get("rayStartParams") or {}).get("num-cpus"))
    if head_cpus is None or str(head_cpus).strip() != "0":
        raise Problem(f"{where}.headGroupSpec.rayStartParams.num-cpus: {head_cpus!r}; must be \"0\" so that no "
                      "trial runs on the head (it runs the driver and the search)")
    groups = [("headGroupSpec", head)]
    groups += [(f"workerGroupSpecs[{i}]", group) for i, group in enumerate(spec.get("workerGroupSpecs") or [])]
    for group_where, group in groups:
        group_problem = ray_group_problem(f"{where}.{group_where}", group, ray_version)
        if group_problem:
            raise Problem(group_problem)


def ray_group_problem(where: str, group: dict[str, Any], ray_version: str) -> str | None:
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        return f"{where}.template.spec.containers: missing the Ray container"
    problem = image_problem(f"{where}.template.spec.containers[0].image", containers[0].get("image"), ray_version)
    if problem:
        return problem
    for index, container in enumerate(containers):
        for section in ("limits", "requests"):
            for key, value in ((container.get("resources") or {}).get(section) or {}).items():
                if key.endswith("/gpu") and not is_whole_number(value):
                    return (f"{where}.template.spec.containers[{index}].resources.{section}.{key} = {value!r}: "
                            "must be a whole number of GPUs; fractions belong in the sweep file's resources")
    for key in ("num-cpus", "num-gpus"):
        value = (group.get("rayStartParams") or {}).get(key)
        if value is not None and not is_whole_number(value):
            return f"{where}.rayStartParams.{key} = {value!r}: must be a whole number"
    for key in ("CPU", "GPU"):
        value = (group.get("resources") or {}).get(key)
        if value is not None and not is_whole_number(value):
            return f"{where}.resources.{key} = {value!r}: must be a whole number"
    low, high, replicas = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
    if low is not None and high is not None and low > high:
        return f"{where}: minReplicas {low} > maxReplicas {high}"
    if replicas is not None and low is not None and high is not None and not low <= replicas <= high:
        return f"{where}.replicas = {replicas}: must lie in [minReplicas {low}, maxReplicas {high}]"
    return None

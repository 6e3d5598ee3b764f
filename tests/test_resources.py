"""Per-trial resources that cannot exist are refused before Ray starts: `resources.gpu` on a machine without
that many GPUs, `resources.cpu` above its CPU count (no --address: Ray would run here and leave the trials
PENDING forever). Through the CLI: exit 2, one line naming the key and the allowed values, nothing under the
storage folder, no Ray. On a cluster, a one-line warning when no alive node can hold a trial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sweep_helpers as h
import torch

from lth_sweep.config import machine_cpus
from lth_sweep.errors import UserError
from lth_sweep.sweep.launch import check_resources, no_node_fits
from lth_sweep.sweep.schema import ResourcesConfig, SweepConfig
from lth_sweep.sweep.spec import LaunchSpec, save_spec

GPUS = torch.cuda.device_count()
TOO_MANY_GPUS = 0.5 if GPUS == 0 else GPUS + 1  # the case (a fraction, no GPU) where it applies
TOO_MANY_CPUS = machine_cpus() + 1


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    yield from h.private_ray_tmp()


def assert_refused(result: h.Result, key: str, allowed: str) -> None:
    assert result.returncode == 2, result.explain()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lth-sweep: error: {key}: "), result.explain()
    assert allowed in lines[0], result.explain()
    assert "Traceback" not in result.stderr + result.stdout


def assert_ray_not_started(ray_tmp: Path) -> None:
    assert not any(ray_tmp.iterdir()), f"Ray left files in {ray_tmp}: {sorted(p.name for p in ray_tmp.iterdir())}"


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("gpu", TOO_MANY_GPUS, "allowed here: 0" if GPUS == 0 else f"allowed here: 0 to {GPUS}"),
    ("cpu", TOO_MANY_CPUS, f"up to {machine_cpus()}"),
])
def test_launch_refuses_resources_this_machine_lacks(tmp_path: Path, data_root: Path, ray_tmp: Path, key: str,
                                                    value: float, allowed: str) -> None:
    tree = h.sweep_tree(data_root, resources={"cpu": 1, "gpu": 0, key: value})
    sweep_file = h.write_sweep(tmp_path / "big.yaml", tree)
    result = h.run_cli("launch", sweep_file, "--storage", tmp_path / "storage", cwd=tmp_path,
                       env=h.cli_env(ray_tmp), timeout=120)
    assert_refused(result, f"resources.{key}", allowed)
    assert not (tmp_path / "storage").exists()
    assert result.stdout == ""  # refused before the run's header
    assert_ray_not_started(ray_tmp)


def test_resume_refuses_them_too_and_takes_no_lock(tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    """A sweep launched elsewhere (here: its spec written directly) resumed on a machine without the GPU."""
    tree = h.sweep_tree(data_root, resources={"cpu": 1, "gpu": TOO_MANY_GPUS})
    experiment = tree.pop("experiment")
    sweep_dir = tmp_path / "storage" / "gpu"
    spec = LaunchSpec(sweep=SweepConfig.model_validate({**tree, "name": "gpu"}), experiment=experiment,
                      experiment_dir=str(sweep_dir), wandb_mode="offline")
    sweep_dir.mkdir(parents=True)
    save_spec(spec)
    result = h.run_cli("resume", sweep_dir, cwd=tmp_path, env=h.cli_env(ray_tmp), timeout=120)
    assert_refused(result, "resources.gpu", "allowed here: 0" if GPUS == 0 else f"0 to {GPUS}")
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep.json"]
    assert_ray_not_started(ray_tmp)


def test_a_cluster_is_not_judged_by_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    big = ResourcesConfig(cpu=TOO_MANY_CPUS, gpu=GPUS + 1)
    check_resources(big, address="ray://head:10001")  # the cluster decides; init_ray warns if no node fits
    with pytest.raises(UserError):
        check_resources(big, address=None)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # ray.init(address=None) joins that cluster
    check_resources(big, address=None)


def test_what_fits_here_is_allowed() -> None:
    check_resources(ResourcesConfig(cpu=machine_cpus(), gpu=GPUS), address=None)
    check_resources(ResourcesConfig(cpu=0.5, gpu=0), address=None)


def test_cluster_warning_when_no_node_holds_a_trial() -> None:
    cpu_nodes = [{"CPU": 4.0, "memory": 1e9}, {"CPU": 2.0}]
    assert no_node_fits(ResourcesConfig(cpu=4, gpu=0), cpu_nodes) is None
    warning = no_node_fits(ResourcesConfig(cpu=1, gpu=0.5), cpu_nodes)
    assert warning is not None and "\n" not in warning
    assert "0.5 GPU" in warning and "2 CPU/0 GPU, 4 CPU/0 GPU" in warning and "autoscaler" in warning
    # the CPUs and the GPU must be on one node
    assert no_node_fits(ResourcesConfig(cpu=4, gpu=1), [{"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}]) is not None
    assert no_node_fits(ResourcesConfig(cpu=4, gpu=1), [{"CPU": 8.0, "GPU": 1.0}]) is None
    assert "nodes now: none" in no_node_fits(ResourcesConfig(), [])

"""Shared fixtures: a tiny MNIST-1D experiment (generated once per session) and a `lth-sweep` runner."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h
import torch
import yaml
from s3_server import S3Server, s3_server

from lth_sweep.config import DatasetConfig, ExperimentConfig, build_experiment, set_dotted
from lth_sweep.engine.data import DatasetSplits, load_dataset

CPU = torch.device("cpu")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MNIST1D = REPO / "sweeps" / "experiments" / "mnist1d_mlp.yaml"

# The tiny experiment: MNIST-1D (3500 train / 500 val / 1000 test, length 40), mlp [32], batch 100
# (35 steps per epoch), 3 epochs = 105 iterations per round, 3 rounds; about 0.1 s per round on a CPU.
TINY_STEPS_PER_EPOCH = 35


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups (after it, the marks change nothing)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (`-n 2 --dist loadgroup`, pyproject's addopts): every test of a module that uses
    sweep_helpers (Ray started here or as a test cluster, sweeps as subprocesses, the S3 server) runs in one
    worker, one after another, as without xdist; Ray's ports, its process groups and the sweeps' timing never meet
    a second Ray. The engine's tests (torch, single-threaded) go to either worker."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and getattr(module, "h", None) is h:
            item.add_marker(pytest.mark.xdist_group("ray"))


def tiny_raw(data_root: str | Path) -> dict[str, Any]:
    return {
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": "mnist1d", "root": str(data_root)},
        "model": {"name": "mlp", "widths": [32]},
        "train": {"optimizer": "adam", "lr": 0.002, "batch_size": 100, "epochs": 3, "eval_every": 10},
        "prune": {"strategy": "layerwise", "rate": 0.2, "rounds": 3},
        "rewind": {"iteration": 0},
        "runtime": {"threads": 1},  # one torch thread: steady timings on a shared 2-core machine
    }


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root shared by the whole session, MNIST-1D generated into it once."""
    root = tmp_path_factory.mktemp("datasets")
    load_dataset(DatasetConfig(name="mnist1d", root=str(root)), CPU)
    assert (root / "mnist1d" / "mnist1d.npz").is_file()
    return root


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server (moto) on loopback with one bucket, started once for the session that asks."""
    yield from s3_server(tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    """A private Ray temp dir per test module; afterwards the module's leftover processes are killed."""
    yield from h.private_ray_tmp()


@pytest.fixture(scope="session")
def reference_ray_tmp() -> Iterator[Path]:
    """The reference sweep's Ray temp dir, kept for the whole session (later commands on the sweep name it)."""
    yield from h.private_ray_tmp()


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path, reference_ray_tmp: Path) -> h.Sweep:
    """The reference sweep (`sweep_helpers.reference_tree`), launched once per session by the first module that
    asks, and checked to have exited 0; the modules that use it only read it."""
    return h.finished(h.launch_sweep(h.reference_tree(data_root), tmp_path_factory.mktemp("reference"),
                                     reference_ray_tmp))


@pytest.fixture(scope="session")
def mnist1d(data_root: Path) -> DatasetSplits:
    """MNIST-1D splits on the CPU (default 500-example validation set), to hand to in-process Trials."""
    return load_dataset(DatasetConfig(name="mnist1d", root=str(data_root)), CPU)


@pytest.fixture(scope="session")
def make_raw(data_root: Path) -> Callable[..., dict[str, Any]]:
    """make_raw({"model.widths": [64], ...}) -> the tiny experiment as plain YAML data, overrides applied."""

    def make(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        raw = copy.deepcopy(tiny_raw(data_root))
        for key, value in (overrides or {}).items():
            set_dotted(raw, key, copy.deepcopy(value))
        return raw

    return make


@pytest.fixture
def raw_config(make_raw: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A fresh copy of the tiny experiment as plain YAML data (safe to mutate)."""
    return make_raw()


@pytest.fixture(scope="session")
def make_config(data_root: Path) -> Callable[..., ExperimentConfig]:
    """make_config({"prune.rounds": 2, ...}) -> the tiny experiment with dotted overrides applied."""

    def make(overrides: dict[str, Any] | None = None) -> ExperimentConfig:
        return build_experiment(tiny_raw(data_root), overrides)

    return make


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def write_config(tmp_path: Path, make_raw: Callable[..., dict[str, Any]]) -> Callable[..., Path]:
    """write_config(raw=None, name=...) -> path of a YAML file in tmp_path (the tiny experiment by default)."""

    def write(raw: dict[str, Any] | None = None, name: str = "tiny.yaml") -> Path:
        return write_yaml(tmp_path / name, make_raw() if raw is None else raw)

    return write


@pytest.fixture(scope="session")
def write_yaml_file() -> Callable[[Path, dict[str, Any]], Path]:
    """write_yaml_file(path, raw) -> path (for module- and session-scoped fixtures)."""
    return write_yaml


def cli_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "lth_sweep.cli", *(str(a) for a in args)]


@pytest.fixture(scope="session")
def cli_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of every `lth-sweep` subprocess (so a default runs/ lands in a scratch dir)."""
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="session")
def run_cli(cli_cwd: Path) -> Callable[..., CliResult]:
    """run_cli("run", file, "--out", dir, ...) -> (returncode, stdout, stderr), run in a scratch cwd."""
    cwd = cli_cwd

    def run(*args: str | Path, timeout: float = 300) -> CliResult:
        proc = subprocess.run(cli_argv(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def main_here(capsys: pytest.CaptureFixture[str], *args: str | Path) -> CliResult:
    """`lth-sweep ARGS` through lth_sweep.cli.main in this process (the exit code from SystemExit): the same code
    and exit codes as the command, without a process that imports torch again."""
    from lth_sweep.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


@pytest.fixture
def cli_here(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """cli_here("run", ...) -> main_here(capsys, "run", ...)."""
    return lambda *args: main_here(capsys, *args)


@pytest.fixture(scope="session")
def popen_cli(cli_cwd: Path) -> Callable[..., subprocess.Popen[bytes]]:
    """popen_cli(*args) -> a running `lth-sweep` process (output discarded), for kill tests."""
    cwd = cli_cwd

    def start(*args: str | Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(cli_argv(*args), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return start


def read_rounds(out_dir: Path) -> list[dict[str, Any]]:
    """The records of DIR/rounds.jsonl, one JSON object per line."""
    lines = (out_dir / "rounds.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def rounds_of() -> Callable[[Path], list[dict[str, Any]]]:
    return read_rounds


def same_value(a: Any, b: Any) -> bool:
    """Exact equality that treats NaN as equal to NaN (recursively through lists and dicts)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="session")
def same() -> Callable[[Any, Any], bool]:
    return same_value

"""The package's layers: config/storage/checkpoint/errors/signals → engine → sweep → report → cli, every import
pointing down; the engine loads neither Ray nor W&B (a GPU box used for benchmarks may have only torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lth_sweep"
# Each layer and the layers it may import (itself included).
ALLOWED = {
    "base": {"base"},
    "engine": {"base", "engine"},
    "sweep": {"base", "engine", "sweep"},
    "report": {"base", "engine", "sweep", "report"},
    "cli": {"base", "engine", "sweep", "report", "cli"},
}


def layer_of(module: str) -> str:
    """'lth_sweep.engine.train' -> 'engine'; the top-level modules but cli are the base layer."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("engine", "sweep", "report"):
        return parts[1]
    return "cli" if parts[1:2] == ["cli"] else "base"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lth_sweep"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "lth_sweep")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lth_sweep"))
    return found


def module_files() -> list[tuple[str, Path]]:
    return [(".".join(("lth_sweep", *p.relative_to(PACKAGE).with_suffix("").parts)), p)
            for p in sorted(PACKAGE.rglob("*.py"))]


def test_the_three_layers_are_subpackages() -> None:
    for layer in ("engine", "sweep", "report"):
        assert (PACKAGE / layer / "__init__.py").is_file()
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "config", "storage", "checkpoint", "errors", "signals", "cli"}, top


@pytest.mark.parametrize("module,path", module_files(), ids=[m for m, _ in module_files()])
def test_every_import_points_down(module: str, path: Path) -> None:
    layer = layer_of(module)
    for target in imported_modules(path):
        if target == "lth_sweep":
            continue
        assert layer_of(target) in ALLOWED[layer], f"{module} ({layer}) imports {target} ({layer_of(target)})"


def test_importing_the_engine_loads_neither_ray_nor_wandb() -> None:
    code = ("import sys, lth_sweep.engine.lottery, lth_sweep.engine.data, lth_sweep.config, lth_sweep.storage; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'wandb', 'optuna'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_a_local_run_needs_no_sweep_or_storage_packages(tmp_path: Path) -> None:
    """`lth-sweep run` to a folder works where only torch, pydantic, yaml and click are installed (the GPU
    machine of benchmarks/run_gpu.sh): it loads neither Ray, W&B, Optuna nor pyarrow."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['lth-sweep', 'run', {str(PACKAGE.parent / 'sweeps/experiments/mnist1d_mlp.yaml')!r}, '--set',"
            f" 'prune.rounds=1', '--set', 'train.epochs=1', '--out', {str(tmp_path / 'trial')!r}]\n"
            "try:\n    runpy.run_module('lth_sweep.cli', run_name='__main__')\nexcept SystemExit as exit:\n"
            "    assert not exit.code, exit.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'wandb', 'optuna', 'pyarrow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
    assert (tmp_path / "trial" / "rounds.jsonl").is_file()

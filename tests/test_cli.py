"""`lth-sweep run` as a user runs it: bad input exits 2 with one line naming the key and writes nothing;
a good run prints a header and one row per round.

Every `lth-sweep run` process imports torch (about 3 s), so the full matrix of bad values goes through
`lth_sweep.cli.main` in this process (same code, same exit codes, stderr captured), and each distinct
failure path is also checked once as a real subprocess.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

CliRunner = Callable[..., Any]


# (id, --set overrides, key the message must name, extra words the message must contain)
BAD_OVERRIDES: list[tuple[str, list[str], str, list[str]]] = [
    ("unknown-model", ["model.name=resnet99"], "model.name", ["lenet_300_100"]),
    ("unknown-dataset", ["dataset.name=imagenet"], "dataset.name", ["mnist1d"]),
    ("rate-0", ["prune.rate=0"], "prune.rate", []),
    ("rate-1", ["prune.rate=1"], "prune.rate", []),
    ("rate-1.5", ["prune.rate=1.5"], "prune.rate", []),
    ("rate-text", ["prune.rate=lots"], "prune.rate", []),
    ("rewind-iteration-past-end", ["rewind.iteration=105"], "rewind.iteration", ["105"]),
    ("rewind-epoch-past-end", ["rewind.iteration=null", "rewind.epoch=3"], "rewind.epoch", []),
    ("rounds-0", ["prune.rounds=0"], "prune.rounds", []),
    ("unknown-top-level-key", ["learning_rate=0.1"], "learning_rate", ["unknown key"]),
    ("unknown-nested-key", ["train.lrr=0.1"], "train.lrr", ["unknown key"]),
    ("set-without-equals", ["prune.rate"], "--set", ["prune.rate"]),
    ("set-through-a-value", ["seed.x=1"], "seed.x", []),
    ("bad-control", ["control=shuffle"], "control", ["random_mask"]),
]


def assert_user_error(result: Any, key: str, out: Path, words: list[str] = ()) -> str:
    """Exit 2, exactly one line on stderr that names `key`, no traceback, nothing written to `out`."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert line.startswith("lth-sweep: error: ") and key in line, line
    for word in words:
        assert word in line, (word, line)
    assert not out.exists(), f"{out} was written: {sorted(p.name for p in out.iterdir())}"
    return line


@pytest.mark.parametrize("overrides, key, words", [case[1:] for case in BAD_OVERRIDES],
                         ids=[case[0] for case in BAD_OVERRIDES])
def test_bad_override_exits_2(cli_here: CliRunner, write_config: Callable[..., Path], tmp_path: Path,
                              overrides: list[str], key: str, words: list[str]) -> None:
    out = tmp_path / "out"
    args = [arg for pair in overrides for arg in ("--set", pair)]
    assert_user_error(cli_here("run", write_config(), *args, "--out", out), key, out, words)


@pytest.mark.parametrize("overrides, key", [(["train.lrr=0.1"], "train.lrr"), (["prune.rate"], "--set"),
                                            (["rewind.iteration=105"], "rewind.iteration")],
                         ids=["unknown-nested-key", "set-without-equals", "rewind-past-end"])
def test_bad_override_exits_2_as_a_process(run_cli: CliRunner, write_config: Callable[..., Path],
                                           tmp_path: Path, overrides: list[str], key: str) -> None:
    out = tmp_path / "out"
    args = [arg for pair in overrides for arg in ("--set", pair)]
    assert_user_error(run_cli("run", write_config(), *args, "--out", out), key, out)


def test_malformed_yaml_file(run_cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\nmodel: {name: mlp\ntrain: [\n")
    out = tmp_path / "out"
    line = assert_user_error(run_cli("run", bad, "--out", out), "experiment", out)
    assert "bad.yaml" in line and "YAML" in line


def test_unknown_key_in_the_file(cli_here: CliRunner, write_config: Callable[..., Path],
                                 make_raw: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    raw = make_raw()
    raw["prune"]["sparsity"] = 0.5
    out = tmp_path / "out"
    assert_user_error(cli_here("run", write_config(raw), "--out", out), "prune.sparsity", out, ["unknown key"])


def test_nonexistent_experiment_file(run_cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = assert_user_error(run_cli("run", tmp_path / "missing.yaml", "--out", out), "experiment", out)
    assert "missing.yaml" in line


def test_missing_dataset_files_without_download(run_cli: CliRunner, write_config: Callable[..., Path],
                                                tmp_path: Path) -> None:
    empty = tmp_path / "empty_root"
    empty.mkdir()
    out = tmp_path / "out"
    result = run_cli("run", write_config(), "--set", "dataset.name=mnist", "--set", f"dataset.root={empty}",
                     "--set", "dataset.download=false", "--out", out)
    line = assert_user_error(result, "dataset.root", out, ["train-images-idx3-ubyte"])
    assert str(empty) in line
    assert list(empty.iterdir()) == [], "nothing may be downloaded or created in the data root"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(run_cli: CliRunner, write_config: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(run_cli("run", write_config(), "--set", "device=cuda", "--out", out), "device", out,
                      ["cpu"])


def test_image_model_on_mnist1d_writes_nothing(cli_here: CliRunner, write_config: Callable[..., Path],
                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(cli_here("run", write_config(), "--set", "model.name=conv2", "--out", out), "model.name", out,
                      ["image"])


def test_other_experiment_in_an_existing_directory(cli_here: CliRunner, write_config: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = write_config()
    first = cli_here("run", config, "--set", "prune.rounds=1", "--set", "train.epochs=1", "--out", out)
    assert first.returncode == 0, first.stderr
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    second = cli_here("run", config, "--set", "prune.rounds=1", "--set", "train.epochs=2", "--out", out)
    assert second.returncode == 2 and len(second.stderr.splitlines()) == 1
    assert "--out" in second.stderr and "Traceback" not in second.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_successful_run_prints_header_and_one_row_per_round(
        run_cli: CliRunner, write_config: Callable[..., Path], tmp_path: Path,
        rounds_of: Callable[[Path], list[dict[str, Any]]]) -> None:
    out = tmp_path / "out"
    result = run_cli("run", write_config(), "--out", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# mlp on mnist1d, 3 rounds") and str(out) in lines[0]
    header = lines[1].split()
    for column in ("round", "density", "val_acc", "test_acc"):
        assert column in header
    rows = [line.split() for line in lines[2:] if not line.startswith("#")]
    records = rounds_of(out)
    assert len(rows) == len(records) == 3
    for row, record in zip(rows, records, strict=True):
        assert int(row[0]) == record["round"]
        assert float(row[1]) == pytest.approx(record["density"], abs=1e-4)
        assert float(row[header.index("test_acc")]) == pytest.approx(record["test_acc"], abs=1e-4)
    assert lines[-1] == f"# rounds written to {out / 'rounds.jsonl'}"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "rewind.pt", "rounds.jsonl", "state.pt"]


def test_default_out_directory(run_cli: CliRunner, write_config: Callable[..., Path], cli_cwd: Path) -> None:
    result = run_cli("run", write_config(), "--set", "prune.rounds=1", "--set", "train.epochs=1",
                     "--set", "seed=11")
    assert result.returncode == 0, result.stderr
    runs = [p for p in (cli_cwd / "runs").iterdir() if p.name.startswith("tiny-")]
    assert len(runs) == 1 and (runs[0] / "rounds.jsonl").is_file()
    assert len(runs[0].name) == len("tiny-") + 12


def test_help(cli_here: CliRunner) -> None:
    result = cli_here("run", "--help")
    assert result.returncode == 0 and "--set" in result.stdout and "--out" in result.stdout

"""Small things a user meets at once: `--version`, bare `lth-sweep`, a command listing that is not cut off,
`storage:` relative to the sweep file, and `run --out` refusing a folder of other files.
In-process through `lth_sweep.cli.main` (same code and exit codes as the command), one real subprocess."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sweep_helpers as h
from conftest import main_here

from lth_sweep.cli import cli
from lth_sweep.config import machine_cpus
from lth_sweep.sweep.launch import prepare_launch
from lth_sweep.sweep.schema import load_sweep


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    result = main_here(capsys, "--version")
    assert result == (0, f"lth-sweep {importlib.metadata.version('lth-sweep')}\n", "")


def test_bare_command_prints_its_help_and_exits_0() -> None:
    proc = subprocess.run([sys.executable, "-m", "lth_sweep.cli"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: lth-sweep") and "Commands:" in proc.stdout and proc.stderr == ""


def test_command_listing_shows_each_first_sentence_whole(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "70")  # a narrow terminal: click would cut the help to fit
    result = main_here(capsys, "--help")
    assert result.returncode == 0
    listing = " ".join(result.stdout.split("Commands:")[1].split())
    assert "..." not in listing, result.stdout
    for name, command in cli.commands.items():
        # an "e.g." or "i.e." ends no sentence (click's listing stops at it: "... to a local folder, e.g.")
        first_sentence = re.split(r"(?<!e\.g)(?<!i\.e)\.(?:\s|$)", " ".join((command.help or "").split()))[0]
        assert f"{name} {first_sentence}." in listing, f"{name}: {first_sentence!r} not whole in\n{result.stdout}"


# ------------------------------------------------------------------------------------ storage: in a sweep file


@pytest.fixture
def sweep_in_subfolder(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """write(storage) -> a sweep file two folders below tmp_path; the cwd is a sibling folder."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def write(**top: Any) -> Path:
        return h.write_sweep(tmp_path / "project" / "sweeps" / "imp.yaml", h.sweep_tree(data_root, **top))

    return write


def test_storage_in_the_sweep_file_is_relative_to_the_file(sweep_in_subfolder: Any, tmp_path: Path) -> None:
    sweep, experiment = load_sweep(sweep_in_subfolder(storage="../runs"))
    spec = prepare_launch(sweep, experiment, None, None)
    assert spec.experiment_dir == str(tmp_path / "project" / "runs" / "imp")


def test_storage_on_the_command_line_is_relative_to_the_cwd(sweep_in_subfolder: Any, tmp_path: Path) -> None:
    sweep_file = sweep_in_subfolder(storage="../runs")
    sweep, experiment = load_sweep(sweep_file)
    assert prepare_launch(sweep, experiment, "out", None).experiment_dir == str(tmp_path / "elsewhere" / "out" / "imp")
    sweep, experiment = load_sweep(sweep_file, {"storage": "set_out"})  # launch --set storage=...
    expected = tmp_path / "elsewhere" / "set_out" / "imp"
    assert prepare_launch(sweep, experiment, None, None).experiment_dir == str(expected)


def test_storage_absolute_or_uri_or_default_is_unchanged(sweep_in_subfolder: Any, tmp_path: Path) -> None:
    assert load_sweep(sweep_in_subfolder(storage=str(tmp_path / "abs")))[0].storage == str(tmp_path / "abs")
    assert load_sweep(sweep_in_subfolder(storage="s3://bucket/lth"))[0].storage == "s3://bucket/lth"
    sweep, experiment = load_sweep(sweep_in_subfolder())  # no storage key: the default, under the cwd
    assert prepare_launch(sweep, experiment, None, None).experiment_dir == str(
        tmp_path / "elsewhere" / "runs" / "sweeps" / "imp")


# ------------------------------------------------------------------------------------ run --out


def test_run_refuses_a_non_empty_folder_that_holds_no_trial(capsys: pytest.CaptureFixture[str],
                                                           write_config: Any, tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    result = main_here(capsys, "run", write_config(), "--out", out)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and str(out) in lines[0] and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex"]


def test_run_refuses_more_threads_than_cores(capsys: pytest.CaptureFixture[str], write_config: Any,
                                            tmp_path: Path) -> None:
    """torch starts every thread it is given: 100000 on 2 cores did not finish one matmul in a minute."""
    threads = machine_cpus() + 1
    result = main_here(capsys, "run", write_config(), "--set", f"runtime.threads={threads}", "--out", tmp_path / "t")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert "runtime.threads" in result.stderr and f"allowed: 1 to {threads - 1}" in result.stderr, result
    assert not (tmp_path / "t").exists()


def test_run_accepts_an_empty_folder_and_resumes_its_own(capsys: pytest.CaptureFixture[str], write_config: Any,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    config = write_config()
    first = main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=1")
    assert first.returncode == 0, first
    again = main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=1")  # a trial's folder: resumes
    assert again.returncode == 0, again


def test_ctrl_c_in_run_prints_the_command_that_resumes_it(capsys: pytest.CaptureFixture[str], write_config: Any,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 130 with the command to run again (a KeyboardInterrupt raised where Ctrl+C lands: in training)."""
    from lth_sweep.engine.lottery import Trial

    def interrupted(self: Trial) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trial, "run", interrupted)
    out = tmp_path / "my run"
    config = write_config()
    result = main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=2")
    assert result.returncode == 130, result
    assert result.stderr.strip().splitlines()[-1] == (
        f"lth-sweep: interrupted; resume with the same command: lth-sweep run {config} --out '{out}' "
        "--set prune.rounds=2")


def test_a_damaged_config_yaml_in_the_trial_folder_is_named(capsys: pytest.CaptureFixture[str], write_config: Any,
                                                            tmp_path: Path) -> None:
    """Cut short, it failed on one of its keys without naming the file; emptied, it read as the default
    experiment ("holds a different experiment")."""
    out = tmp_path / "trial"
    config = write_config()
    assert main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=1").returncode == 0
    saved = out / "config.yaml"
    text = saved.read_text()
    # cut inside a key (a cut at a fixed fraction moved with the length of the tmp path in dataset.root, and could
    # land on a line break: a valid, shorter experiment)
    for damaged in (text[: text.index("weight_decay:") + len("weight")], ""):
        saved.write_text(damaged)
        result = main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=2")
        assert result.returncode == 2, result
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"lth-sweep: error: {saved}: cannot be read as the trial's experiment ("), line
        assert "it is damaged" in line


def test_an_unreadable_rewind_point_is_said_before_the_header(capsys: pytest.CaptureFixture[str], write_config: Any,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "trial"
    config = write_config()
    assert main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=1").returncode == 0
    rewind = out / "rewind.pt"
    rewind.write_bytes(rewind.read_bytes()[:200])
    result = main_here(capsys, "run", config, "--out", out, "--set", "prune.rounds=2")
    assert result.returncode == 2 and result.stdout == "", result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"lth-sweep: error: {rewind}: cannot be read, it is truncated or corrupt"), line

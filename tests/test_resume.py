"""Kill-and-resume: `lth-sweep run` killed with SIGKILL and rerun gives the records of an uninterrupted run.

The experiment is large enough that a round takes about a second (mlp [256, 256], 8 epochs; rounds >= 1
also train a random-mask control), with a mid-epoch rewind point, so a kill lands inside a phase.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cli_argv

from lth_sweep.checkpoint import load_torch

pytestmark = pytest.mark.slow

ROUNDS = 3
RESUME_EXPERIMENT = {"model.widths": [256, 256], "train.epochs": 8, "prune.rounds": ROUNDS,
                     "rewind.iteration": 50, "control": "random_mask"}
NOT_COMPARED = {"seconds", "samples_per_s"}
POLL_S = 0.01
WAIT_S = 120.0

Popen = subprocess.Popen[bytes]
Predicate = Callable[[Path], bool]


def rounds_written(out: Path) -> int:
    path = out / "rounds.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def read_state(out: Path) -> dict[str, Any] | None:
    try:
        return load_torch(out / "state.pt")
    except FileNotFoundError:
        return None


def during_round_1(out: Path) -> bool:
    return rounds_written(out) >= 1


def state_exists(out: Path) -> bool:
    return (out / "state.pt").exists()


def during_round_1_control(out: Path) -> bool:
    """An epoch checkpoint of round 1's control phase is on disk (so the ticket phase is done)."""
    if rounds_written(out) < 1:
        return False
    state = read_state(out)
    return state is not None and state["round"] == 1 and state["phase"] == "control" \
        and state["iteration"] is not None


def signal_when(proc: Popen, out: Path, ready: Predicate, signum: int) -> int:
    """Sends `signum` to `proc` as soon as `ready(out)` holds; returns its exit code. Fails if it finishes first."""
    deadline = time.monotonic() + WAIT_S
    try:
        while not ready(out):
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the signal"
            assert time.monotonic() < deadline, "the moment to send the signal never came"
            time.sleep(POLL_S)
        proc.send_signal(signum)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_when(proc: Popen, out: Path, ready: Predicate) -> None:
    """SIGKILL `proc` as soon as `ready(out)` holds; fail if it finishes first."""
    assert signal_when(proc, out, ready, signal.SIGKILL) == -signal.SIGKILL, "the run finished before the kill landed"


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in records]


def assert_same_rounds(expected: list[dict[str, Any]], got: list[dict[str, Any]],
                       same: Callable[[Any, Any], bool]) -> None:
    assert [r["round"] for r in got] == list(range(ROUNDS))
    for want, have in zip(comparable(expected), comparable(got), strict=True):
        differing = sorted(k for k in want.keys() | have.keys() if not same(want.get(k), have.get(k)))
        assert not differing, f"round {want['round']}: {[(k, want.get(k), have.get(k)) for k in differing]}"
    assert all("control_test_acc" in r for r in got[1:])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, make_raw: Callable[..., dict[str, Any]],
               write_yaml_file: Callable[[Path, dict[str, Any]], Path]) -> Path:
    return write_yaml_file(tmp_path_factory.mktemp("resume") / "resume.yaml", make_raw(RESUME_EXPERIMENT))


@pytest.fixture(scope="module")
def uninterrupted(experiment: Path, tmp_path_factory: pytest.TempPathFactory,
                  run_cli: Callable[..., Any]) -> Path:
    out = tmp_path_factory.mktemp("resume_a") / "A"
    result = run_cli("run", experiment, "--out", out)
    assert result.returncode == 0, result.stderr
    assert rounds_written(out) == ROUNDS
    return out


@pytest.mark.parametrize("kill_point, resumes_after_round", [
    (during_round_1, 0),
    (state_exists, None),
    (during_round_1_control, 0),
], ids=["mid-round-1", "at-start", "mid-control"])
def test_killed_run_resumes_to_the_same_records(
        experiment: Path, uninterrupted: Path, tmp_path: Path, kill_point: Predicate,
        resumes_after_round: int | None, popen_cli: Callable[..., Popen], run_cli: Callable[..., Any],
        rounds_of: Callable[[Path], list[dict[str, Any]]], same: Callable[[Any, Any], bool]) -> None:
    out = tmp_path / "B"
    kill_when(popen_cli("run", experiment, "--out", out), out, kill_point)
    done_before = rounds_written(out)
    assert done_before < ROUNDS
    before = read_state(out)
    assert before is not None, "state.pt must exist at the kill point"

    result = run_cli("run", experiment, "--out", out)
    assert result.returncode == 0, result.stderr
    if resumes_after_round is not None:
        assert f"# resuming after round {resumes_after_round}" in result.stdout

    assert_same_rounds(rounds_of(uninterrupted), rounds_of(out), same)

    state_a, state_b = load_torch(uninterrupted / "state.pt"), load_torch(out / "state.pt")
    for name, mask in state_a["masks"].items():
        assert torch.equal(mask, state_b["masks"][name]), name
    rewind_a, rewind_b = load_torch(uninterrupted / "rewind.pt"), load_torch(out / "rewind.pt")
    assert all(torch.equal(t, rewind_b[n]) for n, t in rewind_a.items())


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["Ctrl+C", "SIGTERM"])
def test_a_stopped_run_says_how_to_go_on_and_its_rerun_gives_the_same_records(
        experiment: Path, uninterrupted: Path, tmp_path: Path, cli_cwd: Path, signum: int, exit_code: int,
        run_cli: Callable[..., Any], rounds_of: Callable[[Path], list[dict[str, Any]]],
        same: Callable[[Any, Any], bool]) -> None:
    """SIGTERM (a scheduler's preemption, `kill`) stops `run` as Ctrl+C does: one line, no traceback. The signal
    comes during round 1, when an epoch's state.pt is written about every 0.1 s: one that cut torch.save's writer
    gave a traceback or aborted the process (`interrupts_held` now holds it until the file is in place)."""
    out = tmp_path / "B"
    with open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen(cli_argv("run", experiment, "--out", out), cwd=cli_cwd, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        returncode = signal_when(proc, out, during_round_1, signum)
    said = (tmp_path / "stderr").read_text()
    assert returncode == exit_code, said
    command = shlex.join(["lth-sweep", "run", str(experiment), "--out", str(out)])
    assert [line for line in said.splitlines() if line] == [f"lth-sweep: interrupted; resume with the same command: "
                                                            f"{command}"]
    assert rounds_written(out) < ROUNDS

    result = run_cli("run", experiment, "--out", out)
    assert result.returncode == 0, result.stderr
    assert_same_rounds(rounds_of(uninterrupted), rounds_of(out), same)


def test_rerun_after_completion_prints_the_same_rows(experiment: Path, uninterrupted: Path,
                                                     run_cli: Callable[..., Any]) -> None:
    before = (uninterrupted / "rounds.jsonl").read_text()
    state_before = (uninterrupted / "state.pt").read_bytes()
    result = run_cli("run", experiment, "--out", uninterrupted)
    assert result.returncode == 0, result.stderr
    assert (uninterrupted / "state.pt").read_bytes() == state_before  # nothing recomputed, nothing rewritten
    rows = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")]
    assert len(rows) == 1 + ROUNDS and "resuming" not in result.stdout
    assert (uninterrupted / "rounds.jsonl").read_text() == before

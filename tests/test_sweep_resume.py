"""`lth-sweep resume` after the driver was SIGKILLed mid-sweep: the sweep finishes with exactly its trials,
and no finished round is trained again.

The interrupted sweep is the reference sweep of test_sweep.py (4 trials, 2 at a time, 3 rounds, random
sampler with a seed), alone and packed two configs per trial (`search.pack: 2`); the packed one's Tune snapshot is
also cut short after the kill, as a kill while Tune copies it into storage leaves it. The same sweep run without
interruption and unpacked (shared with test_sweep.py) is the yardstick for both. Last, a tiny sweep whose trials
fail for good is resumed, and Optuna learns their results.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROUNDS = 3
NUM_SAMPLES = 4
CUT_SHORT_WITH, CUT_AT = 2, 4096  # the packed sweep resumes from a snapshot cut short (the kept copy puts it back)


class Interrupted(NamedTuple):
    pack: int  # search.pack
    dir: Path
    cwd: Path
    env: dict[str, str]
    ledger_at_kill: list[dict[str, Any]]
    engine_rounds_at_kill: dict[str, int]  # config hash -> rounds in its engine's rounds.jsonl
    status_at_kill: h.Result
    report_at_kill: h.Result  # `lth-sweep report` of the killed sweep, into <cwd>/report_at_kill
    resume: h.Result


def mid_trial(ledger: list[dict[str, Any]]) -> bool:
    """Kill when >= 3 rounds are done and some trial is part-way: it has finished (and logged) a round
    and is still running."""
    return len(ledger) >= 3 and bool(h.part_way(ledger, ROUNDS))


@pytest.fixture(scope="module", params=[1, 2], ids=["alone", "packed"])
def interrupted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data_root: Path,
                ray_tmp: Path) -> Interrupted:
    base = tmp_path_factory.mktemp("interrupted")
    tree = h.reference_tree(data_root)
    tree["search"]["pack"] = request.param
    sweep_file = h.write_sweep(base / "imp.yaml", tree)
    sweep_dir = base / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    with h.started("launch", sweep_file, "--storage", base / "storage", cwd=base, env=env,
                   log_path=base / "launch.log") as proc:
        h.poll(lambda: mid_trial(h.ledger(sweep_dir)) or proc.poll() is not None, timeout=240,
               interval=0.1, what="3 rounds in the ledger, one trial part-way")
        log_text = (base / "launch.log").read_text
        assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + log_text()
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: Ray's own reaper takes the local instance down
        proc.wait(timeout=30)
        ledger_at_kill = h.ledger(sweep_dir)
    h.kill_marked()  # any process of this test session that still runs
    engine_rounds_at_kill = {folder.name: len(h.engine_rounds(sweep_dir, folder.name))
                             for folder in (sweep_dir / "by_config").iterdir()}
    for config_hash in h.part_way(ledger_at_kill, ROUNDS):
        h.leave_pack_checkpoint(sweep_dir / "by_config" / config_hash, config_hash)
    status_at_kill = h.run_cli("status", sweep_dir, "--json", cwd=base, env=env, timeout=120)
    report_at_kill = h.run_cli("report", sweep_dir, "--out", base / "report_at_kill", cwd=base, env=env, timeout=180)
    if request.param == CUT_SHORT_WITH:  # what a kill while Tune copies its snapshot into storage leaves (CI)
        snapshot = max(sweep_dir.glob("experiment_state-*.json"))
        snapshot.write_bytes(snapshot.read_bytes()[:CUT_AT])
    resume = h.run_cli("resume", sweep_dir, cwd=base, env=env, timeout=300)
    (base / "resume.log").write_text(resume.explain())
    return Interrupted(request.param, sweep_dir, base, env, ledger_at_kill, engine_rounds_at_kill, status_at_kill,
                       report_at_kill, resume)


@pytest.fixture(scope="module")
def status(interrupted: Interrupted) -> dict[str, Any]:
    assert interrupted.resume.returncode == 0, interrupted.resume.explain()
    return h.status_json(interrupted.dir, interrupted.cwd, interrupted.env)


@pytest.fixture(scope="module")
def uninterrupted(reference_sweep: h.Sweep) -> h.Sweep:
    return reference_sweep


def test_the_kill_landed_mid_sweep(interrupted: Interrupted) -> None:
    done = Counter(line["config_hash"] for line in interrupted.ledger_at_kill)
    assert 3 <= len(interrupted.ledger_at_kill) < NUM_SAMPLES * ROUNDS
    assert sum(n == ROUNDS for n in done.values()) < NUM_SAMPLES


def test_status_of_the_killed_sweep_says_it_is_unfinished(interrupted: Interrupted) -> None:
    """`status` reads the storage without Ray: it works on a sweep whose driver is dead."""
    result = interrupted.status_at_kill
    assert result.returncode == 0, result.explain()
    trials = json.loads(result.stdout)["trials"]
    assert len(trials) <= NUM_SAMPLES
    assert len(trials) < NUM_SAMPLES or any(t["state"] != "TERMINATED" for t in trials), trials
    # Tune's snapshot lags the trials by seconds: an unfinished trial shows the rounds its engine saved
    unfinished = {t["config_hash"]: t["rounds_done"] for t in trials if t["state"] != "TERMINATED" and t["config_hash"]}
    assert unfinished == {c: interrupted.engine_rounds_at_kill[c] for c in unfinished}, (unfinished, trials)


def test_a_report_of_the_killed_sweep_shows_it_unfinished(interrupted: Interrupted) -> None:
    """`report` reads the storage without Ray, like `status`: it works on a sweep whose driver is dead and
    shows the trials as the storage has them."""
    result = interrupted.report_at_kill
    assert result.returncode == 0, result.explain()
    trials = json.loads(interrupted.status_at_kill.stdout)["trials"]
    counts = Counter(t["state"] for t in trials)
    page = (interrupted.cwd / "report_at_kill" / "index.html").read_text()
    started = counts["RUNNING"] + counts["IN_PROGRESS"]
    not_started = NUM_SAMPLES - counts["TERMINATED"] - started - counts["ERROR"]
    assert (f"{counts['TERMINATED']} done, {started} in progress, {counts['ERROR']} failed, "
            f"{not_started} not started (of {NUM_SAMPLES})") in page
    assert counts["TERMINATED"] < NUM_SAMPLES
    assert (interrupted.cwd / "report_at_kill" / "lottery_ticket.png").is_file() == any(
        t["rounds_done"] for t in trials)


def test_resume_finishes_the_sweep(interrupted: Interrupted) -> None:
    result = interrupted.resume
    assert result.returncode == 0, result.explain()
    assert f"everything is under {interrupted.dir}" in result.stdout
    put_back = [line for line in result.stdout.splitlines() if "cannot be read" in line]
    assert len(put_back) == (interrupted.pack == CUT_SHORT_WITH), put_back


def test_resume_removed_the_pack_checkpoints_a_kill_left(interrupted: Interrupted) -> None:
    """Each by the next trial of its config, under the config's lock (a trial of a pack or alone)."""
    assert interrupted.resume.returncode == 0, interrupted.resume.explain()
    assert h.part_way(interrupted.ledger_at_kill, ROUNDS), "no config was part-way at the kill"
    assert not list((interrupted.dir / "by_config").glob("*/.pack-checkpoint-*"))


def test_status_shows_exactly_the_sweeps_trials_all_terminated(status: dict[str, Any]) -> None:
    trials = status["trials"]
    assert len(trials) == NUM_SAMPLES, [(t["trial_id"], t["state"]) for t in trials]
    assert status["counts"] == {"TERMINATED": NUM_SAMPLES}
    assert all(t["rounds_done"] == ROUNDS for t in trials), trials
    assert len({t["config_hash"] for t in trials}) == NUM_SAMPLES


def test_each_trial_has_every_round_once(interrupted: Interrupted, status: dict[str, Any]) -> None:
    h.assert_every_round_once(interrupted.dir, status["trials"], ROUNDS)


def test_no_finished_round_was_trained_again(interrupted: Interrupted, status: dict[str, Any]) -> None:
    ledger = h.ledger(interrupted.dir)
    pairs = Counter((line["config_hash"], line["round"]) for line in ledger)
    assert max(pairs.values()) == 1, [pair for pair, n in pairs.items() if n > 1]
    assert interrupted.ledger_at_kill == ledger[: len(interrupted.ledger_at_kill)]
    done_at_kill = Counter(line["config_hash"] for line in interrupted.ledger_at_kill)
    in_flight = {config for config, n in done_at_kill.items() if n < ROUNDS}
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


def test_every_round_reached_wandb_once(interrupted: Interrupted, status: dict[str, Any]) -> None:
    """A killed trial's offline W&B rows may be lost (W&B writes its file in blocks) or already on disk; the
    resumed trial logs its rounds again at the same explicit steps. Read the run folders in order as
    `wandb sync` does for a resumed run, dropping rows whose step is not past the run's last one: every
    round is there exactly once."""
    for trial in status["trials"]:
        last_step, rounds = -1, []
        for run_dir in h.wandb_run_dirs(interrupted.dir, trial["config_hash"]):
            for item in h.history_items(h.wandb_records(run_dir)):
                if item["_step"] <= last_step:
                    continue
                last_step = item["_step"]
                if "val_acc" in item:
                    rounds.append(item["round"])
        assert rounds == list(range(ROUNDS)), (trial["config_hash"], rounds)


def test_resumed_rounds_equal_the_uninterrupted_ones(interrupted: Interrupted, status: dict[str, Any],
                                                    uninterrupted: h.Sweep) -> None:
    """The engine resumes exactly: a config killed part-way (even mid-round) ends with the very numbers
    of the same config run without interruption."""
    keys = ("round", "density", "val_acc", "val_loss_min", "early_stop_iter", "test_acc", "test_acc_at_early_stop",
            "train_loss")
    for trial in status["trials"]:
        resumed = h.engine_rounds(interrupted.dir, trial["config_hash"])
        reference = h.engine_rounds(uninterrupted.dir, trial["config_hash"])
        assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in reference], trial


def test_the_optuna_storage_holds_one_trial_per_tune_trial(interrupted: Interrupted, status: dict[str, Any]) -> None:
    """The study copied for optuna-dashboard (a journal file in the sweep folder) after the SIGKILL and the
    resume: one study, one trial per Tune trial, each with its Tune trial's config and final objective."""
    import optuna

    from lth_sweep.sweep.optuna_store import JOURNAL_FILE, open_storage

    storage = open_storage(str(interrupted.dir / JOURNAL_FILE))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["imp"]
    trials = optuna.load_study(study_name="imp", storage=storage).get_trials()
    assert [t.number for t in trials] == list(range(NUM_SAMPLES))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    stored = sorted((sorted(t.params.items()), t.value) for t in trials)
    expected = sorted((sorted(t["params"].items()), t["objective"]) for t in status["trials"])
    assert stored == expected


# ------------------------------------------------------------------------------------ trials that failed for good


# Packed only, for the suite's time: the searcher chain of a pack (PackSearcher, ResumingLimiter, StoredOptunaSearch)
# holds the unpacked one; test_optuna_store.py checks StoredOptunaSearch alone and for a pack against real Optuna.
@pytest.mark.parametrize("pack", [2], ids=["packed"])
def test_trials_that_failed_for_good_reach_optuna_complete_after_resume(pack: int, tmp_path: Path, data_root: Path,
                                                                        ray_tmp: Path) -> None:
    """Both configs fail after round 1 with max_failures 0 (Tune: ERROR, Optuna: FAIL); `resume` restarts and
    finishes them. The study in the journal keeps each FAIL trial and has one COMPLETE trial per config with its
    params, its final objective and a value per round, linked to the Tune trial and the FAIL trial (a second
    resume, failing again, Pareto: test_optuna_store.py)."""
    import optuna

    from lth_sweep.sweep.optuna_store import JOURNAL_FILE, RESUMED_ATTR, TUNE_TRIAL_ATTR, open_storage

    tree = h.sweep_tree(data_root, epochs=1, rounds=ROUNDS, num_samples=2, max_concurrent=2, max_failures=0,
                        space={"prune.rate": {"uniform": [0.2, 0.5]}, "train.lr": {"loguniform": [0.001, 0.005]}})
    tree["search"]["pack"] = pack
    sweep = h.launch_sweep(tree, tmp_path, ray_tmp, name="failed", **{h.FAIL_ONCE_ENV: "1"})
    assert sweep.launch.returncode == 1, sweep.launch.explain()
    assert sweep.launch.stdout.count("failed for good (RuntimeError: injected failure after round 1") == 2 // pack, \
        sweep.launch.explain()  # the error's own line on the terminal
    resumed = h.run_cli("resume", sweep.dir, cwd=sweep.cwd, env=sweep.env)
    assert resumed.returncode == 0, resumed.explain()

    trials = optuna.load_study(study_name="failed", storage=open_storage(str(sweep.dir / JOURNAL_FILE))).get_trials()
    failed = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in trials if t.state == optuna.trial.TrialState.FAIL}
    complete = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(trials) == 4 and len(failed) == len(complete) == 2, [(t.number, t.state.name) for t in trials]
    rows = h.status_json(sweep.dir, sweep.cwd, sweep.env)["trials"]
    assert [row["state"] for row in rows] == ["TERMINATED"] * 2
    for row in rows:
        trial = complete[row["trial_id"]]
        assert trial.params == failed[row["trial_id"]].params == row["params"]
        assert trial.value == pytest.approx(row["objective"])
        assert sorted(trial.intermediate_values) == list(range(1, ROUNDS + 1))
        assert trial.intermediate_values[ROUNDS] == pytest.approx(row["objective"])
        assert trial.user_attrs[RESUMED_ATTR] == failed[row["trial_id"]].number

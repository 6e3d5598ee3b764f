"""Packed sweeps end to end (`search.pack`): real Ray, Optuna, W&B offline, on the CPU.

1. The reference sweep of test_sweep.py (4 configs, random sampler with a seed) launched with `search.pack: 2`:
   2 Tune trials of 2 configs. Optuna suggests the same 4 configs; each config's rounds are exactly those of the
   unpacked reference sweep (on a CPU a pack's members train one after another: the numbers are identical;
   tests/test_pack.py shows a stacked pack equal to its members alone in float64); status, the report, W&B,
   the ledger, tickets and the Optuna study all show one trial per config.
2. ASHA inside a pack (4 configs in one stacked trial): members below a rung's cutoff stop inside the pack, the
   others train all rounds, and Optuna gets every member as COMPLETE with its own values.
3. Suggestions that cannot train together (a searched batch size) in one Tune trial: split into packs that
   can, trained one after another.
A killed and resumed packed sweep is in test_sweep_resume.py.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import sweep_helpers as h
import torch
import yaml

from lth_sweep.sweep.optuna_store import JOURNAL_FILE, open_storage
from lth_sweep.sweep.packing import tune_trial_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROUNDS = 3
NUM_SAMPLES = 4
ENGINE_KEYS = ("round", "density", "val_acc", "val_loss_min", "early_stop_iter", "test_acc", "test_acc_at_early_stop",
               "train_loss")


def packed_tree(data_root: Path, pack: int, **search: Any) -> dict[str, Any]:
    tree = copy.deepcopy(h.reference_tree(data_root))
    tree["search"].update(pack=pack, **search)
    return tree


@pytest.fixture(scope="module")
def reference(reference_sweep: h.Sweep) -> h.Sweep:
    return reference_sweep


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, data_root: Path, ray_tmp: Path) -> h.Sweep:
    return h.finished(h.launch_sweep(packed_tree(data_root, pack=2), tmp_path_factory.mktemp("packed"), ray_tmp))


@pytest.fixture(scope="module")
def status(packed: h.Sweep) -> dict[str, Any]:
    return h.status_json(packed.dir, packed.cwd, packed.env)


def tune_trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(sweep_dir.glob("trial_*"))


def test_two_tune_trials_of_two_configs_each(packed: h.Sweep, status: dict[str, Any]) -> None:
    dirs = tune_trial_dirs(packed.dir)
    assert len(dirs) == 2
    ids = sorted(row["trial_id"] for row in status["trials"])
    assert ids == sorted(f"{d.name.removeprefix('trial_')}_{j}" for d in dirs for j in range(2))
    assert status["counts"] == {"TERMINATED": NUM_SAMPLES}
    assert all(row["rounds_done"] == ROUNDS for row in status["trials"])
    # on a CPU the members train one after another: a report after each member's round, every member's latest
    # in each (none yet for the second at first), so a finished round shows at once, as unpacked
    expected = [pair for k in range(1, ROUNDS + 1) for pair in ([k, k - 1 or None], [k, k])]
    for d in dirs:
        results = h.read_jsonl(d / "result.json")
        assert [[m.get("rounds_done") for m in r["members"]] for r in results] == expected


def test_packed_configs_and_rounds_equal_the_unpacked_sweeps(packed: h.Sweep, status: dict[str, Any],
                                                            reference: h.Sweep) -> None:
    reference_status = h.status_json(reference.dir, reference.cwd, reference.env)
    by_hash = {row["config_hash"]: row for row in reference_status["trials"]}
    assert {row["config_hash"] for row in status["trials"]} == set(by_hash)
    for row in status["trials"]:
        theirs = by_hash[row["config_hash"]]
        assert row["params"] == theirs["params"] and row["objective"] == theirs["objective"]
        mine = [[r[k] for k in ENGINE_KEYS] for r in h.engine_rounds(packed.dir, row["config_hash"])]
        assert mine == [[r[k] for k in ENGINE_KEYS] for r in h.engine_rounds(reference.dir, row["config_hash"])]


def test_every_config_has_its_rounds_once_in_the_ledger_and_in_wandb(packed: h.Sweep, status: dict[str, Any]) -> None:
    lines = h.ledger(packed.dir)
    pairs = Counter((line["config_hash"], line["round"]) for line in lines)
    assert pairs == Counter({(row["config_hash"], r): 1 for row in status["trials"] for r in range(ROUNDS)})
    # a line names the member that trained the round, as status does; tune_trial_of gives its Tune trial
    members = {row["trial_id"]: row["config_hash"] for row in status["trials"]}
    assert {line["trial_id"]: line["config_hash"] for line in lines} == members
    assert {tune_trial_of(line["trial_id"]) for line in lines} == {d.name.removeprefix("trial_")
                                                                  for d in tune_trial_dirs(packed.dir)}
    for row in status["trials"]:
        run_dirs = h.wandb_run_dirs(packed.dir, row["config_hash"])
        assert len(run_dirs) == 1, row  # one W&B run per config, as unpacked
        records = h.wandb_records(run_dirs[0])
        rounds = [item["round"] for item in h.history_items(records) if "val_acc" in item]
        assert rounds == list(range(ROUNDS))
        config = h.run_config(records)
        assert config["searched"] == row["params"] and config["config_hash"] == row["config_hash"]


def test_the_optuna_study_has_one_complete_trial_per_config(packed: h.Sweep, status: dict[str, Any]) -> None:
    study = optuna.load_study(study_name="imp", storage=open_storage(str(packed.dir / JOURNAL_FILE)))
    trials = study.get_trials()
    assert len(trials) == NUM_SAMPLES
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    stored = sorted((t.user_attrs["tune_trial_id"], t.value, sorted(t.params.items())) for t in trials)
    assert stored == sorted((r["trial_id"], r["objective"], sorted(r["params"].items())) for r in status["trials"])
    assert all(sorted(t.intermediate_values) == list(range(1, ROUNDS + 1)) for t in trials)


def test_progress_prints_a_line_per_config_and_round(packed: h.Sweep, status: dict[str, Any]) -> None:
    lines = [line for line in packed.launch.stdout.splitlines() if " round " in line]
    for row in status["trials"]:
        assert [line.split(" round ")[1].split(":")[0] for line in lines if f"trial {row['trial_id']} " in line] \
            == [f"{k - 1} ({k}/{ROUNDS} done)" for k in range(1, ROUNDS + 1)]


def test_report_and_ticket_of_a_pack_member(packed: h.Sweep, status: dict[str, Any], tmp_path: Path) -> None:
    report = h.run_cli("report", packed.dir, "--out", tmp_path / "report", cwd=packed.cwd, env=packed.env,
                       timeout=180)
    assert report.returncode == 0, report.explain()
    csv_lines = (tmp_path / "report" / "rounds.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + NUM_SAMPLES * ROUNDS
    member = status["best"][0]
    ticket = tmp_path / "ticket.pt"
    export = h.run_cli("ticket", "export", packed.dir, member["trial_id"], "--out", ticket, cwd=packed.cwd,
                       env=packed.env, timeout=120)
    assert export.returncode == 0, export.explain()
    saved = torch.load(ticket, weights_only=True)
    assert saved["record"]["round"] == ROUNDS - 1 and saved["config"]["prune"]["rate"] == member["params"]["prune.rate"]


def test_asha_stops_members_inside_a_stacked_pack(tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    tree = packed_tree(data_root, pack=NUM_SAMPLES)
    tree["experiment"]["runtime"] = {"pack_stacking": "stacked"}
    tree["scheduler"] = {"name": "asha", "grace_rounds": 1, "reduction_factor": 2}
    sweep = h.launch_sweep(tree, tmp_path, ray_tmp, name="asha")
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    rows = h.status_json(sweep.dir, sweep.cwd, sweep.env)["trials"]
    assert len(tune_trial_dirs(sweep.dir)) == 1 and len(rows) == NUM_SAMPLES
    rounds = sorted(row["rounds_done"] for row in rows)
    assert rounds[0] < ROUNDS and rounds[-1] == ROUNDS, rounds  # some stopped at a rung, one went on
    assert all(row["state"] == "TERMINATED" for row in rows)
    assert [row["stopped_early"] for row in rows] == [row["rounds_done"] < ROUNDS for row in rows]
    assert "(stopped by ASHA)" in sweep.launch.stdout
    human = h.run_cli("status", sweep.dir, cwd=sweep.cwd, env=sweep.env).stdout.splitlines()
    stopped = sum(row["stopped_early"] for row in rows)
    assert f"({stopped} of them stopped early by ASHA)" in human[0], human
    for row in rows:
        line = next(line for line in human if line.split()[:1] == [row["trial_id"]])
        assert line.split()[1:3] == [row["config_hash"], "STOPPED" if row["stopped_early"] else "TERMINATED"], human
    trained = Counter(line["config_hash"] for line in h.ledger(sweep.dir))
    assert {row["config_hash"]: row["rounds_done"] for row in rows} == dict(trained)  # nothing after the stop
    study = optuna.load_study(study_name="asha", storage=open_storage(str(sweep.dir / JOURNAL_FILE)))
    assert sorted((t.user_attrs["tune_trial_id"], t.value) for t in study.get_trials()) \
        == sorted((row["trial_id"], row["objective"]) for row in rows)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials())


def test_a_config_suggested_twice_is_trained_once(tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    """Two values to choose from, eight suggestions in two packs of four: configs repeat inside a pack, where each
    trains once (its by-config folder is locked once) and every member that suggested it gets its values, and
    across packs, where one pack replays the rounds the other trained: Optuna still gets every round's value."""
    tree = packed_tree(data_root, pack=NUM_SAMPLES, num_samples=2 * NUM_SAMPLES)
    tree["search"]["space"] = {"prune.rate": {"choice": [0.2, 0.3]}}
    sweep = h.finished(h.launch_sweep(tree, tmp_path, ray_tmp, name="twice", timeout=180))
    rows = h.status_json(sweep.dir, sweep.cwd, sweep.env)["trials"]
    assert len(tune_trial_dirs(sweep.dir)) == 2 and len(rows) == 2 * NUM_SAMPLES
    assert all(row["rounds_done"] == ROUNDS for row in rows)
    by_hash = {row["config_hash"]: row["objective"] for row in rows}
    assert all(row["objective"] == by_hash[row["config_hash"]] for row in rows)
    lines = h.ledger(sweep.dir)
    pairs = Counter((line["config_hash"], line["round"]) for line in lines)
    assert pairs == Counter({(config, r): 1 for config in by_hash for r in range(ROUNDS)})
    trained_in = {line["config_hash"]: tune_trial_of(line["trial_id"]) for line in lines}
    replayed = [row for row in rows if tune_trial_of(row["trial_id"]) != trained_in[row["config_hash"]]]
    assert replayed, rows  # else no pack found another's rounds
    study = optuna.load_study(study_name="twice", storage=open_storage(str(sweep.dir / JOURNAL_FILE)))
    hash_of = {row["trial_id"]: row["config_hash"] for row in rows}
    curves: dict[str, list[dict[int, float]]] = {}
    for t in study.get_trials():
        assert t.state == optuna.trial.TrialState.COMPLETE, t
        assert sorted(t.intermediate_values) == list(range(1, ROUNDS + 1)), t  # the replayed ones' too
        curves.setdefault(hash_of[t.user_attrs["tune_trial_id"]], []).append(t.intermediate_values)
    assert all(curve == same[0] for same in curves.values() for curve in same)  # replayed as trained


def test_suggestions_that_cannot_train_together_are_split_inside_the_trial(tmp_path: Path, data_root: Path,
                                                                         ray_tmp: Path) -> None:
    """A searched batch size changes the steps per epoch: one Tune trial of four suggestions trains them as
    packs of equal batch size, one after another, and every config gets all its rounds, each once."""
    space = {"train.batch_size": {"choice": [50, 100]}, "prune.rate": {"uniform": [0.2, 0.4]}}
    tree = h.sweep_tree(data_root, epochs=1, rounds=2, num_samples=4, max_concurrent=1, space=space)
    tree["search"]["pack"] = 4
    sweep = h.finished(h.launch_sweep(tree, tmp_path, ray_tmp, name="split", timeout=180))
    rows = h.status_json(sweep.dir, sweep.cwd, sweep.env)["trials"]
    assert len(tune_trial_dirs(sweep.dir)) == 1 and len(rows) == 4
    batch_sizes = {row["config_hash"]: row["params"]["train.batch_size"] for row in rows}
    assert set(batch_sizes.values()) == {50, 100}, batch_sizes  # else nothing here needed a split
    assert all(row["rounds_done"] == 2 for row in rows), rows
    pairs = Counter((line["config_hash"], line["round"]) for line in h.ledger(sweep.dir))
    assert pairs == Counter({(config, r): 1 for config in batch_sizes for r in range(2)})
    for config, batch_size in batch_sizes.items():  # each trained as its own config
        saved = yaml.safe_load((sweep.dir / "by_config" / config / "engine" / "config.yaml").read_text())
        assert saved["train"]["batch_size"] == batch_size


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_pack_value_exits_2_in_one_line(value: str, tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", h.reference_tree(data_root))
    result = h.run_cli("launch", sweep_file, "--set", f"search.pack={value}", "--storage", tmp_path / "storage",
                       cwd=tmp_path, env=h.cli_env(ray_tmp), timeout=120)
    assert result.returncode == 2, result.explain()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "search.pack" in lines[0] and "auto" in lines[0], result.explain()
    assert not (tmp_path / "storage").exists()

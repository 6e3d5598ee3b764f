"""What a sweep has done so far, read from its storage without starting Ray."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.errors import UserError
from lth_sweep.sweep.objectives import objective_value, pareto_front
from lth_sweep.sweep.packing import members_of
from lth_sweep.sweep.schema import objective_metrics
from lth_sweep.sweep.spec import LaunchSpec, load_spec

SNAPSHOT_PREFIX = "experiment_state-"  # Tune's experiment snapshot, one per driver session


def snapshot_files(names: list[str]) -> list[str]:
    """Tune's experiment snapshots among these names of a sweep folder's files (oldest session first, if sorted)."""
    return [name for name in names if name.startswith(SNAPSHOT_PREFIX) and name.endswith(".json") and "/" not in name]
# Tune's snapshots record a RUNNING trial as PENDING (so that a restore starts it again): one with rounds done is
# training now, or was when its driver stopped, and `resume` continues it
IN_PROGRESS = "IN_PROGRESS"
RECORD_KEYS = {"round", "density", "val_acc"}  # what every reader of a round record needs


def tune_analysis(experiment_dir: str) -> tuple[Any, str | None]:
    """Tune's view of the sweep, or None with no warning (launched, but Tune has not written its first snapshot
    yet) or with one naming the snapshot that cannot be read."""
    from ray.tune import ExperimentAnalysis

    # a trial that has not reported yet has no progress.csv, which Tune logs as a warning: not news here (on the
    # terminal after a Ctrl+C, or in `status`); the rows come from the snapshot's last results
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        return ExperimentAnalysis(experiment_dir), None
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        snapshots = snapshot_files(storage.list_files(experiment_dir))
        if not snapshots:
            return None, None
        reason = (str(err).splitlines() or [""])[0][:200]
        damaged = (f"Tune's snapshot {storage.join(experiment_dir, snapshots[-1])} cannot be read "
                   f"({type(err).__name__}: {reason})")
        analysis = analysis_of_kept_copy(experiment_dir)
        if analysis is None:
            return None, f"{damaged}; no trial is listed from it"
        return analysis, (f"{damaged}; the trials are listed from the whole copy of Tune's last snapshot that the "
                          "driver kept, which `lth-sweep resume` puts back")
    finally:
        analysis_log.setLevel(level)


def analysis_of_kept_copy(experiment_dir: str) -> Any:
    """Tune's view of the sweep from the driver's copy of its last snapshot (`snapshot.SnapshotKeeper`), else None."""
    from ray.tune import ExperimentAnalysis

    from lth_sweep.sweep.snapshot import kept_copy  # imports this module's SNAPSHOT_PREFIX

    files = kept_copy(experiment_dir)
    if files is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            Path(folder, name).write_bytes(data)
        try:
            return ExperimentAnalysis(folder)  # reads the snapshot whole now: the folder may go
        except (ValueError, FileNotFoundError, RuntimeError):
            return None


def trial_rows(experiment_dir: str, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per config (a Tune trial, or each member of a pack trial): searched values, state, rounds done,
    density, val_acc, objective. Why Tune's snapshot could not be read goes to `warnings`."""
    analysis, warning = tune_analysis(experiment_dir)
    if warning is not None and warnings is not None:
        warnings.append(warning)
    if analysis is None:
        return []
    rows = []
    for trial in analysis.trials:
        for member in members_of(trial.trial_id, trial.config, trial.last_result):
            last = member.result
            rows.append({
                "trial_id": member.member_id,
                "state": "TERMINATED" if last.get("stopped") else trial.status,
                "params": member.params,
                "config_hash": last.get("config_hash"),
                "rounds_done": last.get("rounds_done", 0),
                "density": last.get("density"),
                "val_acc": last.get("val_acc"),
                "test_acc": last.get("test_acc"),
                "objective": last.get("objective"),
                "failures": trial.num_failures,
            })
    return rows


def round_records(experiment_dir: str, config_hash: str | None, warnings: list[str],
                  rounds: int | None = None) -> list[dict[str, Any]]:
    """A config's finished rounds (its first `rounds` only, when given), from its engine's `rounds.jsonl`. The
    file is written atomically, so a line that cannot be read means it was damaged: the rounds before it are
    kept, and `warnings` says which file."""
    if config_hash is None:
        return []
    path = storage.join(experiment_dir, "by_config", config_hash, "engine", "rounds.jsonl")
    if not storage.exists(path):
        return []
    try:
        text = storage.read_text(path)
    except UserError as err:  # not text at all
        warnings.append(f"{err}; the config's rounds are left out; its state.pt still holds them")
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not RECORD_KEYS <= record.keys():
            warnings.append(f"{path}: line {number} cannot be read (truncated or corrupt), so the config's rounds "
                            f"from there on are left out; its state.pt still holds them")
            break
        records.append(record)
    return records if rounds is None else [r for r in records if r["round"] < rounds]


def own_rounds(spec: LaunchSpec, row: dict[str, Any]) -> int:
    """How many of its config's rounds are the trial's own: its `prune.rounds`, or those done when a scheduler
    ended it. The config's store can hold more, trained by a trial of the same config with more rounds
    (`prune.rounds` is not part of the config hash)."""
    planned = spec.rounds_of(row["params"])
    return min(planned, row["rounds_done"]) if row["state"] == "TERMINATED" else planned


def trial_records(spec: LaunchSpec, row: dict[str, Any], warnings: list[str]) -> list[dict[str, Any]]:
    """The finished rounds of the trial (or pack member) of a `trial_rows` row."""
    return round_records(spec.experiment_dir, row["config_hash"], warnings, own_rounds(spec, row))


def round_points(row: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trial's finished rounds (from its config's engine state) as points for the Pareto front."""
    return [{"trial_id": row["trial_id"], "round": record["round"], "density": record["density"],
             "val_acc": record["val_acc"], "test_acc": record.get("test_acc")} for record in records]


def sweep_status(path: str, top: int = 5) -> dict[str, Any]:
    return status_of(load_spec(path), top)


def status_of(spec: LaunchSpec, top: int = 5) -> dict[str, Any]:
    """What `status` shows of the sweep: every trial's row, the counts, the `top` best trials (single objective
    only) and the Pareto front."""
    return status_and_rounds(spec, top)[0]


def status_and_rounds(spec: LaunchSpec, top: int = 5) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """`status_of`, and each trial's own finished rounds by trial id (what its row and the front were made of)."""
    experiment_dir = spec.experiment_dir
    sweep = spec.sweep
    metrics, modes = objective_metrics(sweep.objective)
    warnings: list[str] = []
    rows = trial_rows(experiment_dir, warnings)
    records_of = {row["trial_id"]: trial_records(spec, row, warnings) for row in rows}
    for row in rows:
        catch_up(spec, row, records_of[row["trial_id"]])
        # ended before its last round: only a scheduler (ASHA) ends a trial so
        row["stopped_early"] = row["state"] == "TERMINATED" and row["rounds_done"] < spec.rounds_of(row["params"])
        if row["state"] == "PENDING" and row["rounds_done"] > 0:
            row["state"] = IN_PROGRESS
    status: dict[str, Any] = {
        "name": sweep.name, "experiment_dir": experiment_dir, "objective": sweep.objective.name,
        "metric": metrics, "mode": modes, "num_samples": sweep.search.num_samples, "trials": rows,
        "warnings": warnings,
        "counts": {state: sum(r["state"] == state for r in rows) for state in sorted({r["state"] for r in rows})},
    }
    if len(metrics) == 1:
        # only trials that finished all their rounds: a running value is not a result yet
        scored = [r for r in rows if r["rounds_done"] >= spec.rounds_of(r["params"])
                  and isinstance(r["objective"], int | float) and not math.isnan(r["objective"])]
        scored.sort(key=lambda r: r["objective"], reverse=modes[0] == "max")
        status["best"] = scored[:top]
    status["pareto"] = pareto_front([point for row in rows for point in round_points(row, records_of[row["trial_id"]])])
    return status, records_of


def catch_up(spec: LaunchSpec, row: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """A trial that has not finished shows the rounds its engine has saved, where Tune's snapshot (seconds behind
    the trials) has fewer: after a kill or Ctrl+C, or while it runs. Its objective is recomputed from them."""
    if row["state"] == "TERMINATED" or len(records) <= row["rounds_done"]:
        return
    last = records[-1]
    row.update(rounds_done=len(records), density=last["density"], val_acc=last["val_acc"],
               test_acc=last.get("test_acc"))
    if len(objective_metrics(spec.sweep.objective)[0]) == 1:
        final = len(records) == spec.rounds_of(row["params"])
        row["objective"] = objective_value(records, spec.sweep.objective, final)

"""`status` reads Tune's snapshot, which lags the trials by seconds: an unfinished trial's row catches up with the
rounds its engine saved (the SIGKILL tests in test_sweep_resume.py see the lag only when the kill lands inside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lth_sweep.sweep.launch import prepare_launch
from lth_sweep.sweep.schema import load_sweep
from lth_sweep.sweep.status import catch_up

QUICKSTART = Path(__file__).parents[1] / "sweeps" / "quickstart.yaml"  # 5 rounds, matching_density, tolerance 0.01


def record(round_index: int, density: float, val_acc: float) -> dict[str, Any]:
    return {"round": round_index, "density": density, "val_acc": val_acc, "test_acc": val_acc - 0.01}


RECORDS = [record(0, 1.0, 0.70), record(1, 0.7, 0.705), record(2, 0.49, 0.695), record(3, 0.343, 0.65)]


def row(state: str, rounds_done: int) -> dict[str, Any]:
    """A row as Tune's snapshot gave it: its last result after round 1."""
    return {"trial_id": "t1", "state": state, "params": {}, "config_hash": "abc", "rounds_done": rounds_done,
            "density": 0.7, "val_acc": 0.705, "test_acc": 0.695, "objective": 0.7}


def test_an_unfinished_trial_shows_the_rounds_its_engine_saved(tmp_path: Path) -> None:
    sweep, experiment = load_sweep(QUICKSTART, {})
    spec = prepare_launch(sweep, experiment, str(tmp_path), "imp")
    behind = row("IN_PROGRESS", 2)
    catch_up(spec, behind, RECORDS)
    # round 2 is within 0.01 of the dense 0.70, round 3 is not: the objective is round 2's density
    assert behind == {**row("IN_PROGRESS", 4), "density": 0.343, "val_acc": 0.65, "test_acc": 0.64, "objective": 0.49}
    ended = row("TERMINATED", 2)  # ASHA's stop: the trial's own rounds are those Tune recorded
    catch_up(spec, ended, RECORDS)
    assert ended == row("TERMINATED", 2)
    level = row("RUNNING", 4)
    catch_up(spec, level, RECORDS)
    assert level == row("RUNNING", 4)

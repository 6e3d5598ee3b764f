"""Extending a finished trial: `prune.rounds` is not part of the config hash, so `lth-sweep run --set
prune.rounds=N` on a finished trial's --out continues it (real torch, the CLI as a subprocess)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult, read_rounds

from lth_sweep.checkpoint import load_torch
from lth_sweep.config import ExperimentConfig
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.lottery import Trial, masks_of_round

TIMING = ("seconds", "samples_per_s")  # the only values that differ between two runs of a round

CliRunner = Callable[..., CliResult]


def science(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, make_config: Callable[..., ExperimentConfig],
             mnist1d: DatasetSplits) -> Path:
    """The reference: 4 rounds in one go (late rewinding, so the extension must also restore the rewind point)."""
    out = tmp_path_factory.mktemp("straight")
    Trial(make_config({"prune.rounds": 4, "rewind.iteration": 15}), out, data=mnist1d).run()
    return out


def test_more_rounds_continue_a_finished_trial(run_cli: CliRunner, write_config: Callable[..., Path],
                                              make_raw: Callable[..., dict[str, Any]], tmp_path: Path,
                                              straight: Path) -> None:
    experiment = write_config(make_raw({"rewind.iteration": 15}))
    out = tmp_path / "trial"
    first = run_cli("run", experiment, "--set", "prune.rounds=2", "--out", out)
    assert first.returncode == 0, first.stderr
    two_rounds = read_rounds(out)
    assert [r["round"] for r in two_rounds] == [0, 1]
    rewind_before = (out / "rewind.pt").read_bytes()

    extended = run_cli("run", experiment, "--set", "prune.rounds=4", "--out", out)
    assert extended.returncode == 0, extended.stderr
    assert "resuming after round 1" in extended.stdout
    four_rounds = read_rounds(out)
    assert four_rounds[:2] == two_rounds, "the finished rounds must be kept as they were, not recomputed"
    assert (out / "rewind.pt").read_bytes() == rewind_before
    assert science(four_rounds) == science(read_rounds(straight))
    state, reference = load_torch(out / "state.pt"), load_torch(straight / "state.pt")
    for r in range(5):  # every round's masks, and those of a fifth round that nobody trained yet
        for name, mask in masks_of_round(reference["pruned_at"], r).items():
            assert (masks_of_round(state["pruned_at"], r)[name] == mask).all(), (r, name)

    shorter = run_cli("run", experiment, "--set", "prune.rounds=3", "--out", out)
    assert shorter.returncode == 0, shorter.stderr
    rows = [line for line in shorter.stdout.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"], ["3"])]
    assert [row.split()[0] for row in rows] == ["0", "1", "2"], "a shorter run reports its first rounds"
    assert read_rounds(out) == four_rounds, "and leaves the trial as it is"
    assert shorter.stdout.splitlines()[-1] == f"# nothing to train: its rounds were in {out / 'rounds.jsonl'} already"


def test_a_shorter_config_sees_the_first_rounds(make_config: Callable[..., ExperimentConfig],
                                                mnist1d: DatasetSplits, straight: Path) -> None:
    """What the sweep's trainable relies on: `records()` and `run()` give the config's rounds only."""
    trial = Trial(make_config({"prune.rounds": 2, "rewind.iteration": 15}), straight, data=mnist1d)
    assert [r["round"] for r in trial.records()] == [0, 1]
    assert trial.run() == trial.records()
    assert len(read_rounds(straight)) == 4

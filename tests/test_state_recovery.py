"""A truncated engine state is recovered, not fatal: the trial continues from the newest intact copy (its own
state.pt, else the newest intact Tune checkpoint, else it starts the config over) and says which in one line.

The unit tests use real engine states of the tiny MNIST-1D trial, snapshotted after each round; the sweep test
breaks a real sweep's state and resumes it.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sweep_helpers as h
import torch

from lth_sweep import checkpoint
from lth_sweep.engine.lottery import Trial
from lth_sweep.engine.recovery import Candidate, adopt, describe, newest_intact, saved_progress, set_aside
from lth_sweep.errors import CorruptFile

ROUNDS = 3


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory, make_config, mnist1d) -> dict[int, Path]:
    """{rounds done: a copy of the trial folder right after that round was saved} for a 3-round trial."""
    base = tmp_path_factory.mktemp("snapshots")
    live = base / "live"
    copies: dict[int, Path] = {}

    def snapshot(record: dict[str, Any]) -> None:
        copies[record["round"] + 1] = Path(shutil.copytree(live, base / f"after_round_{record['round']}"))

    Trial(make_config({"prune.rounds": ROUNDS}), live, on_round=snapshot, data=mnist1d).run()
    copies[0] = live  # the finished folder itself, for reference records
    return copies


def copy_of(source: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def test_progress_orders_rounds_phases_and_iterations(tmp_path: Path, snapshots: dict[int, Path]) -> None:
    assert saved_progress(snapshots[1]) == (1, 0, -1) and saved_progress(snapshots[2]) == (2, 0, -1)
    assert saved_progress(tmp_path) is None, "a folder without state.pt holds no state"
    for name, state, expected in [("mid", {"round": 1, "phase": "ticket", "iteration": 50}, (1, 0, 50)),
                                  ("control", {"round": 1, "phase": "control", "iteration": None}, (1, 1, -1))]:
        (tmp_path / name).mkdir()
        torch.save(state, tmp_path / name / "state.pt")
        assert saved_progress(tmp_path / name) == expected
    assert (1, 0, -1) < (1, 0, 50) < (1, 1, -1) < (2, 0, -1)


def test_the_engine_state_wins_when_it_is_intact_and_newest(snapshots: dict[int, Path]) -> None:
    engine = Candidate("the engine state", snapshots[2])
    choice = newest_intact([[engine], [Candidate("ckpt 2", snapshots[2]), Candidate("ckpt 1", snapshots[1])]])
    assert choice.chosen is engine and choice.unreadable == ()
    assert describe(choice, engine.label) is None, "nothing unusual, nothing to say"


def test_a_checkpoint_ahead_of_the_engine_state_is_used(snapshots: dict[int, Path]) -> None:
    engine = Candidate("the engine state", snapshots[1])
    choice = newest_intact([[engine], [Candidate("ckpt 2", snapshots[2])]])
    assert choice.chosen.label == "ckpt 2" and choice.progress == (2, 0, -1)


def test_a_truncated_engine_state_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path,
                                                                           snapshots: dict[int, Path]) -> None:
    engine_dir = copy_of(snapshots[3], tmp_path, "engine")
    newest = copy_of(snapshots[2], tmp_path, "checkpoint_000001")
    broken = truncate(engine_dir / "state.pt"), truncate(newest / "state.pt")
    engine = Candidate("the engine state", engine_dir)
    choice = newest_intact([[engine], [Candidate("ckpt 2", newest), Candidate("ckpt 1", snapshots[1])]])
    assert choice.chosen.label == "ckpt 1" and choice.progress == (1, 0, -1)
    assert [err.path for _, err in choice.unreadable] == list(broken)
    line = describe(choice, engine.label)
    assert line is not None and "\n" not in line
    assert "state.pt of the engine state is unreadable" in line and "state.pt of ckpt 2 is unreadable" in line
    assert line.endswith("continuing from ckpt 1 (1 round done)"), line


def test_a_corrupt_rewind_point_makes_a_copy_unreadable(tmp_path: Path, snapshots: dict[int, Path]) -> None:
    engine_dir = copy_of(snapshots[2], tmp_path, "engine")
    truncate(engine_dir / "rewind.pt")
    choice = newest_intact([[Candidate("the engine state", engine_dir)], [Candidate("ckpt 1", snapshots[1])]])
    assert choice.chosen.label == "ckpt 1"
    assert [err.path.name for _, err in choice.unreadable] == ["rewind.pt"]


def test_a_torch_file_that_is_not_an_engine_state_is_unreadable(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(CorruptFile, match="not an engine state"):
        saved_progress(tmp_path)


def test_older_checkpoints_are_not_read_once_a_newer_one_is_intact(snapshots: dict[int, Path]) -> None:
    opened: list[str] = []

    def checkpoints() -> Iterator[Candidate]:
        for rounds in (2, 1):
            opened.append(f"ckpt {rounds}")  # a remote checkpoint is downloaded here
            yield Candidate(f"ckpt {rounds}", snapshots[rounds])

    choice = newest_intact([[Candidate("the engine state", snapshots[1])], checkpoints()])
    assert choice.chosen.label == "ckpt 2" and opened == ["ckpt 2"]


def test_no_intact_copy_starts_over_with_the_broken_files_set_aside(tmp_path: Path, snapshots: dict[int, Path],
                                                                    make_config, mnist1d) -> None:
    engine_dir = copy_of(snapshots[2], tmp_path, "engine")
    tune_copy = copy_of(snapshots[1], tmp_path, "checkpoint_000000")
    truncate(engine_dir / "state.pt")
    truncate(tune_copy / "state.pt")
    engine = Candidate("the engine state", engine_dir)
    choice = newest_intact([[engine], [Candidate("ckpt 1", tune_copy)]])
    assert choice.chosen is None and len(choice.unreadable) == 2
    assert "starts over" in describe(choice, engine.label)
    assert set_aside(choice, engine_dir) == [engine_dir / "state.pt.corrupt"]
    assert (tune_copy / "state.pt").exists(), "only the engine's own files are moved"
    records = Trial(make_config({"prune.rounds": ROUNDS}), engine_dir, data=mnist1d).run()
    assert [r["val_acc"] for r in records] == [r["val_acc"] for r in h.read_jsonl(snapshots[0] / "rounds.jsonl")]


def test_adopting_a_checkpoint_resumes_to_the_uninterrupted_records(tmp_path: Path, snapshots: dict[int, Path],
                                                                   make_config, mnist1d) -> None:
    engine_dir = copy_of(snapshots[3], tmp_path, "engine")
    truncate(engine_dir / "state.pt")
    adopt(snapshots[1], engine_dir)
    assert saved_progress(engine_dir) == (1, 0, -1)
    assert not list(engine_dir.glob(".*.tmp"))
    records = Trial(make_config({"prune.rounds": ROUNDS}), engine_dir, data=mnist1d).run()
    reference = h.read_jsonl(snapshots[0] / "rounds.jsonl")
    drop = ("seconds", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in records] == \
        [{k: v for k, v in r.items() if k not in drop} for r in reference]


def test_a_state_is_fsynced_before_its_rename_and_the_folder_after(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous state.pt stays until the new one is on disk; the rename itself is made durable."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"rename to {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint.save_torch(tmp_path / "state.pt", {"round": 1})
    assert events == ["fsync file", "rename to state.pt", "fsync folder"]


# ------------------------------------------------------------------------------------ a real sweep


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_recovers_truncated_engine_states(tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    """Two trials fail (injected) after their second round. Then trial A's engine state.pt is truncated (its
    Tune checkpoints are intact) and trial B's engine state.pt and all its Tune checkpoints are. `resume`
    finishes both: A from its newest Tune checkpoint without training its rounds again, B from scratch; each
    says so in one line. Before: every resume failed on the same truncated file."""
    tree = h.sweep_tree(data_root, epochs=3, rounds=ROUNDS, num_samples=2, max_concurrent=2, max_failures=0)
    sweep = h.launch_sweep(tree, tmp_path, ray_tmp, timeout=300, **{h.FAIL_ONCE_ENV: "1"})
    assert sweep.launch.returncode == 1, sweep.launch.explain()
    trials = sorted(h.status_json(sweep.dir, sweep.cwd, sweep.env)["trials"], key=lambda t: t["trial_id"])
    assert [t["state"] for t in trials] == ["ERROR", "ERROR"], trials
    (a, hash_a), (b, hash_b) = [(t["trial_id"], t["config_hash"]) for t in trials]
    truncate(sweep.dir / "by_config" / hash_a / "engine" / "state.pt")
    truncate(sweep.dir / "by_config" / hash_b / "engine" / "state.pt")
    b_checkpoints = sorted((sweep.dir / f"trial_{b}").glob("checkpoint_*/state.pt"))
    assert len(b_checkpoints) >= 1 and len(list((sweep.dir / f"trial_{a}").glob("checkpoint_*"))) >= 1
    for path in b_checkpoints:
        truncate(path)

    resume = h.run_cli("resume", sweep.dir, cwd=sweep.cwd, env=sweep.env, timeout=300)
    (tmp_path / "resume.log").write_text(resume.explain())
    assert resume.returncode == 0, resume.explain()
    status = h.status_json(sweep.dir, sweep.cwd, sweep.env)
    assert [(t["state"], t["rounds_done"]) for t in status["trials"]] == [("TERMINATED", ROUNDS)] * 2, status

    output = resume.stdout + resume.stderr + "".join(p.read_text() for p in sweep.dir.glob("*.log"))
    lines = {config: [line for line in output.splitlines() if f"config {config}:" in line]
             for config in (hash_a, hash_b)}
    assert len(lines[hash_a]) == 1 and "continuing from Tune checkpoint" in lines[hash_a][0], output[-4000:]
    assert "state.pt of the engine state in" in lines[hash_a][0] and "is unreadable" in lines[hash_a][0]
    assert len(lines[hash_b]) == 1 and "starts over" in lines[hash_b][0], output[-4000:]
    assert (sweep.dir / "by_config" / hash_b / "engine" / "state.pt.corrupt").exists()

    trained = Counter((line["config_hash"], line["round"]) for line in h.ledger(sweep.dir))
    assert [trained[(hash_a, r)] for r in range(ROUNDS)] == [1, 1, 1], "A's two rounds were not trained again"
    assert [trained[(hash_b, r)] for r in range(ROUNDS)] == [2, 2, 1], "B started over"
    for config in (hash_a, hash_b):
        assert [r["round"] for r in h.engine_rounds(sweep.dir, config)] == list(range(ROUNDS))

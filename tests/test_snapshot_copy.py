"""The whole copy of Tune's snapshot that the driver keeps (`SnapshotKeeper`) and what `repair` does with it, on
real files: a staging folder laid out as Tune's, a sweep folder with Tune's file names. The end-to-end cases (a
finished sweep whose snapshot is cut short, a killed packed sweep resumed from one) are in test_sweep.py and
test_sweep_resume.py."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
from test_failures import tmpfs

from lth_sweep import storage
from lth_sweep.sweep.snapshot import COPY_NAME, SnapshotKeeper, first_unreadable, repair

OLD, NEW = "2026-12-01_10-00-00", "2026-12-03_09-30-00"


def write_session(folder: Path, session: str, trials: int) -> dict[str, bytes]:
    """A session's snapshot files as Tune names and stores them; returns them by name."""
    files = {f"experiment_state-{session}.json": json.dumps({"trial_data": [[str(i), {}] for i in range(trials)]})
             .encode(), f"search_gen_state-{session}.json": pickle.dumps({"counter": trials}),
             f"searcher-state-{session}.pkl": pickle.dumps({"study": session})}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def copied(sweep: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(sweep / COPY_NAME) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_keeper_copies_the_newest_session_whole_and_only_when_it_changed(tmp_path: Path) -> None:
    staging, sweep = tmp_path / "driver_artifacts", tmp_path / "imp"
    write_session(staging, OLD, 2)  # a resumed session's staging folder holds the earlier session's files too
    (staging / "trial_x").mkdir()
    newest = write_session(staging, NEW, 3)
    keeper = SnapshotKeeper(str(sweep), warn=lambda line: None)
    keeper.keep(str(staging))
    assert copied(sweep) == newest
    (sweep / COPY_NAME).unlink()
    keeper.keep(str(staging))
    assert not (sweep / COPY_NAME).exists(), "an unchanged snapshot is not written again"
    newest = write_session(staging, NEW, 4)
    keeper.keep(str(staging))
    assert copied(sweep) == newest


def test_a_copy_that_cannot_be_written_warns_once_and_the_sweep_runs_on(tmp_path: Path) -> None:
    staging = tmp_path / "driver_artifacts"
    staging.mkdir()  # a snapshot that does not fit the disk even compressed
    (staging / f"experiment_state-{NEW}.json").write_text(json.dumps({"trial_data": os.urandom(40_000).hex()}))
    warnings: list[str] = []
    with tmpfs(tmp_path / "small", "16k") as small:
        keeper = SnapshotKeeper(str(small / "imp"), warn=warnings.append)
        keeper.keep(str(staging))
        keeper.kept = None  # as after a new snapshot that cannot be written either
        keeper.keep(str(staging))
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"lth-sweep: warning: {small / 'imp' / COPY_NAME}: could not be written (no "
                                      "space left on device)"), warnings
        assert not (small / "imp" / COPY_NAME).exists()


def test_repair_puts_the_copy_back_only_when_a_file_of_tunes_cannot_be_read(tmp_path: Path) -> None:
    sweep, staging = tmp_path / "imp", tmp_path / "driver_artifacts"
    whole = write_session(staging, OLD, 2)
    (staging / f"callback-states-{OLD}.pkl").write_bytes(pickle.dumps({"a callback": 1}))  # kept, not checked
    whole[f"callback-states-{OLD}.pkl"] = pickle.dumps({"a callback": 1})
    SnapshotKeeper(str(sweep), warn=lambda line: None).keep(str(staging))
    write_session(sweep, OLD, 2)
    assert repair(str(sweep)) is None, "nothing to repair"
    state = sweep / f"experiment_state-{OLD}.json"
    state.write_bytes(whole[state.name][:10])
    (sweep / f"searcher-state-{OLD}.pkl").unlink()  # not written yet by the copy that the kill cut short
    line = repair(str(sweep))
    assert line is not None and line.startswith(f"Tune's snapshot file {state.name} cannot be read"), line
    assert {name: (sweep / name).read_bytes() for name in whole} == whole
    assert first_unreadable(str(sweep)) is None


def test_without_a_readable_copy_repair_leaves_the_damage_for_resume_to_name(tmp_path: Path) -> None:
    sweep = tmp_path / "imp"
    write_session(sweep, OLD, 2)
    state = sweep / f"experiment_state-{OLD}.json"
    state.write_bytes(b'{"trial_d')
    assert repair(str(sweep)) is None, "no copy"
    (sweep / COPY_NAME).write_bytes(b"PK\x03\x04 cut short")
    assert repair(str(sweep)) is None, "a damaged copy"
    assert state.read_bytes() == b'{"trial_d'
    assert first_unreadable(str(sweep)).name == state.name


def test_repair_puts_back_a_session_whose_snapshot_never_reached_storage(tmp_path: Path) -> None:
    """Tune uploads a snapshot after the step that saved it, and the keeper copies it at that step's end: a kill
    in between leaves storage without any file of the session (its first snapshot), which `Tuner.restore` cannot
    start from (tuner.pkl alone holds no search space), or with an earlier session's only."""
    sweep, staging = tmp_path / "imp", tmp_path / "driver_artifacts"
    whole = write_session(staging, NEW, 3)
    SnapshotKeeper(str(sweep), warn=lambda line: None).keep(str(staging))
    (sweep / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    line = repair(str(sweep))
    assert line is not None and line.startswith(f"Tune's snapshot of session {NEW} is not in storage"), line
    assert {name: (sweep / name).read_bytes() for name in whole} == whole
    assert repair(str(sweep)) is None, "repaired"
    for name in whole:
        (sweep / name).unlink()
    earlier = write_session(sweep, OLD, 2)  # a resumed session killed before its first upload
    assert repair(str(sweep)) is not None
    assert {name: (sweep / name).read_bytes() for name in [*whole, *earlier]} == {**whole, **earlier}


def test_repair_leaves_a_storage_whose_snapshot_is_as_new_as_the_copy_or_newer(tmp_path: Path) -> None:
    sweep, staging = tmp_path / "imp", tmp_path / "driver_artifacts"
    write_session(staging, OLD, 2)
    SnapshotKeeper(str(sweep), warn=lambda line: None).keep(str(staging))
    newer = write_session(sweep, NEW, 4)  # a later session whose copy could not be written (a full disk)
    assert repair(str(sweep)) is None
    assert {name: (sweep / name).read_bytes() for name in newer} == newer
    assert not any(name.startswith("experiment_state-" + OLD) for name in os.listdir(sweep))


def test_repair_writes_the_experiment_snapshot_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill during the repair must leave the storage without this session's experiment snapshot (so that the
    next `resume` repairs again), never with it beside an earlier session's searcher state. The writes go through
    the real `storage.write_bytes`; the wrapper only records their order."""
    sweep, staging = tmp_path / "imp", tmp_path / "driver_artifacts"
    write_session(staging, NEW, 3)
    SnapshotKeeper(str(sweep), warn=lambda line: None).keep(str(staging))
    write_session(sweep, OLD, 2)
    written: list[str] = []
    real = storage.write_bytes

    def recording(path: str, data: bytes) -> None:
        written.append(Path(path).name)
        real(path, data)

    monkeypatch.setattr(storage, "write_bytes", recording)
    assert repair(str(sweep)) is not None
    assert len(written) == 3 and written[-1] == f"experiment_state-{NEW}.json", written

"""Files and folders we create honour the umask (0644 and 0755 under the usual 022), so colleagues on a shared
disk can read the results; under 077 they stay private. Before: every atomically written file was 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lth_sweep import checkpoint, storage
from lth_sweep.engine.lottery import Trial


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_modes(root: Path, umask: int) -> None:
    """Every file under `root` is 0666 less the umask, every folder 0777 less the umask."""
    paths = [root, *root.rglob("*")]
    assert len(paths) > 1
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode(path) == expected, f"{path}: {oct(mode(path))}, expected {oct(expected)} under umask {oct(umask)}"


def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int) -> None:
    checkpoint.write_text(tmp_path / "out" / "a.txt", "text")
    checkpoint.save_torch(tmp_path / "out" / "b.pt", {"x": 1})
    checkpoint.copy_file(tmp_path / "out" / "a.txt", tmp_path / "out" / "c.txt")
    assert_modes(tmp_path / "out", umask)


def test_storage_writes_and_copies_honour_the_umask(tmp_path: Path, umask: int) -> None:
    storage.write_text(str(tmp_path / "sweep" / "sweep.json"), "{}")
    with storage.exclusive(tmp_path / "sweep" / "by_config" / "abc"):
        pass
    storage.copy_dir(str(tmp_path / "sweep"), str(tmp_path / "copy" / "sweep"))
    assert_modes(tmp_path / "sweep", umask)
    assert_modes(tmp_path / "copy", umask)


def test_a_trial_folder_honours_the_umask(tmp_path: Path, umask: int, make_config, mnist1d) -> None:
    Trial(make_config({"prune.rounds": 2}), tmp_path / "runs" / "trial", data=mnist1d).run()
    assert {p.name for p in (tmp_path / "runs" / "trial").iterdir()} >= {"state.pt", "rewind.pt", "rounds.jsonl",
                                                                         "config.yaml"}
    assert_modes(tmp_path / "runs", umask)

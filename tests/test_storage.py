"""Sweep storage helpers: URI handling (no S3 server here: only the string forms are checked for URIs)
and the real local-folder paths through pyarrow.fs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lth_sweep import storage


def test_uri_join_keeps_the_query_at_the_end() -> None:
    assert storage.join("s3://bucket/sweeps?region=eu-west-1", "quick", "sweep.json") == \
        "s3://bucket/sweeps/quick/sweep.json?region=eu-west-1"
    assert storage.normalize("gs://bucket/sweeps/") == "gs://bucket/sweeps"
    assert storage.normalize("s3://b/p/?scheme=http") == "s3://b/p?scheme=http"


def test_local_paths_are_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("runs/sweeps") == str(tmp_path / "runs" / "sweeps")
    assert storage.normalize("file://" + str(tmp_path)) == str(tmp_path)
    assert not storage.is_uri(str(tmp_path)) and storage.is_uri("s3://b/p")


def test_copy_dir_and_text_round_trip_through_pyarrow(tmp_path: Path) -> None:
    source = tmp_path / "engine"
    (source / "sub").mkdir(parents=True)
    (source / "state.pt").write_bytes(b"\x00\x01state")
    (source / "sub" / "rounds.jsonl").write_text('{"round": 0}\n')
    storage.copy_dir(str(source), str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "state.pt").read_bytes() == b"\x00\x01state"
    assert (tmp_path / "copy" / "sub" / "rounds.jsonl").read_text() == '{"round": 0}\n'
    storage.write_text(str(tmp_path / "x" / "sweep.json"), "{}")
    assert storage.read_text(str(tmp_path / "x" / "sweep.json")) == "{}"
    assert storage.exists(str(tmp_path / "x")) and not storage.exists(str(tmp_path / "nothing"))


def test_exclusive_makes_a_second_holder_wait(tmp_path: Path) -> None:
    events: list[str] = []

    def second() -> None:
        with storage.exclusive(tmp_path / "cfg"):
            events.append("second")

    with storage.exclusive(tmp_path / "cfg"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        events.append("first done")
    waiter.join(timeout=10)
    assert events == ["first done", "second"]

"""Storage on an object store, piece by piece: our storage helpers, the per-round ledger and a trial's restore
against moto's S3 server (started by the test session); `gs://` URI handling and what Ray Tune gets for it
(no GCS server exists here: only the string forms and pyarrow's/Ray's own path resolution, which contact
no server, are checked); the multi-node storage guard; the printed `wandb sync` command."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import sweep_helpers as h
from conftest import CliResult, main_here
from s3_server import CREDENTIALS, S3Server

from lth_sweep import storage
from lth_sweep.engine.lottery import Trial
from lth_sweep.errors import RunFailure, UserError
from lth_sweep.sweep.fetch import fetch_sweep, wandb_sync_command
from lth_sweep.sweep.launch import check_storage_reaches_every_node, prepare_launch
from lth_sweep.sweep.schema import load_sweep
from lth_sweep.sweep.spec import LaunchSpec, save_spec
from lth_sweep.sweep.tracking import LOGGED_ROUNDS_FILE
from lth_sweep.sweep.trainable import (
    LEDGER_FILE,
    append_ledger,
    read_ledger,
    restore_engine_dir,
    restore_logged_rounds,
)


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The moto server, with its fake credentials in this process's environment (where pyarrow reads them)."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return s3


def make_spec(tmp_path: Path, data_root: Path, location: str, **top) -> LaunchSpec:
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", h.sweep_tree(data_root, rounds=2, num_samples=1, **top))
    return prepare_launch(*load_sweep(sweep_file), location, None)


# ------------------------------------------------------------------------------------ S3, through moto


def test_text_listing_and_folders_on_s3(s3_env: S3Server, tmp_path: Path) -> None:
    root = s3_env.uri("unit/texts")
    storage.write_text(storage.join(root, "a", "sweep.json"), '{"x": 1}')
    storage.write_text(storage.join(root, "b.txt"), "b")
    assert storage.read_text(storage.join(root, "a", "sweep.json")) == '{"x": 1}'
    assert storage.exists(storage.join(root, "a")) and not storage.exists(storage.join(root, "nothing"))
    assert storage.list_files(root) == ["a/sweep.json", "b.txt"]
    assert storage.list_files(storage.join(root, "nothing")) == []
    storage.copy_dir(root, str(tmp_path / "down"))
    assert (tmp_path / "down" / "a" / "sweep.json").read_text() == '{"x": 1}'


def test_a_snapshot_cut_short_in_a_bucket_is_put_back_from_the_kept_copy(s3_env: S3Server, tmp_path: Path) -> None:
    """`repair` on S3 (writes are PUTs, the later session is set aside by a move): as on a folder
    (test_snapshot_copy.py), the kept copy's files come back and the later session's file is renamed."""
    from test_snapshot_copy import OLD, write_session

    from lth_sweep.sweep.snapshot import SnapshotKeeper, first_unreadable, repair

    sweep = s3_env.uri("unit/snapshot/imp")
    whole = write_session(tmp_path / "staging", OLD, 2)
    SnapshotKeeper(sweep, warn=lambda line: None).keep(str(tmp_path / "staging"))
    state = f"experiment_state-{OLD}.json"
    for name, data in whole.items():
        storage.write_bytes(storage.join(sweep, name), data[:7] if name == state else data)
    storage.write_bytes(storage.join(sweep, "searcher-state-2999-01-01_00-00-00.pkl"), b"\x80")
    line = repair(sweep)
    assert line is not None and "set aside the later session's searcher-state-2999-01-01_00-00-00.pkl" in line, line
    assert {name: storage.read_bytes(storage.join(sweep, name)) for name in whole} == whole
    assert "searcher-state-2999-01-01_00-00-00.pkl.damaged" in storage.list_files(sweep)
    assert first_unreadable(sweep) is None


def test_a_session_whose_snapshot_never_reached_the_bucket_is_put_back(s3_env: S3Server, tmp_path: Path) -> None:
    """A kill before Tune's upload of a session's first snapshot began leaves the bucket without it (a listing,
    not a read, finds that out); `repair` puts the kept copy back and `has_snapshot` then sees it."""
    from test_snapshot_copy import NEW, write_session

    from lth_sweep.sweep.snapshot import SnapshotKeeper, has_snapshot, repair

    sweep = s3_env.uri("unit/snapshot/first")
    whole = write_session(tmp_path / "staging", NEW, 3)
    SnapshotKeeper(sweep, warn=lambda line: None).keep(str(tmp_path / "staging"))
    storage.write_bytes(storage.join(sweep, "tuner.pkl"), b"\x80\x04N.")
    assert not has_snapshot(storage.list_files(sweep))
    line = repair(sweep)
    assert line is not None and line.startswith(f"Tune's snapshot of session {NEW} is not in storage"), line
    assert {name: storage.read_bytes(storage.join(sweep, name)) for name in whole} == whole
    assert has_snapshot(storage.list_files(sweep)) and repair(sweep) is None


def test_uploader_sends_what_changed_with_the_trusted_file_last(s3_env: S3Server, tmp_path: Path) -> None:
    source = tmp_path / "engine"
    (source / "sub").mkdir(parents=True)
    for name in ("rounds.jsonl", "state.pt", "config.yaml", "sub/rewind.pt"):
        (source / name).write_text(name)
    (source / ".state.pt.x1.tmp").write_text("half written")  # an atomic write in progress
    (source / "latest").symlink_to(source / "sub")  # W&B's latest-run link
    uploader = storage.Uploader(source, s3_env.uri("unit/engine"), last=("rounds.jsonl",))
    assert uploader.upload() == ["config.yaml", "state.pt", "sub/rewind.pt", "rounds.jsonl"]
    assert s3_env.keys("unit/engine") == ["config.yaml", "rounds.jsonl", "state.pt", "sub/rewind.pt"]
    assert uploader.upload() == []
    (source / "state.pt").write_text("state, round 2")
    os.utime(source / "state.pt", ns=(1, 1))  # a different mtime even on a coarse clock
    (source / "rounds.jsonl").write_text("rounds.jsonl, round 2")
    assert uploader.upload() == ["state.pt", "rounds.jsonl"]
    assert storage.read_text(s3_env.uri("unit/engine/state.pt")) == "state, round 2"


def test_a_wandb_run_folder_goes_up_once_it_holds_its_run_file(s3_env: S3Server, tmp_path: Path) -> None:
    """W&B creates an offline run's folder before its .wandb file; the mirror holds the folder back until then,
    and then sends the .wandb file first: a copy without it, or one cut short by a kill before it, would make
    `wandb sync` of the bucket fail (the full suite once caught a killed trial's folder with logs only)."""
    from lth_sweep.sweep.trainable import wandb_uploader

    run = tmp_path / "wandb" / "wandb" / "offline-run-1-abc"
    (run / "files").mkdir(parents=True)
    (run / "files" / "config.yaml").write_text("x")
    (run / "logs").mkdir()
    (run / "logs" / "debug.log").write_text("log")
    (tmp_path / "wandb" / "logged_rounds.json").write_text("{}")
    uploader = wandb_uploader(tmp_path / "wandb", s3_env.uri("unit/wandb"))
    assert uploader.upload() == ["logged_rounds.json"]
    (run / "run-abc.wandb").write_text("records")
    assert uploader.upload() == ["wandb/offline-run-1-abc/run-abc.wandb", "wandb/offline-run-1-abc/files/config.yaml",
                                 "wandb/offline-run-1-abc/logs/debug.log"]


def test_the_ledger_is_one_object_per_round_on_s3(s3_env: S3Server) -> None:
    sweep = s3_env.uri("unit/ledger-sweep")
    append_ledger(sweep, "abc", 0, "t1", "node-a")
    append_ledger(sweep, "abc", 1, "t1", "node-a")
    append_ledger(sweep, "def", 0, "t2", "node-b")
    entries = read_ledger(sweep)
    assert [(e["config_hash"], e["round"], e["trial_id"], e["node_id"]) for e in entries] == \
        [("abc", 0, "t1", "node-a"), ("abc", 1, "t1", "node-a"), ("def", 0, "t2", "node-b")]
    keys = s3_env.keys("unit/ledger-sweep")
    assert len(keys) == 3 and all(k.startswith("ledger/") and k.endswith(".json") for k in keys)


def test_the_local_ledger_is_one_file(tmp_path: Path) -> None:
    append_ledger(str(tmp_path), "abc", 0, "t1", "node-a")
    append_ledger(str(tmp_path), "abc", 1, "t1", "node-a")
    assert [e["round"] for e in read_ledger(str(tmp_path))] == [0, 1]
    assert len((tmp_path / LEDGER_FILE).read_text().splitlines()) == 2


def test_a_trial_on_a_fresh_node_restores_its_rounds_from_the_bucket(s3_env: S3Server, tmp_path: Path,
                                                                    data_root: Path, make_config,
                                                                    mnist1d) -> None:
    """A node with an empty disk gets the config's engine state (a real one: the restore keeps only intact
    states) and which rounds reached W&B."""
    spec = make_spec(tmp_path, data_root, s3_env.uri("unit/restore"))
    engine = tmp_path / "first-node" / "engine"
    Trial(make_config({"prune.rounds": 2}), engine, data=mnist1d).run()
    remote = storage.join(spec.experiment_dir, "by_config", "abc")
    storage.copy_dir(str(engine), storage.join(remote, "engine"))
    storage.write_text(storage.join(remote, "wandb", LOGGED_ROUNDS_FILE), json.dumps({"round": 1}))
    root = tmp_path / "fresh-node" / "abc"
    reported, line = restore_engine_dir(spec, "abc", root / "engine", checkpoint=None)
    assert reported == 0 and line is not None and "copy at" in line  # Tune has none of them; the bucket's copy
    restore_logged_rounds(spec, "abc", root)
    assert (root / "engine" / "state.pt").read_bytes() == (engine / "state.pt").read_bytes()
    assert len((root / "engine" / "rounds.jsonl").read_text().splitlines()) == 2
    assert json.loads((root / "wandb" / LOGGED_ROUNDS_FILE).read_text()) == {"round": 1}


def test_fetch_wandb_copies_only_the_wandb_folders_there_are(s3_env: S3Server, tmp_path: Path) -> None:
    sweep = s3_env.uri("unit/fetch/imp")
    storage.write_text(storage.join(sweep, "sweep.json"), "{}")
    storage.write_text(storage.join(sweep, "by_config", "a", "engine", "state.pt"), "state")
    storage.write_text(storage.join(sweep, "by_config", "a", "wandb", "wandb", "offline-run-1-x", "run-x.wandb"), "w")
    storage.write_text(storage.join(sweep, "by_config", "b", "engine", "state.pt"), "state")  # W&B never ran
    runs = fetch_sweep(sweep, tmp_path / "out", wandb_only=True)
    assert runs == [tmp_path / "out" / "by_config" / "a" / "wandb" / "wandb" / "offline-run-1-x"]
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()) == \
        ["by_config/a/wandb/wandb/offline-run-1-x/run-x.wandb"]
    assert fetch_sweep(sweep, tmp_path / "all", wandb_only=False) == \
        [tmp_path / "all" / "by_config" / "a" / "wandb" / "wandb" / "offline-run-1-x"]
    assert (tmp_path / "all" / "by_config" / "b" / "engine" / "state.pt").read_text() == "state"


def test_fetch_wandb_of_a_sweep_without_offline_runs_says_so(tmp_path: Path, data_root: Path,
                                                              cli_here: Callable[..., CliResult]) -> None:
    """A sweep whose trials logged online (or had W&B disabled) has nothing for `fetch --wandb`: the command says
    that instead of reporting a copy to a folder it never made."""
    spec = make_spec(tmp_path, data_root, str(tmp_path / "sweeps"))
    save_spec(spec)
    storage.write_text(storage.join(spec.experiment_dir, "by_config", "a", "engine", "state.pt"), "state")
    fetched = cli_here("fetch", spec.experiment_dir, "--wandb", "--out", tmp_path / "out")
    assert fetched.returncode == 0 and "has no offline W&B runs" in fetched.stdout, fetched
    assert "nothing copied" in fetched.stdout, fetched
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ an endpoint that fails us


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """host:port of a server on loopback that accepts connections and never answers (a firewall, a hung proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept_forever() -> None:
        with contextlib.suppress(OSError):  # the server closed
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize("endpoint", ["silent", "refused"])
def test_storage_that_does_not_answer_is_one_line_naming_the_key(endpoint: str, silent_endpoint: str,
                                                                  tmp_path: Path, data_root: Path) -> None:
    """Before: `status` (and `resume`, `report`, `fetch`, `launch --storage`) at an endpoint that never answers, or
    at a port nobody listens on, ended in the SDK's error printed as an unexpected one (after ~100 s of its retries
    for the silent one, measured by hand). Now one request with pyarrow's standard retries comes first (~10 s): exit
    1, one line naming the key and what to check. No time is asserted here."""
    refused = socket.create_server(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nobody listens there now
    host_port = silent_endpoint if endpoint == "silent" else f"127.0.0.1:{port}"
    uri = f"s3://bucket/sweeps?endpoint_override={host_port}&scheme=http"
    env = h.cli_env(None, **CREDENTIALS)
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", h.sweep_tree(data_root, rounds=2, num_samples=1))
    for args, key in (("status", uri), "PATH"), (("launch", sweep_file, "--storage", uri), "--storage"):
        result = h.run_cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 1 and result.stdout == "", result.explain()
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"lth-sweep: error: {key}: s3://bucket/sweeps") and "the storage cannot be read (" \
            in line and "LTH_SWEEP_DEBUG" not in line, line


def test_a_bucket_whose_region_cannot_be_looked_up_is_one_line_naming_the_key(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An s3:// URI with no region and no endpoint: pyarrow asks AWS for the bucket's region while it builds the
    file system, and with no network (or a bucket name that is no host) that is an OSError, which was printed as an
    unexpected error naming neither PATH nor --storage. AWS cannot be reached from the tests, and whether its name
    resolves differs between machines, so `FileSystem.from_uri` is replaced by the error it raises here (seen by
    hand: curlCode 6, could not resolve host)."""
    class NoNetwork:
        @staticmethod
        def from_uri(uri: str) -> None:
            raise OSError(f"When resolving region for bucket '{uri.split('/')[2]}': AWS Error NETWORK_CONNECTION "
                          "during HeadBucket operation: curlCode: 6, Could not resolve hostname")

    monkeypatch.setattr(pafs, "FileSystem", NoNetwork)  # pyarrow's own type cannot be patched
    with pytest.raises(RunFailure) as err:
        storage.filesystem("s3://no-such-bucket/sweeps/imp", "PATH")
    assert str(err.value.path) == "PATH" and "the storage cannot be reached (When resolving region" in err.value.message
    result = main_here(capsys, "status", "s3://no-such-bucket/sweeps/imp")
    assert result.returncode == 1 and result.stdout == "", result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lth-sweep: error: PATH: s3://no-such-bucket/sweeps/imp") and "region=" in line, line


# ------------------------------------------------------------------------------------ gs:// (no server)


def test_gs_uris_keep_their_query_at_the_end() -> None:
    uri = "gs://bucket/sweeps/?project_id=p"
    assert storage.is_uri(uri) and storage.normalize(uri) == "gs://bucket/sweeps?project_id=p"
    assert storage.join("gs://bucket/sweeps?project_id=p", "imp", "by_config", "abc") == \
        "gs://bucket/sweeps/imp/by_config/abc?project_id=p"
    assert storage.join("gs://bucket/sweeps", "imp") == "gs://bucket/sweeps/imp"


def test_ray_tune_gets_the_parent_uri_and_the_sweep_name() -> None:
    """What build_tuner hands Ray Tune (`storage_path`, the run's `name`), resolved by Ray's own resolver
    to pyarrow's GCS/S3 filesystem and a path without scheme or query (constructing them contacts nothing)."""
    from ray.train._internal.storage import get_fs_and_path

    parent, name = storage.split_last("gs://bucket/sweeps/imp?project_id=p")
    assert (parent, name) == ("gs://bucket/sweeps?project_id=p", "imp")
    fs, path = get_fs_and_path(parent)
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/sweeps"
    assert storage.split_last("gs://bucket/imp") == ("gs://bucket", "imp")
    parent, name = storage.split_last("s3://b/p/imp?endpoint_override=http://127.0.0.1:9&scheme=http&region=us-east-1")
    fs, path = get_fs_and_path(parent)
    assert isinstance(fs, pafs.S3FileSystem) and path == "b/p" and name == "imp"
    assert storage.split_last("/data/sweeps/imp") == ("/data/sweeps", "imp")


# ------------------------------------------------------------------------------------ the multi-node guard


@pytest.mark.parametrize("location, shared, nodes, allowed", [
    ("local", False, 1, True),
    ("local", False, 3, False),
    ("local", True, 3, True),
    ("s3://bucket/sweeps", False, 3, True),
    ("gs://bucket/sweeps", False, 3, True),
])
def test_storage_guard(tmp_path: Path, data_root: Path, location: str, shared: bool, nodes: int,
                       allowed: bool) -> None:
    spec = make_spec(tmp_path, data_root, str(tmp_path / "storage"), storage_shared=shared)
    if location != "local":  # (prepare_launch would look for an existing sweep there: no server here)
        spec = spec.model_copy(update={"experiment_dir": storage.join(location, "imp")})
    if allowed:
        check_storage_reaches_every_node(spec, nodes)
        return
    with pytest.raises(UserError) as err:
        check_storage_reaches_every_node(spec, nodes)
    assert err.value.key == "--storage" and f"{nodes} nodes" in err.value.message
    assert all(word in err.value.message for word in ("s3://", "gs://", "--shared-storage", "storage_shared"))


# ------------------------------------------------------------------------------------ the sync hint


def test_the_sync_command_for_a_local_sweep_and_for_a_uri() -> None:
    assert wandb_sync_command("/data/my sweeps/imp", "imp") == \
        "wandb sync '/data/my sweeps/imp'/by_config/*/wandb/wandb/offline-run-*"
    uri = "s3://b/p/imp?endpoint_override=http://127.0.0.1:9&scheme=http"
    assert wandb_sync_command(uri, "imp") == (
        f"lth-sweep fetch '{uri}' --wandb --out ./imp-wandb && "
        "wandb sync ./imp-wandb/by_config/*/wandb/wandb/offline-run-*")

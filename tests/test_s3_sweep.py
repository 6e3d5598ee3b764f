"""A sweep whose storage is an S3 bucket (moto's S3 server on loopback, started by the test session): launched
with `--storage 's3://BUCKET/PREFIX?endpoint_override=...'`, its launch process group SIGKILLed mid-sweep, every
local temporary mirror deleted, then resumed from the URI alone. Every trial finishes with each round once, no
round is trained twice (the ledger is on the bucket too), each round reaches W&B once, and the printed
`wandb sync` hint works as printed; alone and packed two configs per trial (`search.pack: 2`). Real Ray,
Optuna, pyarrow, W&B offline; only S3 itself is moto's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h
from s3_server import CREDENTIALS, FAKE_SECRET, S3Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROUNDS, NUM_SAMPLES = 3, 3
NAME = "imp-s3"


class Interrupted(NamedTuple):
    uri: str  # the sweep: s3://BUCKET/PREFIX/imp-s3?endpoint_override=...
    prefix: str  # where in the bucket: sweeps-alone or sweeps-packed
    base: Path
    env: dict[str, str]
    ledger_at_kill: list[dict[str, Any]]
    mirrors_deleted: list[str]
    resume: h.Result
    local: Path  # a copy of the bucket's sweep folder, taken after the resume


def mid_trial(ledger: list[dict[str, Any]]) -> bool:
    return len(ledger) >= 2 and bool(h.part_way(ledger, ROUNDS))


@pytest.fixture(scope="module", params=[1, 2], ids=["alone", "packed"])
def interrupted(request: pytest.FixtureRequest, s3: S3Server, tmp_path_factory: pytest.TempPathFactory,
                data_root: Path, ray_tmp: Path) -> Interrupted:
    base = tmp_path_factory.mktemp("s3sweep")
    prefix = "sweeps-alone" if request.param == 1 else "sweeps-packed"
    mirrors = base / "tmp"  # the trials' TMPDIR: their local mirrors go to mirrors/lth_sweep/<name>/<hash>
    mirrors.mkdir()
    tree = h.sweep_tree(data_root, epochs=3, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=2)
    tree["search"]["pack"] = request.param
    sweep_file = h.write_sweep(base / f"{NAME}.yaml", tree)
    env = h.cli_env(ray_tmp, TMPDIR=str(mirrors), **CREDENTIALS)
    uri = s3.uri(f"{prefix}/{NAME}")
    with h.started("launch", sweep_file, "--storage", s3.uri(prefix), cwd=base, env=env,
                   log_path=base / "launch.log") as proc:
        h.poll(lambda: mid_trial(h.ledger(uri)) or proc.poll() is not None, timeout=240, interval=0.3,
               what="two rounds in the bucket's ledger, one trial part-way")
        assert proc.poll() is None, "the sweep ended before it could be killed:\n" + (base / "launch.log").read_text()
        h.kill_group(proc.pid)
        proc.wait(timeout=30)
        ledger_at_kill = h.ledger(uri)
    h.kill_marked()
    deleted = sorted(p.name for p in (mirrors / "lth_sweep" / NAME).iterdir())
    shutil.rmtree(mirrors / "lth_sweep")
    for config_hash in h.part_way(ledger_at_kill, ROUNDS):  # as if the node kept a killed pack trial's checkpoint
        h.leave_pack_checkpoint(mirrors / "lth_sweep" / NAME / config_hash, config_hash)
    elsewhere = base / "elsewhere"  # resume from another folder: nothing local is needed but the URI
    elsewhere.mkdir()
    resume = h.run_cli("resume", uri, cwd=elsewhere, env=env, timeout=300)
    (base / "resume.log").write_text(resume.explain())
    return Interrupted(uri, prefix, base, env, ledger_at_kill, deleted, resume,
                       s3.download(f"{prefix}/{NAME}", base / "copy"))


@pytest.fixture(scope="module")
def status(interrupted: Interrupted) -> dict[str, Any]:
    assert interrupted.resume.returncode == 0, interrupted.resume.explain()
    return h.status_json(interrupted.uri, interrupted.base, interrupted.env)


def test_the_kill_landed_mid_sweep_and_the_mirrors_were_deleted(interrupted: Interrupted) -> None:
    assert 2 <= len(interrupted.ledger_at_kill) < NUM_SAMPLES * ROUNDS
    assert interrupted.mirrors_deleted, "the trials kept no local mirror under TMPDIR/lth_sweep"


def test_a_config_whose_trial_ended_leaves_only_its_lock_on_the_node(interrupted: Interrupted,
                                                                      status: dict[str, Any]) -> None:
    """Once a config's trial ends with its files in the bucket, its node's mirror (engine state, W&B's files) is
    deleted but for the lock and W&B's logged-rounds mark: a node that trains hundreds of configs would keep every
    one's state, nor a pack checkpoint that a killed trial of the config left. The resume trained the configs whose
    folders are here; the other tests of this module check that nothing was lost (every round in the bucket's W&B
    runs once, none trained twice)."""
    mirrors = interrupted.base / "tmp" / "lth_sweep" / NAME
    hashes = {trial["config_hash"] for trial in status["trials"]}
    folders = [folder for folder in mirrors.iterdir() if folder.name in hashes]
    assert folders, "the resume trained no config on this node"
    left = {str(path.relative_to(folder)) for folder in folders for path in folder.rglob("*") if not path.is_dir()}
    assert left <= {".lock", "wandb/logged_rounds.json"}, sorted(left)


def test_the_sweep_lives_in_the_bucket(interrupted: Interrupted, s3: S3Server) -> None:
    keys = s3.keys(f"{interrupted.prefix}/{NAME}")
    assert "sweep.json" in keys
    assert any(k.startswith("ledger/") for k in keys) and "rounds_trained.jsonl" not in keys
    assert any(k.startswith("trial_") for k in keys)  # Tune's own state and checkpoints
    assert not (interrupted.base / "elsewhere").joinpath("runs").exists()


def test_resume_from_the_uri_finishes_every_trial(interrupted: Interrupted, status: dict[str, Any]) -> None:
    assert f"everything is under {interrupted.uri}" in interrupted.resume.stdout
    assert status["counts"] == {"TERMINATED": NUM_SAMPLES}
    assert all(trial["rounds_done"] == ROUNDS for trial in status["trials"]), status["trials"]
    h.assert_every_round_once(interrupted.local, status["trials"], ROUNDS)
    if interrupted.prefix == "sweeps-alone":  # once: the printed command quotes the URI (its & would fork)
        again = h.run_cli("resume", interrupted.uri, cwd=interrupted.base, env=interrupted.env, timeout=120)
        assert f"nothing to resume; see: lth-sweep status {shlex.quote(interrupted.uri)}" in again.stdout, \
            again.explain()


def test_no_round_was_trained_twice(interrupted: Interrupted, status: dict[str, Any]) -> None:
    ledger = h.ledger(interrupted.uri)
    pairs = Counter((line["config_hash"], line["round"]) for line in ledger)
    assert max(pairs.values()) == 1, [pair for pair, n in pairs.items() if n > 1]
    assert ledger[: len(interrupted.ledger_at_kill)] == interrupted.ledger_at_kill
    finished = {t["config_hash"] for t in status["trials"]}
    # The ledger records a round once it is trained and saved in the bucket. The only finished round it may
    # lack is one a trial had just saved when the SIGKILL came (a finished, saved round: not trained again).
    at_kill = Counter(line["config_hash"] for line in interrupted.ledger_at_kill)
    missing = {(c, r) for c in finished for r in range(ROUNDS)} - set(pairs)
    assert all(r == at_kill[c] for c, r in missing), (missing, at_kill)
    in_flight = {line["config_hash"] for line in interrupted.ledger_at_kill} - finished  # re-suggested elsewhere
    assert {c for c, _ in pairs} <= finished | in_flight


def test_every_round_reached_wandb_once(interrupted: Interrupted, status: dict[str, Any]) -> None:
    """The offline runs are in the bucket (mirrored after every round and at the end), including those of the
    killed trials; read in order as `wandb sync` does, every round is there exactly once."""
    for trial in status["trials"]:
        assert h.wandb_run_dirs(interrupted.local, trial["config_hash"]), trial
        rounds = h.wandb_rounds(interrupted.local, trial["config_hash"])
        assert rounds == list(range(ROUNDS)), (trial["config_hash"], rounds)


def test_the_printed_wandb_sync_command_works_as_printed(interrupted: Interrupted, status: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """Runs the printed line with bash. No W&B server exists here, so `wandb` on PATH is a stand-in that
    records the run folders it was given; `lth-sweep fetch` is the real command."""
    prefix = "W&B runs were written offline; upload them with: "
    line = next(li for li in interrupted.resume.stdout.splitlines() if li.startswith(prefix))
    command = line.removeprefix(prefix)
    assert command.startswith("lth-sweep fetch ") and "?" not in command.split("&&")[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wandb").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$WANDB_ARGS"\n')
    (bin_dir / "wandb").chmod(0o755)
    if shutil.which("lth-sweep") is None:  # CI installs the console script; a bare checkout may not have it
        (bin_dir / "lth-sweep").write_text(f'#!/bin/sh\nexec {sys.executable} -m lth_sweep.cli "$@"\n')
        (bin_dir / "lth-sweep").chmod(0o755)
    env = {**interrupted.env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_ARGS": str(tmp_path / "args")}
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[0] == "sync"
    synced = [Path(tmp_path, a).resolve() for a in args[1:]]
    assert all(p.name.startswith("offline-run-") and any(p.glob("*.wandb")) for p in synced), synced
    expected = {(t["config_hash"], d.name) for t in status["trials"]
                for d in h.wandb_run_dirs(interrupted.local, t["config_hash"])}
    assert {(p.parents[2].name, p.name) for p in synced} >= expected


def test_the_cloud_secret_is_in_no_file_ray_or_we_wrote(interrupted: Interrupted, ray_tmp: Path) -> None:
    """Tune copies AWS_* credentials from the driver's environment into every trial actor's runtime_env, which
    Ray writes to its logs; lth-sweep keeps them out (local workers inherit them, a cluster's nodes have their
    own). A byte-level grep of Ray's temp folder (its session logs), the launch's folder (the trials' TMPDIR and
    local mirrors) and the copy of the bucket."""
    secret = FAKE_SECRET.encode()
    found = [str(path) for root in (ray_tmp, interrupted.base, interrupted.local) for path in root.rglob("*")
             if path.is_file() and not path.is_symlink() and secret in path.read_bytes()]
    assert found == []


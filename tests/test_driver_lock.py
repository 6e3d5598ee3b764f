"""One driver per sweep. A real sweep (subprocess, Ray local): while it runs, `lth-sweep resume` on it exits 2
naming the driver's pid and host and starts no Ray; after the first driver's process group is SIGKILLed, the
kernel has dropped its lock and `resume` takes the sweep over and finishes it.

The lease that guards URI storage is tested through pyarrow's LocalFileSystem (an S3 test server comes
later): the same pyarrow FileSystem calls an object store gets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import sweep_helpers as h

from lth_sweep.errors import UserError
from lth_sweep.sweep.lock import LEASE_FILE, LOCK_FILE, Lease, LocalLock, check_not_held, driver_lock, held_error

NUM_SAMPLES, ROUNDS = 2, 3


@pytest.fixture()
def second_ray_tmp() -> Iterator[Path]:
    """The refused driver's own Ray folder (short: Ray's socket paths): it must stay empty."""
    yield from h.private_ray_tmp()


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_second_driver_is_refused_and_a_killed_one_is_taken_over(tmp_path: Path, data_root: Path, ray_tmp: Path,
                                                                 second_ray_tmp: Path) -> None:
    tree = h.sweep_tree(data_root, epochs=40, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=1)
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", tree)
    sweep_dir = tmp_path / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    second_ray = second_ray_tmp
    with h.started("launch", sweep_file, "--storage", tmp_path / "storage", cwd=tmp_path, env=env,
                   log_path=tmp_path / "launch.log") as first:
        h.poll(lambda: h.ledger(sweep_dir) or first.poll() is not None, timeout=300, interval=0.1,
               what="the first driver's first round")
        assert first.poll() is None, "the sweep ended too soon:\n" + (tmp_path / "launch.log").read_text()
        holder = json.loads((sweep_dir / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

        refused = h.run_cli("resume", sweep_dir, cwd=tmp_path, env=h.cli_env(second_ray), timeout=120)
        assert refused.returncode == 2, refused.explain()
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on host {socket.gethostname()}" in lines[0], refused.explain()
        assert str(sweep_dir / LOCK_FILE) in lines[0] and f"lth-sweep resume {sweep_dir}" in lines[0]
        assert refused.stdout == "" and "Traceback" not in refused.stderr
        assert not any(second_ray.iterdir()), "the refused driver started Ray"
        # launching it again says who runs it, not "resume it"
        relaunched = h.run_cli("launch", sweep_file, "--storage", tmp_path / "storage", cwd=tmp_path,
                               env=h.cli_env(second_ray), timeout=120)
        assert relaunched.returncode == 2 and relaunched.stdout == "", relaunched.explain()
        assert f"this sweep is being run by pid {first.pid} on host {socket.gethostname()}" in relaunched.stderr
        assert not any(second_ray.iterdir()), "the refused driver started Ray"
        assert first.poll() is None, "the first driver ended before it could be killed mid-sweep"

        h.kill_group(first.pid)
        first.wait(timeout=30)
    h.kill_marked()
    trained_before = len(h.ledger(sweep_dir))
    assert trained_before < NUM_SAMPLES * ROUNDS, "the kill came after the sweep had finished"

    resumed = h.run_cli("resume", sweep_dir, cwd=tmp_path, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.explain()
    assert f"taking the sweep over from pid {first.pid} on host {socket.gethostname()}" in resumed.stdout
    status = h.status_json(sweep_dir, tmp_path, env)
    assert [t["state"] for t in status["trials"]] == ["TERMINATED"] * NUM_SAMPLES
    assert (sweep_dir / LOCK_FILE).read_text() == ""  # released at the end: nobody holds it


# ------------------------------------------------------------------------------------ local lock, in-process


def test_local_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    sweep_dir = str(tmp_path / "imp")
    first, second = LocalLock(sweep_dir), LocalLock(sweep_dir)  # two open file descriptions: flock tells them apart
    assert first.acquire() is None
    with pytest.raises(UserError) as err:
        second.acquire()
    assert err.value.key == str(tmp_path / "imp" / LOCK_FILE)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in err.value.message
    first.release()
    assert second.acquire() is None  # a clean release leaves nobody to take over from
    second.release()


def test_check_not_held_names_a_live_holder_and_takes_nothing(tmp_path: Path) -> None:
    sweep_dir = str(tmp_path / "imp")
    check_not_held(sweep_dir)  # no lock file yet
    holder = LocalLock(sweep_dir)
    holder.acquire()
    with pytest.raises(UserError, match=f"being run by pid {os.getpid()} on host"):
        check_not_held(sweep_dir)
    holder.release()
    check_not_held(sweep_dir)
    assert LocalLock(sweep_dir).acquire() is None  # the check left the lock free


def test_local_lock_reports_the_dead_holder_it_takes_over(tmp_path: Path) -> None:
    """A driver that died holding the lock left its record; the kernel released the flock itself."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "then"}))
    with driver_lock(str(tmp_path)) as previous:
        assert previous == {"pid": 999999, "host": "gone", "started": "then"}
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


# ------------------------------------------------------------------------------------ URI lease, LocalFileSystem


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_lease(tmp_path: Path, clock: Clock, **kwargs: Any) -> Lease:
    kwargs.setdefault("settle", lambda: None)
    kwargs.setdefault("heartbeat_s", 3600)
    return Lease(pafs.LocalFileSystem(), str(tmp_path / LEASE_FILE), str(tmp_path), lease_s=30, clock=clock,
                 **kwargs)


def stored(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / LEASE_FILE).read_text())


def test_lease_is_written_refused_to_others_and_removed_on_release(tmp_path: Path) -> None:
    clock = Clock()
    first, second = make_lease(tmp_path, clock), make_lease(tmp_path, clock)
    assert first.acquire() is None
    lease = stored(tmp_path)
    assert lease["owner"] == first.record["owner"] and lease["expires_at"] == clock.now + 30
    assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    clock.now += 29  # not yet expired
    with pytest.raises(UserError) as err:
        second.acquire()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in err.value.message
    assert "expires in 1 s" in err.value.message and err.value.key == str(tmp_path / LEASE_FILE)
    assert stored(tmp_path)["owner"] == first.record["owner"]  # the refused driver wrote nothing
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    assert second.acquire() is None
    second.release()


def test_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    clock = Clock()
    dead = make_lease(tmp_path, clock)
    dead.acquire()  # its driver dies: no release, no heartbeat
    clock.now += 31
    taker = make_lease(tmp_path, clock)
    previous = taker.acquire()
    assert previous is not None and previous["owner"] == dead.record["owner"]
    assert stored(tmp_path)["owner"] == taker.record["owner"]
    taker.release()


def test_a_lease_whose_driver_died_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    """A SIGKILLed driver on this host (its pid gone) need not be waited out; one on another host must be."""
    clock = Clock()
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()  # a pid that has ended
    (tmp_path / LEASE_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "owner": "x",
                                                    "pid_start": "1", "expires_at": clock.now + 25}))
    taker = make_lease(tmp_path, clock)
    assert taker.acquire()["owner"] == "x"
    taker.release()
    (tmp_path / LEASE_FILE).write_text(json.dumps({"pid": dead.pid, "host": "another-host", "owner": "y",
                                                    "expires_at": clock.now + 25}))
    with pytest.raises(UserError, match="on host another-host"):
        make_lease(tmp_path, clock).acquire()


def test_a_rival_writing_between_write_and_read_back_wins(tmp_path: Path) -> None:
    """Two drivers that both found the lease free: the one whose write landed last keeps it, the other
    reads someone else's token back and exits 2."""
    clock = Clock()
    rival = make_lease(tmp_path, clock)
    loser = make_lease(tmp_path, clock, settle=rival.write)  # the rival's write lands while the loser settles
    with pytest.raises(UserError):
        loser.acquire()
    assert stored(tmp_path)["owner"] == rival.record["owner"]
    assert loser.heartbeat is None


def test_renew_extends_and_notices_a_lost_lease(tmp_path: Path) -> None:
    clock = Clock()
    lease = make_lease(tmp_path, clock)
    lease.acquire()
    clock.now += 10
    assert lease.renew() and stored(tmp_path)["expires_at"] == clock.now + 30
    clock.now += 100  # expired (e.g. the store was unreachable) and taken over by another driver
    other = make_lease(tmp_path, clock)
    other.acquire()
    assert not lease.renew()
    assert stored(tmp_path)["owner"] == other.record["owner"]  # renew wrote nothing over it
    lease.release()
    assert stored(tmp_path)["owner"] == other.record["owner"]  # release removes only its own lease
    other.release()


def test_heartbeat_thread_renews_until_release(tmp_path: Path) -> None:
    clock = Clock()
    beats = threading.Semaphore(0)
    lease = Lease(pafs.LocalFileSystem(), str(tmp_path / LEASE_FILE), str(tmp_path), lease_s=30, heartbeat_s=0.01,
                  settle=lambda: None, clock=clock)
    original_write = lease.write

    def write() -> None:
        clock.now += 1
        original_write()
        beats.release()

    lease.write = write  # type: ignore[method-assign]
    lease.acquire()
    for _ in range(3):  # acquire's write, then heartbeats
        assert beats.acquire(timeout=60)
    assert stored(tmp_path)["expires_at"] > 1_000_000.0 + 31
    lease.release()
    assert lease.heartbeat is None and not (tmp_path / LEASE_FILE).exists()


def test_driver_lock_uses_a_lease_for_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """driver_lock picks the lease for a URI; pyarrow's `mock://` filesystem stands in for an object store."""
    made: list[Lease] = []
    original_init = Lease.__init__

    def init(self: Lease, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **{**kwargs, "settle": lambda: None})
        made.append(self)

    monkeypatch.setattr(Lease, "__init__", init)
    with driver_lock("mock://bucket/sweeps/imp"):
        assert made and made[0].read()["owner"] == made[0].record["owner"]
    assert made[0].read() is None


def test_the_resume_command_in_the_message_is_quoted_for_the_shell() -> None:
    """A URI's query holds '&': printed bare, the shell would cut the command there."""
    uri = "s3://b/sweeps/imp?endpoint_override=http://127.0.0.1:9000&scheme=http"
    error = held_error(uri + "/driver_lease.json", {"pid": 1, "host": "h", "started": "t"}, uri)
    assert f"lth-sweep resume '{uri}'" in error.message

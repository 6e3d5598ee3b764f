"""One driver per sweep: `launch` and `resume` hold the sweep while Ray runs it; a second driver exits 2.

Local storage: an `fcntl.flock` on `<sweep>/driver.lock`, which holds {pid, host, started} of the driver.
The kernel drops the lock when its driver dies, however it dies, so a killed driver's sweep is taken
over by the next `resume`.
URI storage (no locks in object stores): a lease object `<sweep>/driver_lease.json` {pid, host, owner,
started, expires_at} that a heartbeat thread renews every HEARTBEAT_S; a lease that has expired (its
driver died more than LEASE_S ago), or one whose driver ran on this machine and is gone, is taken over:
write ours, wait a moment, read it back to confirm that no other driver wrote after us.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lth_sweep import storage
from lth_sweep.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "driver.lock"
LEASE_FILE = "driver_lease.json"
LEASE_S = 30.0
HEARTBEAT_S = 10.0
SETTLE_S = 1.0  # between writing a lease and reading it back: another driver's write lands in between


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_start(pid: int) -> str | None:
    """The start time of a live process (field 22 of /proc/PID/stat), None when there is none (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def this_driver() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
            "pid_start": process_start(os.getpid())}


def died_here(holder: dict[str, Any]) -> bool:
    """A holder that ran on this machine and whose process is gone (or is another process now): its lease
    need not be waited out."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    started = process_start(holder["pid"])
    return started is None or (holder.get("pid_start") is not None and started != holder["pid_start"])


def held_error(location: str, holder: dict[str, Any] | None, experiment_dir: str, extra: str = "") -> UserError:
    """The one line a second driver prints: who holds the sweep, and what to do."""
    who = (f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"
           if holder else "another lth-sweep driver")
    return UserError(location, f"this sweep is being run by {who}{extra}; wait for it to end or stop it, "
                               f"then continue with: lth-sweep resume {shlex.quote(experiment_dir)}")


class LocalLock:
    """An exclusive flock on `<sweep>/driver.lock`, held until release() or the process ends."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir
        self.path = Path(experiment_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Takes the lock; returns the previous holder's record if it died holding it (else None)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Ray's processes
        except OSError as err:
            raise UserError(str(self.path), f"cannot create the sweep's lock file: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise held_error(str(self.path), holder, self.experiment_dir) from None
        previous = read_holder(fd, attempts=1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(this_driver()).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return previous

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # an empty file: nobody died holding it
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def read_holder(fd: int, attempts: int = 5) -> dict[str, Any] | None:
    """The holder record in the lock file; the holder may still be writing it, so a few tries."""
    for attempt in range(attempts):
        data = os.pread(fd, 4096, 0)
        try:
            return json.loads(data) if data else None
        except ValueError:
            if attempt + 1 < attempts:
                time.sleep(0.1)
    return None


class Lease:
    """A lease object on a pyarrow filesystem, renewed by a heartbeat thread while held."""

    def __init__(self, fs: pafs.FileSystem, path: str, experiment_dir: str, lease_s: float = LEASE_S,
                 heartbeat_s: float = HEARTBEAT_S, settle: Callable[[], None] = lambda: time.sleep(SETTLE_S),
                 clock: Callable[[], float] = time.time) -> None:
        self.fs, self.path, self.experiment_dir = fs, path, experiment_dir
        self.location = storage.join(experiment_dir, LEASE_FILE)  # for messages: the URI, not the bucket path
        self.lease_s, self.heartbeat_s, self.settle, self.clock = lease_s, heartbeat_s, settle, clock
        self.record = {**this_driver(), "owner": uuid.uuid4().hex}
        self.stopping = threading.Event()
        self.heartbeat: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        """The lease as stored; None when there is none (or it is unreadable, like one never written)."""
        try:
            with self.fs.open_input_stream(self.path) as stream:
                lease = json.loads(stream.read())
        except (OSError, ValueError):  # FileNotFoundError among them
            return None
        return lease if isinstance(lease, dict) else None

    def write(self) -> None:
        record = {**self.record, "expires_at": self.clock() + self.lease_s}
        with self.fs.open_output_stream(self.path) as stream:  # object stores replace objects whole
            stream.write(json.dumps(record).encode())

    def live_rival(self, lease: dict[str, Any] | None) -> bool:
        return (lease is not None and lease.get("owner") != self.record["owner"]
                and float(lease.get("expires_at", 0)) > self.clock() and not died_here(lease))

    def acquire(self) -> dict[str, Any] | None:
        """Takes the lease and starts the heartbeat; returns the expired lease it took over (else None)."""
        found = self.read()
        if self.live_rival(found):
            raise self._held(found)
        try:
            parent = self.path.rpartition("/")[0]
            if parent:
                self.fs.create_dir(parent, recursive=True)  # a no-op in object stores, needed on file systems
            self.write()
        except OSError as err:
            raise UserError(self.location, f"cannot write the sweep's driver lease: {err}") from None
        self.settle()
        confirmed = self.read()
        if confirmed is None or confirmed.get("owner") != self.record["owner"]:
            raise self._held(confirmed)
        self.heartbeat = threading.Thread(target=self._beat, name="lth-sweep-lease", daemon=True)
        self.heartbeat.start()
        return found

    def _held(self, lease: dict[str, Any] | None) -> UserError:
        left = f", lease expires in {max(0.0, float(lease['expires_at']) - self.clock()):.0f} s" if lease else ""
        return held_error(self.location, lease, self.experiment_dir, left)

    def renew(self) -> bool:
        """Extends the lease; False (and no write) when another driver has taken it."""
        current = self.read()
        if current is not None and current.get("owner") != self.record["owner"]:
            return False
        self.write()
        return True

    def _beat(self) -> None:
        while not self.stopping.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    log.warning("another driver took this sweep's lease %s", self.location)
                    return
            except OSError as err:  # the store may come back before the lease runs out
                log.warning("could not renew the driver lease %s: %s", self.location, err)

    def release(self) -> None:
        self.stopping.set()
        if self.heartbeat is not None:
            self.heartbeat.join()
            self.heartbeat = None
        try:
            current = self.read()
            if current is not None and current.get("owner") == self.record["owner"]:
                self.fs.delete_file(self.path)
        except OSError as err:
            log.warning("could not remove the driver lease %s: %s", self.location, err)


def check_not_held(experiment_dir: str) -> None:
    """Raises the UserError a second driver gets (naming the pid and host) when a live driver holds the sweep;
    takes nothing (for `launch` on a sweep that exists: running is a better answer than "resume it")."""
    if storage.is_uri(experiment_dir):
        fs, path = pafs.FileSystem.from_uri(storage.join(experiment_dir, LEASE_FILE))
        lease = Lease(fs, path, experiment_dir)
        found = lease.read()
        if lease.live_rival(found):
            raise lease._held(found)
        return
    path = Path(experiment_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: no driver ever held it here
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise held_error(str(path), read_holder(fd), experiment_dir) from None
    finally:
        os.close(fd)


@contextmanager
def driver_lock(experiment_dir: str) -> Iterator[dict[str, Any] | None]:
    """Holds the sweep for this driver; yields the record of a dead driver whose hold it took over, if any.
    Raises UserError (exit 2) naming the pid and host of a live holder."""
    if storage.is_uri(experiment_dir):
        fs, path = pafs.FileSystem.from_uri(storage.join(experiment_dir, LEASE_FILE))
        lock: LocalLock | Lease = Lease(fs, path, experiment_dir)
    else:
        lock = LocalLock(experiment_dir)
    previous = lock.acquire()
    try:
        yield previous
    finally:
        lock.release()

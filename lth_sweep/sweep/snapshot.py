"""An intact copy of Tune's last experiment snapshot, and the repair `resume` makes with it.

Tune writes its snapshot (experiment_state-<session>.json, the search generator's and the searcher's state files)
into a staging folder on the driver, then a background thread copies that folder into the sweep's storage, file by
file and in place (ray/tune/execution/experiment_state.py, `sync_up_experiment_state`). A driver killed during
that copy leaves a file cut short (seen in CI: an experiment_state truncated at 32768 bytes), and `Tuner.restore`
cannot read it: the sweep could not be resumed. After each snapshot, `SnapshotKeeper` writes the snapshot's files,
complete and of one save, as one zip (`COPY_NAME`), atomically, into the sweep's storage; when a file Tune
restores from cannot be read, `repair` puts the copy's files back before Tune starts.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

from ray.tune import Callback

from lth_sweep import storage
from lth_sweep.errors import RunFailure
from lth_sweep.sweep.status import SNAPSHOT_PREFIX, snapshot_files

COPY_NAME = "tune-snapshot-copy.zip"
SESSION_SUFFIXES = (".json", ".pkl")  # Tune's snapshot files of a session end in -<session><suffix>
DAMAGED_SUFFIX = ".damaged"  # a file set aside by `repair` (Tune's patterns no longer match it)
# What Tuner.restore reads (the file, or the newest by name of a prefix) and how it is stored: Tune pickles the
# search generator's state into a file it names .json
TUNE_STATE_FILES = (("tuner.pkl", None, "pickle"), (SNAPSHOT_PREFIX, ".json", "json"),
                    ("search_gen_state-", ".json", "pickle"), ("searcher-state-", ".pkl", "pickle"))


class Unreadable(NamedTuple):
    name: str  # the file's name in the sweep folder
    reason: str  # why it cannot be read, one line


def session_of(name: str) -> str | None:
    """The session (Tune's timestamp, `2026-12-03_11-34-37`) of one of its snapshot files, else None."""
    for prefix, suffix, _ in TUNE_STATE_FILES[1:]:
        if name.startswith(prefix) and name.endswith(suffix):
            return name[len(prefix):-len(suffix)]
    return None


def read_back(name: str, data: bytes) -> None:
    """Raises what reading a Tune state file of this name raises when its content is damaged (a file of another
    name, such as Tune's callback states, is not checked)."""
    forms = [form for prefix, suffix, form in TUNE_STATE_FILES
             if name == prefix or (suffix is not None and name.startswith(prefix) and name.endswith(suffix))]
    if forms:
        pickle.loads(data) if forms[0] == "pickle" else json.loads(data)


def first_unreadable(experiment_dir: str, names: list[str] | None = None) -> Unreadable | None:
    """The first file Tune would restore from (`TUNE_STATE_FILES`) that cannot be read back, else None."""
    names = storage.list_files(experiment_dir) if names is None else names
    for prefix, suffix, _ in TUNE_STATE_FILES:
        found = [prefix] if suffix is None else sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))
        if not found:
            continue
        try:
            read_back(found[-1], storage.read_bytes(storage.join(experiment_dir, found[-1])))
        except FileNotFoundError:
            continue
        except Exception as err:  # noqa: BLE001 - unpickling a damaged file raises almost anything
            first_line = str(err).splitlines()[0][:120] if str(err) else "-"
            return Unreadable(found[-1], f"{type(err).__name__}: {first_line}")
    return None


def session_files(folder: str, session: str) -> list[str]:
    """The names of a session's snapshot files in a local folder (Tune's staging folder): every `<what>-<session>`
    .json or .pkl (the experiment's, the searcher's, the callbacks' states)."""
    return sorted(name for name in os.listdir(folder)
                  if any(name.endswith(f"-{session}{suffix}") for suffix in SESSION_SUFFIXES))


class SnapshotKeeper(Callback):
    """After each experiment snapshot Tune saves, writes its files as one zip into the sweep's storage (atomically:
    a kill leaves the previous copy). Tune saves in its driver loop before the step's end and uploads meanwhile
    from the staging folder, which nothing writes until the next step: the files read here are whole."""

    def __init__(self, experiment_dir: str, warn: Callable[[str], None]) -> None:
        self.copy_path = storage.join(experiment_dir, COPY_NAME)
        self.warn: Callable[[str], None] | None = warn  # a line for the terminal
        self.kept: tuple[str, int, int] | None = None  # (experiment_state file, mtime_ns, size) last copied
        self.warned = False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl; a resumed sweep installs a fresh keeper
        return {**self.__dict__, "warn": None}

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if trials:
            self.keep(trials[0].local_experiment_path)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if trials:
            self.keep(trials[0].local_experiment_path)

    def keep(self, staging: str) -> None:
        """Copies the newest snapshot in `staging` (Tune's driver staging folder) when it is new since the last."""
        try:
            snapshots = sorted(n for n in os.listdir(staging) if session_of(n) is not None
                               and n.startswith(SNAPSHOT_PREFIX))
        except FileNotFoundError:
            return
        if not snapshots:
            return
        stat = os.stat(os.path.join(staging, snapshots[-1]))
        seen = (snapshots[-1], stat.st_mtime_ns, stat.st_size)
        if seen == self.kept:
            return
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for name in session_files(staging, session_of(snapshots[-1]) or ""):
                archive.write(os.path.join(staging, name), name)
        try:
            storage.write_bytes(self.copy_path, buffer.getvalue())
        except (OSError, RunFailure) as err:  # a full disk, an unreachable bucket: the sweep runs on, and the
            if not self.warned and self.warn is not None:  # next snapshot tries again
                reason = err.message if isinstance(err, RunFailure) else str(err).splitlines()[0]
                self.warn(f"lth-sweep: warning: {self.copy_path}: {reason}; until it is written, a kill while Tune "
                          "copies its snapshot into storage may leave the sweep unresumable")
                self.warned = True
            return
        self.kept = seen


def kept_copy(experiment_dir: str) -> dict[str, bytes] | None:
    """The kept snapshot's files by name, or None when there is no copy, or it cannot be read or holds no snapshot."""
    path = storage.join(experiment_dir, COPY_NAME)
    try:
        with zipfile.ZipFile(io.BytesIO(storage.read_bytes(path))) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        for name, data in files.items():
            read_back(name, data)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged copy is no copy
        return None
    return files if any(name.startswith(SNAPSHOT_PREFIX) for name in files) else None


def has_snapshot(names: list[str]) -> bool:
    """Whether these names of a sweep folder's files hold an experiment snapshot of Tune's."""
    return bool(snapshot_files(names))


def repair(experiment_dir: str) -> str | None:
    """When a snapshot file Tune restores from cannot be read, or storage holds no snapshot of the kept copy's
    session (a kill before Tune's upload of it began), and the kept copy can be read: writes the copy's files
    over the storage's, and sets aside (`DAMAGED_SUFFIX`) those of any later session; returns a line saying so.
    Unreadable and missing files are written last, the experiment snapshot last of all, and the later session's
    set aside after them: a kill during the repair leaves a file unreadable or missing, and the next `resume`
    repairs again."""
    names = storage.list_files(experiment_dir)
    damaged = first_unreadable(experiment_dir, names)
    if damaged is not None and damaged.name == "tuner.pkl":
        return None
    if damaged is None and COPY_NAME not in names:
        return None
    files = kept_copy(experiment_dir)
    if files is None:
        return None
    session = next(session_of(name) for name in files if name.startswith(SNAPSHOT_PREFIX)) or ""
    if damaged is None and any(name.startswith(SNAPSHOT_PREFIX) and (session_of(name) or "") >= session
                               for name in names):
        return None  # storage holds this session's snapshot, or a later one
    unreadable = set()
    for name in files:
        try:
            read_back(name, storage.read_bytes(storage.join(experiment_dir, name)))
        except Exception:  # noqa: BLE001 - absent or damaged alike: written last
            unreadable.add(name)
    for name in sorted(files, key=lambda name: (name in unreadable, name.startswith(SNAPSHOT_PREFIX))):
        storage.write_bytes(storage.join(experiment_dir, name), files[name])
    later = [name for name in names if "/" not in name and (session_of(name) or "") > session]
    for name in later:
        storage.rename(storage.join(experiment_dir, name), storage.join(experiment_dir, name + DAMAGED_SUFFIX))
    set_aside = f"; set aside the later session's {', '.join(later)} (as {DAMAGED_SUFFIX})" if later else ""
    what = (f"Tune's snapshot file {damaged.name} cannot be read ({damaged.reason}), as a kill while Tune copies "
            "its snapshot into storage leaves it" if damaged is not None else
            f"Tune's snapshot of session {session} is not in storage, as a kill before Tune copied it there leaves it")
    return (f"{what}; put back Tune's last whole snapshot (session {session}) from {COPY_NAME}{set_aside}: "
            "trials that ran since it continue from their saved rounds")

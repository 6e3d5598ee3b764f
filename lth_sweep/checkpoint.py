"""Atomic file writes (temp file in the same folder, fsync, rename, fsync the folder) and safe checkpoint loading.

Files get the mode a plain `open()` would give them (0666 less the umask), not mkstemp's private 0600.
A write that fails (disk full, file system read-only) raises RunFailure naming the file; the previous
version of the file is left as it was. A file that cannot be read back raises CorruptFile naming it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lth_sweep.errors import CorruptFile, RunFailure
from lth_sweep.signals import interrupts_held

if TYPE_CHECKING:  # torch is imported where it is used: a sweep's driver writes text files only
    import torch


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error_in(err: BaseException) -> OSError | None:
    """The OSError that caused `err`, if any (torch.save turns a full disk into a RuntimeError)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def write_failure(path: Path, err: BaseException) -> RunFailure | None:
    """A one-line RunFailure for a write that the world made fail; None for a bug (re-raise it)."""
    cause = os_error_in(err)
    if cause is not None:
        reason = (cause.strerror or str(cause)).lower()
    else:
        try:
            full = os.statvfs(path.parent).f_bavail == 0
        except OSError:
            full = False
        if not full:
            return None
        reason = "no space left on device"
    return RunFailure(path, f"could not be written ({reason}); once that is fixed, run the same command again")


def fsync_dir(directory: Path) -> None:
    """Makes a rename in `directory` durable (a power loss cannot undo it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes `path` through `write(handle)` into a temp file, fsyncs it, renames it over `path`, fsyncs the folder.
    A Ctrl+C (or SIGTERM) meanwhile takes effect once the file is in place (`interrupts_held`: one inside
    torch.save's writer aborted the process)."""
    with interrupts_held():
        write_then_rename(Path(path), write)


def write_then_rename(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            with contextlib.suppress(OSError):  # some network file systems refuse chmod; the write still counts
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except Exception as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        failure = write_failure(path, err)
        if failure is None:
            raise
        raise failure from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(Path(path), lambda handle: handle.write(data))


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def copy_file(source: str | Path, destination: str | Path) -> None:
    """Copies a file atomically: `destination` is either its old self or a complete copy."""
    with open(source, "rb") as src:
        atomic_write(destination, lambda handle: shutil.copyfileobj(src, handle))


def load_torch(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """torch.load with weights only; a file that is there but cannot be read raises CorruptFile naming it."""
    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated zip, garbage, empty file (EOFError), a pickle that is not ours
        first_line = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        sentence = first_line.split(". ")[0][:160]
        reason = f"{type(err).__name__}: {sentence}" if sentence else type(err).__name__
        raise CorruptFile(path, reason) from None

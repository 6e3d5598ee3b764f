"""Sweep storage: a local folder or a URI (s3://, gs://, ...) read and written through pyarrow.fs.

Each trial's engine state is kept under `<sweep>/by_config/<config hash>/`, so a config that Tune
re-suggests under a new trial id (its experiment snapshot lags by ~10 s) finds its finished rounds.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lth_sweep.errors import RunFailure, UserError, not_text
from lth_sweep.signals import interrupts_held

if TYPE_CHECKING:  # imported where used: a local `lth-sweep run` needs no pyarrow (nor a torch-only GPU box)
    import pyarrow.fs as pafs

URI_SCHEMES = ("s3", "gs")
ALLOWED = "a folder, s3://bucket/path or gs://bucket/path"


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def check_location(location: str, key: str) -> None:
    """Raises UserError (naming `key`) unless `location` is a URI of a known scheme or a folder that can be
    created and written; creates nothing."""
    if is_uri(location):
        filesystem(location, key)
        return
    check_folder(Path(location), key)


def check_folder(folder: Path, key: str) -> None:
    """Raises UserError unless `folder` is, or can be created as, a folder we can write in; creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        below = "" if existing == folder else f", so {folder} cannot be created"
        raise UserError(key, f"{existing} is a file, not a folder{below}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = "it is on a read-only file system" if read_only else "permission denied"
        raise UserError(key, f"cannot write in {existing} ({reason}); give a folder that can be written")


def filesystem(location: str, key: str = "storage") -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system and path for a folder or a URI; an unknown scheme or option is a UserError
    naming `key`."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location.removeprefix("file://")).absolute())
    scheme, _, rest = location.partition("://")
    scheme = scheme.lower()
    if "@" in rest.partition("/")[0]:  # the message leaves the URI out: it would print the secret
        raise UserError(key, f"a {scheme}:// URI with credentials in it (user:secret@bucket) is refused: the URI is "
                             "written into the sweep's files and Ray's logs; give the keys in the environment "
                             "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS) or use "
                             "the node's role")
    if scheme not in URI_SCHEMES:
        raise UserError(key, f"{location}: unknown storage scheme '{scheme}://'; allowed: {ALLOWED}")
    if not rest.partition("?")[0].partition("/")[0]:
        raise UserError(key, f"{location}: names no bucket; allowed: {ALLOWED}")
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        raise UserError(key, f"{location}: {str(err).splitlines()[0]}; allowed: {ALLOWED}") from None
    except OSError as err:  # an s3:// URI without a region: pyarrow asks the bucket's (no network, no such host)
        reason = (str(err).splitlines() or ["no answer"])[0][:300]
        raise RunFailure(key, f"{location}: the storage cannot be reached ({reason}); check the bucket's name, the "
                              "endpoint (endpoint_override), the region (region=...) and the network") from None


PROBE_GCS_RETRY_S = 10  # GCS: how long the probe retries (pyarrow's default for a gs:// URI: 15 minutes)


def probing_copy(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The same object-store file system with pyarrow's standard retries: 3 attempts, ~10 s to give up on an
    endpoint that never answers (the one `FileSystem.from_uri` makes keeps the SDK's default, ~100 s for S3)."""
    import datetime

    import pyarrow.fs as pafs

    _, (options,) = fs.__reduce__()  # the file system's options, as pickling passes them on
    if isinstance(fs, pafs.S3FileSystem):
        return pafs.S3FileSystem(**options)
    if isinstance(fs, pafs.GcsFileSystem):
        return pafs.GcsFileSystem(**{**options, "retry_time_limit": datetime.timedelta(seconds=PROBE_GCS_RETRY_S)})
    return fs


def check_reachable(location: str, key: str) -> None:
    """For a URI: one request, failing within seconds, before a command's real work, so that a wrong endpoint or
    no network is one line naming `key` (RunFailure) rather than minutes of the SDK's retries."""
    if not is_uri(location):
        return
    fs, path = filesystem(location, key)
    try:
        probing_copy(fs).get_file_info(path)
    except OSError as err:
        reason = (str(err).splitlines() or ["no answer"])[0][:300]
        raise RunFailure(key, f"{location}: the storage cannot be read ({reason}); check the endpoint "
                              "(endpoint_override), the network and the credentials") from None


def normalize(location: str) -> str:
    """Absolute local path (Ray requires one) or the URI unchanged."""
    if is_uri(location):
        base, sep, query = location.partition("?")
        scheme, _, path = base.partition("://")
        return f"{scheme}://{path.rstrip('/')}{sep}{query}"  # s3:// stays a URI (and names no bucket)
    return str(Path(location.removeprefix("file://")).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """Appends path parts; a URI's query (s3://b/p?region=x) stays at the end."""
    if not is_uri(location):
        return str(Path(location, *parts))
    base, sep, query = location.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def split_last(location: str) -> tuple[str, str]:
    """(parent, last part) of a folder or URI; a URI's query stays with the parent: how Ray Tune gets
    `storage_path` and the experiment's name (`s3://b/p/imp?region=x` -> `s3://b/p?region=x`, `imp`)."""
    base, sep, query = location.partition("?")
    parent, _, name = base.rstrip("/").rpartition("/")
    return parent + sep + query, name


def exists(location: str) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(location: str) -> str:
    """A text file; one that is not UTF-8 (overwritten, damaged) is a UserError naming it."""
    try:
        return read_bytes(location).decode()
    except UnicodeDecodeError as err:
        raise not_text(location, err) from None


def write_bytes(location: str, data: bytes) -> None:
    """Writes a file atomically: a reader (or a kill) finds its old content or the new, never a part."""
    if not is_uri(location):
        from lth_sweep.checkpoint import write_bytes as atomic_write

        atomic_write(location, data)
        return
    fs, path = filesystem(location)
    put_object(fs, path, data)


def put_object(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Writes a whole object (object stores replace objects atomically). A Ctrl+C is held off meanwhile: one
    between opening the stream and writing it would close the stream, which uploads an empty object."""
    with interrupts_held(), fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def rename(source: str, destination: str) -> None:
    """Renames a file within one folder or bucket (atomic in a folder; copy, then delete, in an object store)."""
    if not is_uri(source):
        os.replace(source, destination)
        return
    fs, source_path = filesystem(source)
    fs.move(source_path, filesystem(destination)[1])


def list_files(location: str) -> list[str]:
    """The files under a folder or URI prefix (recursively), as sorted paths relative to it; none if absent."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = path.rstrip("/") + "/"
    return sorted(info.path.removeprefix(prefix) for info in infos if info.type == pafs.FileType.File)


def copy_dir(source: str, destination: str) -> None:
    """Copies a folder between a local path and a URI (either way)."""
    import pyarrow.fs as pafs

    src_fs, src_path = filesystem(source)
    dst_fs, dst_path = filesystem(destination)
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def local_files(directory: Path) -> list[str]:
    """Regular files under a local folder, relative and sorted; symbolic links are skipped (W&B keeps
    `latest-run` and `debug.log` links to its newest run)."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(parent, d))]
        for name in files:
            full = os.path.join(parent, name)
            if not os.path.islink(full):
                found.append(os.path.relpath(full, directory))
    return sorted(found)


class Uploader:
    """Mirrors a local folder to a URI, one file at a time in a fixed order, skipping files that have
    not changed since this uploader last sent them. Files named in `last` go after all others: an
    object store has no atomic rename, so a reader that trusts them (the engine's `rounds.jsonl`) never
    sees them ahead of the files they describe. Files whose names end in one of `first` go before all others
    (a W&B run's `.wandb` file: a copy cut short by a kill then never holds a run's logs without it)."""

    def __init__(self, source: Path, destination: str, last: tuple[str, ...] = (),
                 ready: Callable[[Path, str], bool] | None = None, first: tuple[str, ...] = ()) -> None:
        """`ready(source, name)`, when given, holds back a file until it says True (it is asked again next time)."""
        self.source, self.destination, self.last, self.first = source, destination, last, first
        self.ready = ready
        self.sent: dict[str, tuple[int, int]] = {}

    def upload(self) -> list[str]:
        """Sends what changed; returns the relative paths sent."""
        if not self.source.is_dir():
            return []
        names = [n for n in local_files(self.source)  # not an atomic write's temporary file
                 if not (Path(n).name.startswith(".") and n.endswith(".tmp"))
                 and (self.ready is None or self.ready(self.source, n))]
        names.sort(key=lambda n: (n in self.last, not n.endswith(self.first), n))
        fs, base = filesystem(self.destination)
        sent = []
        for name in names:
            try:
                info = os.stat(self.source / name)
                data = (self.source / name).read_bytes()
            except FileNotFoundError:  # a writer's temporary file, renamed meanwhile
                continue
            version = (info.st_size, info.st_mtime_ns)
            if self.sent.get(name) == version:
                continue
            if not is_uri(self.destination):
                (Path(base) / name).parent.mkdir(parents=True, exist_ok=True)
            put_object(fs, f"{base.rstrip('/')}/{name}", data)
            self.sent[name] = version
            sent.append(name)
        return sent


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Holds an exclusive lock on a local folder: two live trials of one config never write it at once;
    the second waits, then continues from the first one's rounds."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o666)  # less the umask
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

"""Sweep storage: a local folder or a URI (s3://, gs://, ...) read and written through pyarrow.fs.

Each trial's engine state is kept under `<sweep>/by_config/<config hash>/`, so a config that Tune
re-suggests under a new trial id (its experiment snapshot lags by ~10 s) finds its finished rounds.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def normalize(location: str) -> str:
    """Absolute local path (Ray requires one) or the URI unchanged."""
    if is_uri(location):
        base, sep, query = location.partition("?")
        return base.rstrip("/") + sep + query
    return str(Path(location.removeprefix("file://")).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """Appends path parts; a URI's query (s3://b/p?region=x) stays at the end."""
    if not is_uri(location):
        return str(Path(location, *parts))
    base, sep, query = location.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def exists(location: str) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    fs, path = pafs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str) -> str:
    if not is_uri(location):
        return Path(location).read_text()
    fs, path = pafs.FileSystem.from_uri(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str, text: str) -> None:
    if not is_uri(location):
        from lth_sweep.checkpoint import write_text as atomic_write

        atomic_write(location, text)
        return
    fs, path = pafs.FileSystem.from_uri(location)
    with fs.open_output_stream(path) as stream:  # object stores replace objects atomically
        stream.write(text.encode())


def copy_dir(source: str, destination: str) -> None:
    """Copies a folder between a local path and a URI (either way)."""
    src_fs, src_path = pafs.FileSystem.from_uri(source if is_uri(source) else Path(source).as_uri())
    dst_fs, dst_path = pafs.FileSystem.from_uri(destination if is_uri(destination) else Path(destination).as_uri())
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Holds an exclusive lock on a local folder: two live trials of one config never write it at once;
    the second waits, then continues from the first one's rounds."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

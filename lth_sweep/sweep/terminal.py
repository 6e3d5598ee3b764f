"""The sweep's terminal: the progress lines go to it, while Ray's, Tune's and Optuna's own output goes to a log
file. The redirection is at the file-descriptor level: Ray's C++ core writes to fd 2 itself, the workers' output
comes through the driver (`log_to_driver`), and the loggers of Ray, Tune and Optuna hold `sys.stderr`. Imports
nothing of Ray: the driver opens it before Ray starts."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from lth_sweep.errors import RunFailure

LOG_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full or read-only disk under the log


class Terminal:
    """Within `with Terminal(log_path):`, fds 1 and 2 write to `log_path` and `line()` to the terminal (and the
    log). With `log_path=None` (verbose) nothing is redirected. A terminal that went away (the reader of a pipe
    died, as `tee` does on Ctrl+C) is dropped silently: the lines still reach the log."""

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self._saved: tuple[int, int] | None = None
        self.terminal_gone = False

    def __enter__(self) -> Terminal:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            sys.stdout.flush()
            sys.stderr.flush()
            self._saved = (os.dup(1), os.dup(2))
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._saved is None:
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = None
        failure = self.log_failure(exc)
        if failure is not None:
            raise failure from None

    def log_failure(self, exc: BaseException | None) -> RunFailure | None:
        """A write to fd 1 or 2 (the log) that the disk refused, as a failure naming the log; None for anything else.
        Such an OSError names no file: Tune's `print` met it, deep in its own loop."""
        if not isinstance(exc, OSError) or exc.filename is not None or exc.errno not in LOG_WRITE_ERRORS:
            return None
        return RunFailure(self.log_path, f"could not be written ({os.strerror(exc.errno).lower()})")

    def line(self, text: str) -> None:
        data = (text + "\n").encode()
        if self._saved is None:
            self._write(sys.stdout.fileno(), data, flush_first=True)
            return
        self._write(self._saved[0], data)
        try:
            os.write(1, data)  # the log
        except OSError:
            pass

    def _write(self, fd: int, data: bytes, flush_first: bool = False) -> None:
        if self.terminal_gone:
            return
        try:
            if flush_first:
                sys.stdout.flush()
            os.write(fd, data)
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.EBADF, errno.EIO):
                raise
            self.terminal_gone = True

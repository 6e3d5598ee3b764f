"""The exception types the CLI prints on one line: a user's mistake (exit 2) and a failure while running (exit 1).

Each keeps its constructor arguments for pickling, so it crosses from a Ray worker to the driver intact.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: `key` names the offending setting (or file), the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message

    def __reduce__(self):
        return type(self), (self.key, self.message)


class CorruptFile(UserError):
    """A saved file that cannot be read back (truncated, overwritten, not one of ours)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(str(path), f"cannot be read, it is truncated or corrupt ({reason}); "
                                    "delete it to start over, or put back an intact copy")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def not_text(path: str | Path, err: UnicodeDecodeError) -> UserError:
    """A text file (YAML, JSON) that does not decode: damaged, or not the file it should be."""
    return UserError(str(path), f"cannot be read: it is not UTF-8 text (byte {err.start}), so it is damaged or "
                                "not the file it should be; put back an intact copy")


class RunFailure(Exception):
    """The world failed while running (disk full, file system gone read-only): exit 1, naming the file."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.message = message

    def __reduce__(self):
        return type(self), (self.path, self.message)

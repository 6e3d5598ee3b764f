"""A Ctrl+C held off while a file is written (then delivered to the handler from before), SIGTERM as Ctrl+C.

The signals are real: the test sends SIGINT to its own process at the moment it wants, inside the write."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow.fs as pafs
import pytest
import torch

from lth_sweep.checkpoint import atomic_write, load_torch
from lth_sweep.signals import interrupts_held, sigterm_as_ctrl_c
from lth_sweep.storage import put_object


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def handler_calls() -> Iterator[list[int]]:
    """SIGINT goes to a handler that records each call (Tune's handler is such a function while a sweep runs)."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGINT, previous)


class InterruptingWriter:
    """A file handle that sends a Ctrl+C before its `at`-th write."""

    def __init__(self, handle: IO[bytes], at: int) -> None:
        self.handle, self.at, self.writes = handle, at, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.at:
            ctrl_c()
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_a_ctrl_c_inside_an_atomic_write_takes_effect_once_the_file_is_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"

    def write(handle: IO[bytes]) -> None:
        handle.write(b"first half,")
        ctrl_c()
        handle.write(b" second half")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_bytes() == b"first half, second half"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_a_ctrl_c_inside_torch_save_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """Before, the KeyboardInterrupt landed in the Python write that torch's zip writer called: `run` ended with
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", or aborted."""
    path = tmp_path / "state.pt"
    state = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda handle: torch.save(state, InterruptingWriter(handle, at=3)))
    loaded = load_torch(path)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_a_ctrl_c_between_opening_an_upload_and_writing_it_uploads_the_whole_object(tmp_path: Path) -> None:
    """An object store's stream, closed by the KeyboardInterrupt before its write, would upload an empty object.
    The local file system stands in for the object store (pyarrow's same stream API)."""

    class InterruptedOpen:
        def __init__(self) -> None:
            self.fs = pafs.LocalFileSystem()

        def open_output_stream(self, path: str) -> Any:
            stream = self.fs.open_output_stream(path)
            ctrl_c()
            return stream

    path = tmp_path / "experiment_state.json"
    with pytest.raises(KeyboardInterrupt):
        put_object(InterruptedOpen(), str(path), b'{"trials": 8}')  # type: ignore[arg-type]
    assert path.read_bytes() == b'{"trials": 8}'


def test_the_held_ctrl_c_reaches_the_handler_from_before_once(handler_calls: list[int]) -> None:
    with interrupts_held():
        ctrl_c()
        ctrl_c()
        assert handler_calls == []
    assert handler_calls == [signal.SIGINT]
    with interrupts_held():
        pass
    assert handler_calls == [signal.SIGINT]


def test_with_second_at_once_a_second_ctrl_c_interrupts_at_once_and_nothing_comes_after(
        handler_calls: list[int]) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts_held(second_at_once=True):
        ctrl_c()
        reached.append("after the first")
        ctrl_c()
        reached.append("after the second")
    assert reached == ["after the first"] and handler_calls == []
    ctrl_c()
    assert handler_calls == [signal.SIGINT]  # the handler from before is back


def test_a_write_outside_the_main_thread_is_written(tmp_path: Path) -> None:
    """Python takes signals in the main thread only (and refuses to set handlers elsewhere): a Tune trial's
    thread writes its files with nothing held."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            atomic_write(tmp_path / "rounds.jsonl", lambda handle: handle.write(b"{}\n"))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert errors == [] and (tmp_path / "rounds.jsonl").read_bytes() == b"{}\n"


def test_sigterm_does_what_ctrl_c_does_and_the_exit_code_says_which(handler_calls: list[int]) -> None:
    from lth_sweep import signals

    assert signals.stopped_exit_code() == 130
    try:
        with sigterm_as_ctrl_c():
            os.kill(os.getpid(), signal.SIGTERM)
        assert handler_calls == [signal.SIGINT]
        assert signals.stopped_exit_code() == 143
    finally:
        signals.TERMINATED.clear()

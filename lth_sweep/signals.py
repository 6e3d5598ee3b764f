"""Ctrl+C and SIGTERM for every command: SIGTERM (a batch scheduler's preemption, `kill`, a container's stop, `ray
job stop`) does what Ctrl+C does, and a Ctrl+C is held off while a write or a start-up must not be cut."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TERMINATED: list[int] = []  # SIGTERM reached this process while `sigterm_as_ctrl_c` held (then it exits 143)


def stopped_exit_code() -> int:
    """The exit code of a command that a signal stopped: 143 for SIGTERM, 130 for Ctrl+C."""
    return 128 + signal.SIGTERM if TERMINATED else 128 + signal.SIGINT


def terminate_as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM's handler: what Ctrl+C does now (Tune's handler while it runs, `interrupts_held`'s in a write)."""
    TERMINATED.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside the block, SIGTERM does what Ctrl+C does. `ray.init` sets a handler of its own (`sys.exit`: the driver
    ended with its output unflushed and nothing said), so a launch puts this one back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only
        return
    previous = signal.signal(signal.SIGTERM, terminate_as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_held(second_at_once: bool = False) -> Iterator[None]:
    """A Ctrl+C inside the block reaches the handler from before the block when the block ends; with
    `second_at_once` a second one raises KeyboardInterrupt at once. A KeyboardInterrupt raised anywhere can cut
    what must not be cut:
    - inside torch.save's writer, it ended `run` with a traceback, or aborted it ("terminate called after throwing
      pybind11::error_already_set": the zip writer's destructor wrote to the file that the interrupt had closed);
    - between opening an object store's output stream and writing it, closing the stream uploads an empty object;
    - during Ray's import or `ray.init` it left Ray half imported, or a lock of `logging` held (a launch hung)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # no KeyboardInterrupt lands in this thread; or a handler not set from Python, left alone
        return
    pressed = raised = False

    def press(signum: int, frame: Any) -> None:
        nonlocal pressed, raised
        if pressed and second_at_once and not raised:
            raised = True
            raise KeyboardInterrupt
        pressed = True

    signal.signal(signal.SIGINT, press)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed and not raised:
            signal.raise_signal(signal.SIGINT)  # the handler from before takes it now, as if it came now

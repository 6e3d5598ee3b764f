"""The function Tune runs for a trial, in a module that imports neither torch nor the engine: the driver only
pickles a reference to it (it would otherwise import torch, a second of a sweep's start-up, for nothing);
the trial's worker imports the trainable when the trial starts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lth_sweep.sweep.spec import LaunchSpec

REPORT_END_WAIT_S = 60.0  # at most this long a stopped trial's actor waits for the trial's end after its report
IN_REPORT = threading.Event()  # this worker's trial is inside `tune.report` (one trial per worker at a time)


def imp_trainable(params: dict[str, Any], spec: LaunchSpec) -> None:
    """A Ray Tune function trainable: one full IMP schedule (lth_sweep.sweep.trainable.imp_trainable)."""
    from lth_sweep.sweep import trainable

    trainable.imp_trainable(params, spec)


@contextmanager
def reporting() -> Iterator[None]:
    """Around a trial's `tune.report`: Tune stops a trial inside one (see `EndsItsReport`)."""
    IN_REPORT.set()
    try:
        yield
    finally:
        IN_REPORT.clear()


class EndsItsReport:
    """A mixin of Tune's class for our function trainable (Tune's `__mixins__`): when Tune stops the trial inside a
    report, the actor waits for the trial's function to end before it goes. Tune's own `cleanup` does not wait
    (`finish(timeout=0)`): when no other trial reuses the actor, Tune ends it at once, and the trial's clean-up
    after that report was cut (the W&B run's finish, its copy to the bucket, the node's mirror). A trial stopped
    mid-round is not waited for (it would train on to its next report). At a sweep's end Tune gives a stopping
    actor 10 s."""

    def cleanup(self) -> None:
        if IN_REPORT.is_set():
            session = None
            try:  # no public way to wait for the trial's thread; without this private module, Tune's own cleanup
                from ray.train._internal.session import get_session

                session = get_session()
            except ImportError:
                pass
            if session is not None and getattr(session, "training_started", False):
                try:  # sets the stop, lets the report raise SystemExit(0) and waits for the function's end
                    session.finish(timeout=REPORT_END_WAIT_S)
                except Exception:  # noqa: BLE001 - raised again by Tune's own cleanup below
                    pass
        super().cleanup()  # type: ignore[misc]

"""The function Tune runs for a trial, in a module that imports neither torch nor the engine: the driver only
pickles a reference to it (it would otherwise import torch, a second of a sweep's start-up, for nothing);
the trial's worker imports the trainable when the trial starts."""

from __future__ import annotations

from typing import Any

from lth_sweep.sweep.spec import LaunchSpec


def imp_trainable(params: dict[str, Any], spec: LaunchSpec) -> None:
    """A Ray Tune function trainable: one full IMP schedule (lth_sweep.sweep.trainable.imp_trainable)."""
    from lth_sweep.sweep import trainable

    trainable.imp_trainable(params, spec)

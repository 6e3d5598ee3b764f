"""`search.pack`: K configs that Optuna suggested, trained in one Ray Tune trial as one stacked population.

Tune sees one trial per pack; Optuna sees one trial per member. `PackSearcher` wraps the Optuna searcher: it
asks it for K suggestions under member ids `<trial id>_<j>` and hands them to one Tune trial as
`{"pack": [params_0, ..., params_K-1]}`; the trial's reports carry each member's own metrics under `members`,
which go back to Optuna under each member's id (`on_trial_result` per round, `on_trial_complete` when the pack
ends, with each member's last values). `members_of` expands a Tune trial into its members for everything that
shows trials (progress, status, report, tickets).

Schedulers. FIFO: every member trains all its rounds; the pack ends with its last member. ASHA: Tune's own ASHA
would stop whole packs, so a pack sweep runs Tune's FIFO and `MemberASHA` (a Ray actor in the driver's job)
applies asynchronous successive halving to members: after each of its rounds a member's objective is recorded
at the rung it reached, and a member below the rung's cutoff is stopped inside its pack (it reaches Optuna as
COMPLETE with its last value, as OptunaSearch treats a trial ASHA stopped); the pack goes on with the others.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lth_sweep.config import ExperimentConfig

PACK_KEY = "pack"
MEMBERS_KEY = "members"
ASSUMED_GPU_BYTES = 16 * 2**30  # `auto` when the driver sees no GPU (a cluster's head node): a 16 GiB GPU
MAX_AUTO_PACK = 64
PACK_CHECKPOINT_PREFIX = ".pack-checkpoint-"  # a pack's checkpoint while Tune takes it, in a member's config folder


def member_id(trial_id: str, index: int) -> str:
    return f"{trial_id}_{index}"


def tune_trial_of(trial_id: str) -> str:
    """The Tune trial of a pack member `<trial id>_<j>`, or the trial id itself (a searcher's Tune trial ids, 8 hex
    digits, have no `_`)."""
    return trial_id.rsplit("_", 1)[0]


def pack_checkpoint_dir(config_root: Path, trial_id: str) -> Path:
    """Where a pack trial builds its checkpoint while Tune takes it: in the folder of one of its configs, whose lock
    (`storage.exclusive`) the trial holds. So one found there by whoever holds that lock next is a killed trial's."""
    return config_root / f"{PACK_CHECKPOINT_PREFIX}{trial_id}"


def remove_pack_checkpoints(config_root: Path) -> None:
    """Removes the pack checkpoints that killed trials left in a config's folder; call holding the config's lock.
    (Their hard links would keep the engine files of a node's released copy on its disk.)"""
    for folder in config_root.glob(f"{PACK_CHECKPOINT_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)


def is_pack(config: dict[str, Any]) -> bool:
    return PACK_KEY in config


@dataclass(frozen=True)
class MemberView:
    """One config of a Tune trial (the trial itself when it is not a pack): its id, searched values, last result."""

    member_id: str
    params: dict[str, Any]
    result: dict[str, Any]


def members_of(trial_id: str, config: dict[str, Any], last_result: dict[str, Any] | None) -> list[MemberView]:
    last_result = last_result or {}
    if not is_pack(config):
        return [MemberView(trial_id, dict(config), last_result)]
    results = last_result.get(MEMBERS_KEY) or []
    return [MemberView(member_id(trial_id, j), dict(params), results[j] if j < len(results) else {})
            for j, params in enumerate(config[PACK_KEY])]


# ------------------------------------------------------------------------------------------ ASHA over members


class MemberRungs:
    """Asynchronous successive halving over pack members, by the rule Ray's ASHAScheduler applies to trials (one
    bracket): rungs at grace * rf^k rounds up to `max_rounds`; the first time a member reaches a rung it stops if
    its value is below the (1 - 1/rf) quantile of the values recorded there before it (sign-flipped for `mode`
    min), and its value is recorded there."""

    def __init__(self, max_rounds: int, grace_rounds: int, reduction_factor: float, mode: str) -> None:
        self.sign = 1.0 if mode == "max" else -1.0
        self.rf = reduction_factor
        count = int(math.log(max_rounds / grace_rounds) / math.log(reduction_factor) + 1)
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (grace_rounds * reduction_factor ** k, {}) for k in reversed(range(count))]  # highest first

    def on_result(self, member: str, rounds_done: int, value: float | None) -> bool:
        """True when the member must stop after `rounds_done` rounds with objective `value`."""
        import numpy as np

        score = math.nan if not isinstance(value, int | float) else self.sign * value
        for milestone, recorded in self.rungs:
            if rounds_done < milestone or member in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            recorded[member] = score
            return cutoff is not None and bool(score < cutoff)
        return False


def member_asha_actor():
    """The Ray actor class that holds the rungs for every pack of a sweep (one per driver)."""
    import ray

    return ray.remote(num_cpus=0)(MemberRungs)


ACTOR_NAMESPACE = "lth_sweep"


def asha_actor_name(sweep_name: str) -> str:
    return f"lth_sweep_member_asha_{sweep_name}"


# ------------------------------------------------------------------------------------------ pack size


def member_bytes(config: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int = 10) -> int:
    """A generous estimate of one member's GPU memory: weights, gradients, optimizer state, masks, rewind point
    (8 copies of the parameters), and the activations of one batch forward and backward, per replicate."""
    import torch

    from lth_sweep.engine.models import build_model

    with torch.device("meta"):
        model = build_model(config.model, input_shape, num_classes)
    params = sum(p.numel() for p in model.parameters())
    activations = 0

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape, device="meta"))
    for hook in hooks:
        hook.remove()
    per_replicate = 4 * (8 * params + 3 * activations * config.train.batch_size)
    return per_replicate * config.replicates


INPUT_SHAPES = {"mnist1d": (40,), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def auto_pack(config: ExperimentConfig, gpu_fraction: float, num_samples: int) -> int:
    """`search.pack: auto`: 1 on a CPU; on a GPU as many members as fit 70% of the trial's share of its memory
    (the driver's first GPU, or ASSUMED_GPU_BYTES when the driver has none), at most MAX_AUTO_PACK."""
    if gpu_fraction <= 0:
        return 1
    import torch

    total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else ASSUMED_GPU_BYTES
    fits = int(0.7 * total * min(gpu_fraction, 1.0) // member_bytes(config, INPUT_SHAPES[config.dataset.name]))
    return max(1, min(fits, MAX_AUTO_PACK, num_samples))

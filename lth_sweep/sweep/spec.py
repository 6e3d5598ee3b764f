"""The launch spec: everything a sweep's driver and its trials need, validated once at launch, saved as
`<sweep>/sweep.json` and read back by `resume`, `status` and `report`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from lth_sweep import storage
from lth_sweep.config import ExperimentConfig, build_experiment
from lth_sweep.errors import UserError
from lth_sweep.sweep.lock import LEASE_FILE, LOCK_FILE
from lth_sweep.sweep.schema import ROUNDS_KEY, SweepConfig, top_of_searched_rounds

SPEC_FILE = "sweep.json"


class LaunchSpec(BaseModel):
    """A sweep as launched: its file (validated), the fixed experiment keys, where it lives, the W&B mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: SweepConfig
    experiment: dict[str, Any]  # the experiment's keys before the searched values are applied
    experiment_dir: str  # an absolute folder or a URI
    wandb_mode: Literal["online", "offline", "disabled"]
    _rounds: int | None = PrivateAttr(default=None)  # rounds(), built once

    @property
    def name(self) -> str:
        return self.sweep.name or "sweep"

    def trial_config(self, params: dict[str, Any]) -> ExperimentConfig:
        """The experiment one trial runs: the fixed keys, the searched values, one thread per CPU asked for."""
        threads = max(1, int(self.sweep.resources.cpu))
        return build_experiment(self.experiment, {**params, "runtime.threads": threads})

    def rounds(self) -> int:
        """IMP rounds of a trial whose searched values leave `prune.rounds` as the experiment sets it."""
        if self._rounds is None:
            self._rounds = build_experiment(self.experiment).prune.rounds
        return self._rounds

    def rounds_of(self, params: dict[str, Any]) -> int:
        """IMP rounds of the trial with these searched values (`prune.rounds` may be one of them)."""
        searched = params.get(ROUNDS_KEY)
        return int(searched) if isinstance(searched, int | float) else self.rounds()

    def searched_rounds(self) -> bool:
        return ROUNDS_KEY in self.sweep.search.space

    def max_rounds(self) -> int:
        """The most rounds any trial of the sweep can have (the top of a searched `prune.rounds`)."""
        return top_of_searched_rounds(self.sweep.search.space) or self.rounds()

    def to_json(self) -> str:
        return self.model_dump_json(indent=1, by_alias=True)


def save_spec(spec: LaunchSpec) -> None:
    storage.write_text(storage.join(spec.experiment_dir, SPEC_FILE), spec.to_json())


def load_spec(path: str) -> LaunchSpec:
    """The spec of the sweep at `path` (a folder or URI), with `experiment_dir` set to where it is now."""
    experiment_dir = storage.normalize(path)
    spec_path = storage.join(experiment_dir, SPEC_FILE)
    storage.check_reachable(spec_path, "PATH")
    if not storage.exists(spec_path):
        if any(storage.exists(storage.join(experiment_dir, name)) for name in (LOCK_FILE, LEASE_FILE)):
            raise UserError("PATH", f"no sweep at {experiment_dir} ({SPEC_FILE} is missing): the launch that "
                                    "began it was stopped before it saved the sweep (or is starting now), so "
                                    "nothing of it ran; run that `lth-sweep launch` again")
        raise UserError("PATH", f"no sweep at {experiment_dir} ({SPEC_FILE} is missing); "
                                "give the folder that `lth-sweep launch` printed")
    try:
        spec = LaunchSpec.model_validate_json(storage.read_text(spec_path))
    except ValidationError as err:
        raise UserError("PATH", f"{spec_path} is not a sweep spec this version can read "
                                f"({err.errors()[0]['msg']})") from None
    return spec.model_copy(update={"experiment_dir": experiment_dir})  # the folder may have moved

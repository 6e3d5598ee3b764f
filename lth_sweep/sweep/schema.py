"""The sweep file: which experiment, the search space over its dotted keys, search settings, the
objective, per-trial resources, W&B and storage. Validated completely before Ray starts."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from lth_sweep.config import ExperimentConfig, NumbersNotBooleans, build_experiment, read_yaml, set_dotted
from lth_sweep.errors import UserError
from lth_sweep.storage import is_uri


class Section(NumbersNotBooleans):
    model_config = ConfigDict(extra="forbid")


KINDS = ("uniform", "loguniform", "integer", "choice")


class Distribution(Section):
    """Exactly one of: uniform [low, high], loguniform [low, high], int [low, high] (inclusive), choice [...]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(default=None, alias="int")
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, int, choice")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
            return self
        low, high = getattr(self, kind)
        if high < low or (high == low and kind != "integer"):
            raise ValueError(f"bounds are the wrong way round: [{low}, {high}]; need low < high")
        if kind == "loguniform" and low <= 0:
            raise ValueError("loguniform needs 0 < low < high")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def extremes(self) -> list[Any]:
        """Values that must all be valid experiment settings: the bounds, or every choice."""
        return list(self.choice) if self.kind == "choice" else list(getattr(self, self.kind))

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.uniform)
        if self.kind == "loguniform":
            return tune.loguniform(*self.loguniform)
        if self.kind == "integer":
            return tune.randint(self.integer[0], self.integer[1] + 1)  # randint's upper bound is exclusive
        return tune.choice(self.choice)


class SearchConfig(Section):
    space: dict[str, Distribution] = Field(default_factory=dict)
    num_samples: int = Field(default=8, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1,
                                       description="None = as many as fit this machine (every sample on a cluster)")
    sampler: Literal["tpe", "gp", "random", "nsga2"] = "tpe"
    seed: int = 0
    pack: int | Literal["auto"] = Field(default=1, description="configs per trial, trained as one stacked population; "
                                        "auto = as many as fit the GPU's memory, 1 on a CPU")

    @field_validator("pack", mode="before")
    @classmethod
    def _positive_pack(cls, value: Any) -> int | str:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"{value!r} is not allowed; allowed: a positive integer (configs per trial) or auto")


class ObjectiveConfig(Section):
    name: Literal["matching_density", "stable_matching_density", "best_val_acc", "val_acc_at_density",
                  "pareto"] = "matching_density"
    tolerance: float = Field(default=0.01, ge=0, lt=1, description="matching: val_acc >= dense val_acc - tolerance")
    min_dense_val_acc: float = Field(
        default=0.15, ge=0, lt=1,
        description="matching objectives: a trial whose dense val_acc is below this did not learn (chance is 0.1 "
                    "on the ten-class datasets), so every round would match it; it scores 1.0")
    instability_bound: float = Field(default=0.02, ge=0, le=1,
                                     description="stable_matching_density: instability <= this (test error)")
    target_density: float = Field(default=0.1, gt=0, le=1, description="for val_acc_at_density")


class SchedulerConfig(Section):
    name: Literal["fifo", "asha"] = "fifo"
    grace_rounds: int = Field(default=2, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class ResourcesConfig(Section):
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0, description="fractions pack several trials on one GPU")


class WandbConfig(Section):
    project: str = "lth-sweep"
    entity: str | None = None
    group: str | None = Field(default=None, description="None = the sweep's name")
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class OptunaConfig(Section):
    storage: str | None = Field(default=None, description="a database URL (sqlite:///, postgresql://, mysql://) "
                                "a whole cluster can reach; None = a journal file in the sweep folder")

    @model_validator(mode="after")
    def _url(self) -> OptunaConfig:
        if self.storage is not None and not re.fullmatch(r"[a-z][a-z0-9+]*://.+", self.storage):
            raise UserError("optuna.storage", f"'{self.storage}' is not a database URL; allowed: "
                                              "sqlite:///PATH, postgresql://..., mysql://... or null")
        return self


class SweepConfig(Section):
    name: str | None = None
    experiment: str | dict[str, Any] = "experiments/mnist1d_mlp.yaml"
    set: dict[str, Any] = Field(default_factory=dict, description="fixed dotted overrides of the experiment")
    search: SearchConfig = Field(default_factory=SearchConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)
    storage: str = "runs/sweeps"
    storage_shared: bool = Field(default=False, description="a local `storage` folder is mounted at the same "
                                                            "path on every node (NFS): allowed on a cluster")
    max_failures: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _compatible(self) -> SweepConfig:
        # UserError, not ValueError: pydantic passes it through with the key that is wrong
        if self.objective.name == "pareto" and self.scheduler.name == "asha":
            raise UserError("scheduler.name", "asha needs a single objective, and objective pareto is "
                                              "multi-objective; allowed with pareto: fifo")
        if self.objective.name == "pareto" and self.search.sampler == "gp":
            raise UserError("search.sampler", "gp is single-objective here; allowed with pareto: nsga2, tpe, random")
        return self


def objective_metrics(objective: ObjectiveConfig) -> tuple[list[str], list[str]]:
    """Tune metric names and modes for the objective."""
    if objective.name == "pareto":
        return ["density", "val_acc"], ["min", "max"]
    mode = "min" if objective.name in ("matching_density", "stable_matching_density") else "max"
    return ["objective"], [mode]


def _validation_error(err: ValidationError) -> UserError:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"] if str(p) not in ("function-after[_exactly_one()]",))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key in the sweep file"
    return UserError(key or "sweep", msg)


def resolve_experiment(sweep: SweepConfig, base_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The experiment as a plain dict: the file (relative to the sweep file) or inline keys, plus `set`."""
    if isinstance(sweep.experiment, str):
        path = Path(sweep.experiment).expanduser()
        raw = read_yaml(path if path.is_absolute() else base_dir / path, "experiment")
    else:
        raw = dict(sweep.experiment)
    fixed = {**sweep.set, **{k: v for k, v in overrides.items() if not k.startswith(SWEEP_KEYS)}}
    for key, value in fixed.items():
        set_dotted(raw, key, value)
    return raw


def check_fixed_not_searched(sweep: SweepConfig, overrides: dict[str, Any]) -> None:
    """A key fixed by `set:` or `--set` and searched as well would be drawn anew by every trial: the fixed value
    would be silently lost."""
    fixed = {**{f"set.{k}": k for k in sweep.set},
             **{k: k for k in overrides if not k.startswith(SWEEP_KEYS)}}
    for name, key in fixed.items():
        searched = next((s for s in sweep.search.space if s == key or s.startswith(key + ".")), None)
        if searched is not None:
            what = "is searched too" if searched == key else f"holds {searched}, which is searched"
            search_it = f", or to search it, drop the sweep file's with --set {name}=null" if name != key else ""
            raise UserError(name, f"{what} (search.space.{searched}): every trial would draw its own value over "
                                  "this one; to fix it, drop it from the space with "
                                  f"--set search.space.{searched}=null{search_it}")


FILE_SET = "set."  # --set set.KEY=null drops KEY from the sweep file's `set:`
SWEEP_KEYS = ("search.", "objective.", "scheduler.", "resources.", "wandb.", "optuna.", "storage", "name",
              "max_failures", "experiment", FILE_SET)


MAX_CORNERS = 4096


def check_space(experiment: dict[str, Any], space: dict[str, Distribution]) -> ExperimentConfig:
    """Every bound (or choice) of every searched key is a valid experiment, alone and in every
    combination with the others' bounds (up to MAX_CORNERS combinations, then the all-low and
    all-high ones), so no trial can draw a config that fails."""
    base = build_experiment(experiment)
    for key, dist in space.items():
        for value in dist.extremes():
            try:
                build_experiment(experiment, {key: value})
            except UserError as err:
                raise UserError(f"search.space.{key}", f"value {value!r} is not allowed: {err.message}") from None
        check_fractional_draws(experiment, key, dist)
    extremes = {key: dist.extremes() for key, dist in space.items()}
    if math.prod(len(v) for v in extremes.values()) <= MAX_CORNERS:
        corners = itertools.product(*extremes.values())
    else:
        corners = iter([tuple(v[0] for v in extremes.values()), tuple(v[-1] for v in extremes.values())])
    for corner in corners:
        values = dict(zip(extremes, corner, strict=True))
        try:
            build_experiment(experiment, values)
        except UserError as err:
            together = ", ".join(f"{k}={v!r}" for k, v in values.items())
            key = err.key if err.key in space else next(iter(space))
            raise UserError(f"search.space.{key}", f"the space allows {together}, which is not a valid "
                                                   f"experiment: {err.message}") from None
    return base


def check_fractional_draws(experiment: dict[str, Any], key: str, dist: Distribution) -> None:
    """A continuous distribution draws between its bounds: whole-number bounds of an integer key pass, the
    draws would not (every trial would fail), so a value with a fraction is tried too."""
    if dist.kind not in ("uniform", "loguniform"):
        return
    low, high = getattr(dist, dist.kind)
    inside = low + 0.5 if low + 0.5 < high else (low + high) / 2
    try:
        build_experiment(experiment, {key: inside})
    except UserError as err:
        hint = f"; for a whole-number key use int: [{low:g}, {high:g}]" if low == int(low) and high == int(high) else ""
        raise UserError(f"search.space.{key}", f"{dist.kind} draws values such as {inside:g}, which is not allowed: "
                                               f"{err.message}{hint}") from None


def relative_to_file(location: str, base_dir: Path) -> str:
    """A sweep file's `storage:` folder is relative to the file, like `experiment:`; a URI stays as it is."""
    if is_uri(location):
        return location
    folder = Path(location.removeprefix("file://")).expanduser()
    return str(folder if folder.is_absolute() else base_dir / folder)


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[SweepConfig, dict[str, Any]]:
    """Reads and validates a sweep file; returns it with the resolved (fixed) experiment dict."""
    path = Path(path)
    tree = read_yaml(path, "sweep")
    overrides = overrides or {}
    storage_from_file = "storage" in tree and "storage" not in overrides
    for key, value in overrides.items():
        if key.startswith("search.space."):  # the space's own keys are dotted: search.space.prune.rate.uniform
            space = tree.setdefault("search", {}).setdefault("space", {})
            if value is None and isinstance(space, dict) and key.removeprefix("search.space.") in space:
                del space[key.removeprefix("search.space.")]  # search.space.KEY=null: KEY is searched no more
                continue
            searched, _, kind = key.removeprefix("search.space.").rpartition(".")
            if kind not in ("uniform", "loguniform", "int", "choice") or not searched:
                raise UserError(key, "set a searched key's distribution as search.space.KEY.KIND=VALUE "
                                     "with KIND one of uniform, loguniform, int, choice, or drop a searched key "
                                     "with search.space.KEY=null")
            space[searched] = {kind: value}
        elif key.startswith(FILE_SET):  # set.KEY=null: the sweep file's fixed KEY is fixed no more
            fixed = tree.get("set") if isinstance(tree.get("set"), dict) else {}
            if value is not None or key.removeprefix(FILE_SET) not in fixed:
                raise UserError(key, f"only drops a key of the sweep file's set: (allowed: null, for one of "
                                     f"{', '.join(sorted(fixed)) or 'its keys; it has none'}); fix an experiment key "
                                     "with --set KEY=VALUE")
            del fixed[key.removeprefix(FILE_SET)]
        elif key.startswith(SWEEP_KEYS):
            set_dotted(tree, key, value)
    if not isinstance((tree.get("search") or {}).get("space", {}), dict):
        raise UserError("search.space", "must map dotted experiment keys to distributions")
    try:
        sweep = SweepConfig.model_validate(tree)
    except ValidationError as err:
        raise _validation_error(err) from None
    if sweep.name is None:
        sweep.name = path.stem
    if storage_from_file:
        sweep.storage = relative_to_file(sweep.storage, path.parent)
    check_fixed_not_searched(sweep, overrides)
    experiment = resolve_experiment(sweep, path.parent, overrides)
    try:
        check_space(experiment, sweep.search.space)
    except UserError as err:
        if err.key.startswith("search.space"):
            raise
        raise UserError(f"experiment.{err.key}" if err.key != "experiment" else err.key, err.message) from None
    check_objective_needs(sweep, experiment)
    check_scheduler_takes_effect(sweep, experiment)
    return sweep, experiment


ROUNDS_KEY = "prune.rounds"


def top_of_searched_rounds(space: dict[str, Distribution]) -> int | None:
    """The most rounds a searched `prune.rounds` can draw; None when it is not searched."""
    rounds = space.get(ROUNDS_KEY)
    return None if rounds is None else max(int(v) for v in rounds.extremes())


def check_scheduler_takes_effect(sweep: SweepConfig, experiment: dict[str, Any]) -> None:
    """ASHA whose first rung comes after the last round would stop nothing, silently. (FIFO ignores ASHA's keys,
    so that `--set scheduler.name=fifo` works on a sweep file written for ASHA.)"""
    scheduler = sweep.scheduler
    if scheduler.name != "asha":
        return
    rounds = top_of_searched_rounds(sweep.search.space) or build_experiment(experiment).prune.rounds
    if scheduler.grace_rounds > rounds:
        raise UserError("scheduler.grace_rounds", f"{scheduler.grace_rounds} is past the last round ({rounds} "
                                                  f"rounds): ASHA would stop nothing; allowed: 1 to {rounds}")


def check_objective_needs(sweep: SweepConfig, experiment: dict[str, Any]) -> None:
    """Every objective reads each round's val_acc: the experiment must hold a validation set out (a `run` may go
    without one). stable_matching_density reads each round's instability: the experiment must record it."""
    if "dataset.val_size" not in sweep.search.space and build_experiment(experiment).dataset.val_size == 0:
        raise UserError("dataset.val_size", f"0 leaves no validation set, and the objective {sweep.objective.name} "
                                            "scores each round's val_acc; give at least 1 (or leave it out)")
    if sweep.objective.name != "stable_matching_density" or "stability.points" in sweep.search.space:
        return
    if not build_experiment(experiment).stability.points:
        raise UserError("objective.name", "stable_matching_density needs each round's instability: set "
                                          "stability.points (>= 3) in the experiment or the sweep's set:")

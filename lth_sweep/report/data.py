"""A sweep read from its storage into typed rows for the report: its trials, their rounds, the best ones.
Reads files only; works on a finished sweep and on one that is still running (or whose driver died)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lth_sweep.sweep.objectives import no_winning_round, winning_round
from lth_sweep.sweep.schema import Distribution
from lth_sweep.sweep.spec import LaunchSpec, load_spec
from lth_sweep.sweep.status import status_and_rounds


@dataclass(frozen=True)
class Series:
    """One metric of a round for the ticket, its control (when the sweep has one) and their spreads."""

    ticket: float
    ticket_std: float | None = None
    control: float | None = None
    control_std: float | None = None


@dataclass(frozen=True)
class RoundRow:
    """One finished IMP round of one trial."""

    round: int
    density: float  # fraction of prunable weights left, 0-1
    val_acc: Series
    test_acc_at_early_stop: Series
    early_stop_iter: Series
    test_acc: float
    seconds: float
    instability: Series | None = None  # when the round measured it (stability.points)

    @property
    def percent_remaining(self) -> float:
        return 100 * self.density

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RoundRow:
        def series(key: str) -> Series:
            return Series(record[key], record.get(f"{key}_std"), record.get(f"control_{key}"),
                          record.get(f"control_{key}_std"))

        measured = isinstance(record.get("instability"), int | float)
        return cls(round=record["round"], density=record["density"], val_acc=series("val_acc"),
                   test_acc_at_early_stop=series("test_acc_at_early_stop"), early_stop_iter=series("early_stop_iter"),
                   test_acc=record["test_acc"], seconds=record.get("seconds", 0.0),
                   instability=series("instability") if measured else None)


@dataclass(frozen=True)
class TrialRow:
    """One Tune trial: what Optuna chose, where it stands, and its rounds (from the by-config engine state)."""

    trial_id: str
    state: str
    params: dict[str, Any]
    config_hash: str | None
    objective: float | None
    rounds: list[RoundRow] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # the raw round records, for rounds.csv
    stopped_early: bool = False  # ASHA ended it before its last round

    @property
    def density_reached(self) -> float | None:
        """How far the trial pruned: its last round's density (not its winning ticket's)."""
        return self.rounds[-1].density if self.rounds else None


@dataclass(frozen=True)
class SweepData:
    """Everything the report shows about one sweep."""

    spec: LaunchSpec
    name: str
    experiment_dir: str
    objective: str
    metrics: list[str]
    modes: list[str]
    num_samples: int
    counts: dict[str, int]
    trials: list[TrialRow]
    best: list[TrialRow]  # single objective: as `status` ranks them; pareto: the trials on the front
    pareto: list[dict[str, Any]]  # the Pareto front over every round, as `status` has it
    warnings: list[str] = field(default_factory=list)  # what `status` could not read

    @property
    def space(self) -> dict[str, Distribution]:
        return self.spec.sweep.search.space

    @property
    def single_objective(self) -> bool:
        return len(self.metrics) == 1

    def values_of(self, key: str, fixed: Any) -> list[Any]:
        """The values the trials have for an experiment key: the fixed one, or, when the key is searched,
        each value some trial drew (in the order of the trials)."""
        if key not in self.space:
            return [fixed]
        return list(dict.fromkeys(t.params.get(key, fixed) for t in self.trials)) or [fixed]

    @property
    def control(self) -> str | None:
        """The control trained beside the tickets ('reinit or random_mask' when `control` is searched), or None."""
        controls = [c for c in self.values_of("control", self.spec.trial_config({}).control) if c != "none"]
        return " or ".join(controls) or None

    @property
    def control_searched(self) -> bool:
        return "control" in self.space

    def replicate_counts(self) -> list[int]:
        return [int(r) for r in self.values_of("replicates", self.spec.trial_config({}).replicates)]

    @property
    def replicates(self) -> int:
        """Replicates per trial: the most any trial trains, when `replicates` is searched."""
        return max(self.replicate_counts())

    @property
    def replicates_text(self) -> str:
        """'3', or '1–3' when the trials train different numbers of replicates."""
        counts = self.replicate_counts()
        low, high = min(counts), max(counts)
        return str(high) if low == high else f"{low}–{high}"

    def winning_ticket(self, trial: TrialRow) -> RoundRow | None:
        """The trial's winning ticket (a round), as the sweep's objective scores it; None before its first round
        or when no round qualifies."""
        record = winning_round(trial.records, self.spec.sweep.objective) if trial.records else None
        return RoundRow.from_record(record) if record else None

    def no_ticket_reason(self, trial: TrialRow) -> str:
        """Why a trial with rounds has no winning ticket, in words."""
        return no_winning_round(trial.records, self.spec.sweep.objective)

    @property
    def with_rounds(self) -> list[TrialRow]:
        return [t for t in self.trials if t.rounds]

    @property
    def finished(self) -> list[TrialRow]:
        """Trials Optuna would count: terminated, with a finite objective."""
        return [t for t in self.trials if t.state == "TERMINATED" and is_number(t.objective)]

    def compute_seconds(self) -> float:
        """Wall seconds of every finished round of every trial (tickets and their controls)."""
        return sum(r.seconds for t in self.trials for r in t.rounds)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_sweep_data(path: str) -> SweepData:
    """The sweep at `path` (a folder or URI), as `lth-sweep status` sees it, with every trial's rounds."""
    spec = load_spec(path)
    status, records_of = status_and_rounds(spec)
    trials = []
    for row in status["trials"]:
        records = records_of[row["trial_id"]]
        trials.append(TrialRow(trial_id=row["trial_id"], state=row["state"], params=row["params"],
                               stopped_early=row["stopped_early"],
                               config_hash=row["config_hash"], objective=row["objective"],
                               rounds=[RoundRow.from_record(r) for r in records], records=records))
    by_id = {t.trial_id: t for t in trials}
    if "best" in status:
        best = [by_id[row["trial_id"]] for row in status["best"]]
    else:
        on_front = list(dict.fromkeys(p["trial_id"] for p in status["pareto"]))
        best = [by_id[trial_id] for trial_id in on_front if trial_id in by_id]
    return SweepData(spec=spec, name=status["name"], experiment_dir=status["experiment_dir"],
                     objective=status["objective"], metrics=status["metric"], modes=status["mode"],
                     num_samples=status["num_samples"], counts=status["counts"], trials=trials, best=best,
                     pareto=status["pareto"], warnings=status["warnings"])

"""W&B for one trial: one run per trial (stable id, resumed on restart), round metrics against `round`,
validation curves against a global iteration. W&B trouble never fails a trial: the first error is
logged and tracking switches off for that trial.

Every row is logged at an explicit W&B step derived from the trial's global iteration (a curve point
at 2 * iteration, round r's record just after its last point, at 2 * (r + 1) * iterations_per_round + 1;
charts use `round` and `curve/iteration` as their x-axes), so a restarted trial may log a round again
without duplicating it:
W&B drops rows whose step is not past the run's last one (online at once, offline when the run
folders are synced in order). Rows are only known to be on disk once the run is finished, so that
is when `logged_rounds.json` advances; a trial killed before then logs its rounds again.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lth_sweep.checkpoint import write_text
from lth_sweep.sweep.schema import WandbConfig

log = logging.getLogger(__name__)

LOGGED_ROUNDS_FILE = "logged_rounds.json"  # in the trial's W&B folder
SUMMARY_MODES = {"val_acc": "max", "test_acc": "max", "test_acc_at_early_stop": "max", "density": "min",
                 "val_loss_min": "min"}


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """`auto` is online when an API key is configured, otherwise offline."""
    if mode == "auto":
        return "online" if has_api_key() else "offline"
    return mode


def scalar_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a round record, with density_by_kind flattened."""
    out = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for kind, value in record.get("density_by_kind", {}).items():
        out[f"density_{kind}"] = value
    return out


class Tracker:
    """Logs one trial to W&B; `logged_rounds_path` remembers which rounds reached W&B."""

    def __init__(self, settings: WandbConfig, group: str, run_id: str, run_name: str,
                 config: dict[str, Any], directory: Path, objective_mode: str | None,
                 iterations_per_round: int) -> None:
        self.run = None
        self.mode = resolve_mode(settings.mode)
        self.iterations_per_round = iterations_per_round
        self.logged_rounds_path = directory / LOGGED_ROUNDS_FILE
        self.logged_round = -1  # flushed to W&B's files by a finished run
        self.pending_round = -1  # handed to W&B in this process
        if self.mode == "disabled":
            return
        if self.logged_rounds_path.exists():
            self.logged_round = json.loads(self.logged_rounds_path.read_text())["round"]
        try:
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=settings.project, entity=settings.entity, group=group, name=run_name, id=run_id,
                resume="allow", config=config, dir=str(directory), mode=self.mode, reinit="create_new",
                settings=wandb.Settings(init_timeout=60, console="off", x_disable_stats=True),
            )
            self.run.define_metric("round")
            self.run.define_metric("curve/iteration")
            self.run.define_metric("curve/*", step_metric="curve/iteration")
            for key, summary in SUMMARY_MODES.items():
                self.run.define_metric(key, step_metric="round", summary=summary)
            if objective_mode is not None:
                self.run.define_metric("objective", step_metric="round", summary=objective_mode)
            self.run.define_metric("*", step_metric="round")
        except Exception as err:  # noqa: BLE001 - tracking must never fail the trial
            self._give_up(err)

    def _give_up(self, err: BaseException) -> None:
        log.warning("W&B tracking is off for this trial: %s", err)
        self.run = None

    def log_round(self, record: dict[str, Any], extra: dict[str, Any]) -> None:
        """Logs a round unless it already reached W&B before a restart."""
        if record["round"] <= self.logged_round or self.run is None:
            return
        try:
            self.run.log({**scalar_metrics(record), **extra},
                         step=2 * (record["round"] + 1) * self.iterations_per_round + 1)
            self.pending_round = record["round"]
        except Exception as err:  # noqa: BLE001
            self._give_up(err)

    def log_curve(self, values: dict[str, float], global_iteration: int) -> None:
        """A validation point of the ticket's training, at its global iteration."""
        if self.run is None:
            return
        try:
            self.run.log({f"curve/{k}": v for k, v in values.items()}, step=2 * global_iteration)
        except Exception as err:  # noqa: BLE001
            self._give_up(err)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.finish()
            wandb.teardown()  # stop W&B's service now, not in an atexit hook of a worker Ray is killing
            if self.pending_round > self.logged_round:
                self.logged_round = self.pending_round
                write_text(self.logged_rounds_path, json.dumps({"round": self.logged_round}))
        except Exception as err:  # noqa: BLE001
            log.warning("W&B finish failed: %s", err)
        self.run = None

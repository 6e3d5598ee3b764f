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

The API key is never handed around by us: W&B reads it in each process from `WANDB_API_KEY` or its own
credential file. Online start-up is bounded (`WANDB_INIT_TIMEOUT`, default WANDB_INIT_TIMEOUT_S); when it
fails, the trial writes offline run files instead, with one warning line.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lth_sweep.checkpoint import write_text
from lth_sweep.errors import UserError
from lth_sweep.sweep.objectives import BEST_BY_VAL_KEYS
from lth_sweep.sweep.schema import WandbConfig

log = logging.getLogger(__name__)

LOGGED_ROUNDS_FILE = "logged_rounds.json"  # in the trial's W&B folder
# test numbers are summarized by the last round, never by a maximum over rounds (that would pick the best
# test number across sparsities); the round chosen by validation is logged as best_by_val_* (last = so far)
SUMMARY_MODES = {"val_acc": "max", "test_acc": "last", "test_acc_at_early_stop": "last", "density": "min",
                 "val_loss_min": "min", **{f"best_by_val_{key}": "last" for key in BEST_BY_VAL_KEYS}}


def has_api_key(environ: Mapping[str, str] | None = None) -> bool:
    """A key in the environment or in W&B's credential file (~/.netrc, written by `wandb login`)."""
    if (os.environ if environ is None else environ).get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


# W&B's values of WANDB_MODE and what they mean here ("dryrun" and "run" are W&B's old names).
ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
WANDB_INIT_TIMEOUT_S = 10.0


def resolve_mode(mode: str, environ: Mapping[str, str] | None = None) -> str:
    """`auto`: an explicit WANDB_MODE in the environment wins; else online when an API key is configured,
    otherwise offline. A mode the sweep file names is kept."""
    if mode != "auto":
        return mode
    environ = os.environ if environ is None else environ
    explicit = environ.get("WANDB_MODE", "").strip().lower()
    if explicit:
        if explicit not in ENV_MODES:
            raise UserError("WANDB_MODE", f"'{explicit}' is not a W&B mode; allowed: {', '.join(ENV_MODES)}")
        return ENV_MODES[explicit]
    return "online" if has_api_key(environ) else "offline"


def init_timeout() -> float:
    """Seconds W&B may take to start a run: W&B's own WANDB_INIT_TIMEOUT if set, else a few seconds."""
    try:
        return float(os.environ["WANDB_INIT_TIMEOUT"])
    except (KeyError, ValueError):
        return WANDB_INIT_TIMEOUT_S


def first_line(err: BaseException) -> str:
    """An exception as one line (W&B's messages run over several)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# W&B's service in this process serves every run in it: a pack's members are several at once, each started in a
# thread of its own. A run counts from its Tracker's creation to its finish, and the service is stopped only when no
# run counts any more: stopping it under a run, even one still starting, loses that run's last rows. W&B's start,
# finish and stop are called one thread at a time: two runs starting at once raced in W&B's own service start (the
# loser got "Connection lost").
_runs: set[int] = set()
_runs_lock = threading.Lock()
_wandb_calls = threading.Lock()


def _run_begins(tracker_id: int) -> None:
    with _runs_lock:
        _runs.add(tracker_id)


def _run_ends(tracker_id: int) -> bool:
    """Whether it was the last run of this process (W&B's service may stop)."""
    with _runs_lock:
        _runs.discard(tracker_id)
        return not _runs


def _others_run(tracker_id: int) -> bool:
    with _runs_lock:
        return bool(_runs - {tracker_id})


def scalar_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a round record, with density_by_kind flattened."""
    out = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for kind, value in record.get("density_by_kind", {}).items():
        out[f"density_{kind}"] = value
    return out


class Tracker:
    """Logs one trial to W&B; `logged_rounds_path` remembers which rounds reached W&B.

    An offline run starts in a background thread (W&B's first start in a process takes ~0.5 s, a CPU's whole
    round here), and what is logged meanwhile is kept and handed to the run, in order, once it has started.
    An online run starts before the constructor returns, so that a fallback to offline files is reported
    with the trial's first round."""

    def __init__(self, settings: WandbConfig, group: str, run_id: str, run_name: str,
                 config: dict[str, Any], directory: Path, objective_mode: str | None,
                 iterations_per_round: int) -> None:
        self.run = None
        self.notices: list[str] = []  # warnings not yet shown on the driver's terminal
        self.mode = resolve_mode(settings.mode)
        self.iterations_per_round = iterations_per_round
        self.logged_rounds_path = directory / LOGGED_ROUNDS_FILE
        self.logged_round = -1  # flushed to W&B's files by a finished run
        self.pending_round = -1  # handed to W&B in this process
        self._lock = threading.Lock()  # guards the three fields below
        self._started = False  # the start has ended (with a run, or with self.run None after a failure)
        self._waiting: list[Callable[[], None]] = []  # calls logged before the run started
        self._thread_notices: list[str] = []  # notices of the start thread, moved to `notices` by the trial's thread
        self._starter: threading.Thread | None = None
        if self.mode == "disabled":
            self._started = True
            return
        if self.logged_rounds_path.exists():
            self.logged_round = json.loads(self.logged_rounds_path.read_text())["round"]
        directory.mkdir(parents=True, exist_ok=True)
        _run_begins(id(self))
        start = {"project": settings.project, "entity": settings.entity, "group": group, "name": run_name,
                 "id": run_id, "resume": "allow", "config": config, "dir": str(directory), "reinit": "create_new"}
        if self.mode == "online":
            self._begin(start, directory, objective_mode)
        else:
            self._starter = threading.Thread(target=self._begin, args=(start, directory, objective_mode),
                                             name="wandb-start", daemon=True)
            self._starter.start()

    def _begin(self, start: dict[str, Any], directory: Path, objective_mode: str | None) -> None:
        """Starts the run, defines its metrics, then hands it what was logged meanwhile."""
        run = None
        try:
            import wandb

            run = self._start(wandb, start, directory)
            run.define_metric("round")
            run.define_metric("curve/iteration")
            run.define_metric("curve/*", step_metric="curve/iteration")
            for key, summary in SUMMARY_MODES.items():
                run.define_metric(key, step_metric="round", summary=summary)
            if objective_mode is not None:
                run.define_metric("objective", step_metric="round", summary=objective_mode)
            run.define_metric("*", step_metric="round")
        except Exception as err:  # noqa: BLE001 - tracking must never fail the trial
            self._give_up(err)
            run = None
        with self._lock:
            self.run = run
            self._started = True
            waiting, self._waiting = self._waiting, []
            for call in waiting:  # under the lock: a call logged now waits behind these
                call()

    def _start(self, wandb: Any, start: dict[str, Any], directory: Path) -> Any:
        """wandb.init, bounded; online trouble falls back to offline run files under `directory`."""
        def settings() -> Any:
            return wandb.Settings(init_timeout=init_timeout(), console="off", x_disable_stats=True)

        try:
            with _wandb_calls:
                return wandb.init(mode=self.mode, settings=settings(), **start)
        except Exception as err:  # noqa: BLE001 - W&B raises several types (CommError, UsageError, ...)
            if self.mode != "online":
                raise
            self.notice(f"W&B did not start online ({first_line(err)}); this trial's run is written offline "
                        f"under {directory / 'wandb'} (upload it later with: wandb sync)")
        with _wandb_calls:
            if not _others_run(id(self)):  # the failed online run still holds its id in W&B's service
                wandb.teardown()
            self.mode = "offline"
            return wandb.init(mode="offline", settings=settings(), **start)

    def notice(self, text: str) -> None:
        """A warning for this worker's log and, through the trial's next report, the driver's terminal."""
        log.warning("%s", text)
        if threading.current_thread() is self._starter:
            self._thread_notices.append(text)
        else:
            self.notices.append(text)

    def _give_up(self, err: BaseException) -> None:
        self.notice(f"W&B tracking is off for this trial: {first_line(err)}")
        self.run = None

    def _call(self, call: Callable[[], None]) -> None:
        """Runs `call` now if the run has started, else once it has (in the order logged)."""
        with self._lock:
            if self._thread_notices:
                self.notices.extend(self._thread_notices)
                self._thread_notices.clear()
            if self._started:
                call()
            else:
                self._waiting.append(call)

    def log_round(self, record: dict[str, Any], extra: dict[str, Any]) -> None:
        """Logs a round unless it already reached W&B before a restart."""
        if record["round"] <= self.logged_round:
            return
        row = {**scalar_metrics(record), **extra}
        step = 2 * (record["round"] + 1) * self.iterations_per_round + 1

        def log() -> None:
            if self.run is None:
                return
            try:
                self.run.log(row, step=step)
                self.pending_round = record["round"]
            except Exception as err:  # noqa: BLE001
                self._give_up(err)

        self._call(log)

    def log_curve(self, values: dict[str, float], global_iteration: int) -> None:
        """A validation point of the ticket's training, at its global iteration."""
        row = {f"curve/{k}": v for k, v in values.items()}

        def log() -> None:
            if self.run is None:
                return
            try:
                self.run.log(row, step=2 * global_iteration)
            except Exception as err:  # noqa: BLE001
                self._give_up(err)

        self._call(log)

    def finish(self) -> None:
        """Waits for the run's start, finishes the run (W&B has then written its rows), stops W&B's service when
        no other run of this process counts (a pack's members), and records the run's rounds. The service is
        stopped now, not by W&B's atexit hook in a worker that Ray ends with its process group (the service is
        gone by then and the hook fails with a traceback); the next trial's start, in the background, starts it
        again."""
        if self._starter is not None:
            self._starter.join()
            self._starter = None  # let go of the thread here, in the trial's thread, not in Ray's main thread later
        for text in self._thread_notices:  # too late for a report: the worker's log has them
            self.notices.append(text)
        self._thread_notices.clear()
        if self.run is None:
            _run_ends(id(self))  # a run that gave up (or never started) keeps nothing of W&B's service busy
            return
        try:
            import wandb

            with _wandb_calls:
                try:
                    self.run.finish()
                finally:
                    last = _run_ends(id(self))
                if last:
                    wandb.teardown()
            if self.pending_round > self.logged_round:
                self.logged_round = self.pending_round
                write_text(self.logged_rounds_path, json.dumps({"round": self.logged_round}))
        except Exception as err:  # noqa: BLE001
            log.warning("W&B finish failed: %s", err)
        self.run = None

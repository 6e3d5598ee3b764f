"""What the terminal shows while a sweep runs: one line per finished round (trials running and done, rounds
done, best objective so far); the terminal itself is lth_sweep.sweep.terminal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from lth_sweep.sweep.packing import members_of
from lth_sweep.sweep.spec import LaunchSpec
from lth_sweep.sweep.terminal import Terminal


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress(Callback):
    """Tune callback: a line per round a trial reports, a line per trial that fails."""

    def __init__(self, terminal: Terminal | None, spec: LaunchSpec, metric: str | None, mode: str | None) -> None:
        self.terminal = terminal
        self.spec = spec  # each config's own number of rounds (`prune.rounds` may be searched)
        self.num_samples = spec.sweep.search.num_samples
        self.metric, self.mode = metric, mode  # None for a multi-objective sweep: no single "best"
        self.started = time.monotonic()
        self.seen: dict[str, int] = {}  # rounds done per config already printed

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl; a resumed sweep installs a fresh Progress
        return {**self.__dict__, "terminal": None}

    def say(self, text: str) -> None:
        if self.terminal is not None:
            elapsed = int(time.monotonic() - self.started)
            self.terminal.line(f"[{elapsed // 60:d}:{elapsed % 60:02d}] {text}")

    def overview(self, trials: list[Any], latest: tuple[Any, dict[str, Any]] | None = None) -> str:
        """'2 running, 3/8 trials done, 19/40 rounds, best 0.1983' over every config Tune knows (a pack's
        members each count as a trial); when `prune.rounds` is searched, the rounds have no total."""
        results = {trial.trial_id: trial.last_result or {} for trial in trials}
        if latest is not None:
            results[latest[0].trial_id] = latest[1]
        running = done = failed = rounds = 0
        finished: list[float] = []
        for trial in trials:
            for member in members_of(trial.trial_id, trial.config, results[trial.trial_id]):
                rounds_done = int(member.result.get("rounds_done") or 0)
                rounds += rounds_done
                all_rounds = rounds_done >= self.spec.rounds_of(member.params)
                if trial.status == "TERMINATED" or all_rounds or member.result.get("stopped"):
                    done += 1
                    value = member.result.get(self.metric) if self.metric else None
                    if all_rounds and isinstance(value, int | float):
                        finished.append(value)
                elif trial.status == "RUNNING":
                    running += 1
                failed += trial.status == "ERROR"
        of_all = "" if self.spec.searched_rounds() else f"/{self.num_samples * self.spec.rounds()}"
        text = (f"{running} running, {done}/{self.num_samples} trials done"
                f"{f', {failed} failed' if failed else ''}, {rounds}{of_all} rounds")
        if self.metric is not None and finished:
            text += f", best {format_value(min(finished) if self.mode == 'min' else max(finished))}"
        return text

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if "rounds_done" not in result:
            return
        for member in members_of(trial.trial_id, trial.config, result):
            rounds_done = member.result.get("rounds_done")
            if rounds_done is None or self.seen.get(member.member_id) == rounds_done:
                continue  # a pack reports every member; print the ones that finished a round
            self.seen[member.member_id] = rounds_done
            shown = ("density", "val_acc", "objective") if self.metric else ("density", "val_acc")  # Pareto: both
            values = ", ".join(f"{key} {format_value(member.result[key])}" for key in shown if key in member.result)
            stopped = " (stopped by ASHA)" if member.result.get("stopped") else ""
            self.say(f"trial {member.member_id} round {rounds_done - 1} "  # numbered from 0, as everywhere else
                     f"({rounds_done}/{self.spec.rounds_of(member.params)} done): "
                     f"{values}{stopped} | "
                     f"{self.overview(trials, (trial, result))}")
        if result.get("notice"):
            self.say(f"trial {trial.trial_id} ({result.get('config_hash', 'pack')}): warning: {result['notice']}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial that Tune's ASHA ended before its last round says so (a pack's members say it in their round's
        line: member-ASHA stops them inside the pack)."""
        if self.spec.sweep.scheduler.name != "asha":
            return
        for member in members_of(trial.trial_id, trial.config, trial.last_result or {}):
            rounds_done, rounds = int(member.result.get("rounds_done") or 0), self.spec.rounds_of(member.params)
            if 0 < rounds_done < rounds and not member.result.get("stopped"):
                # no overview: Tune marks the trial TERMINATED only after this call
                self.say(f"trial {member.member_id} stopped by ASHA after round {rounds_done - 1} "
                         f"({rounds_done}/{rounds} done)")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.say(f"trial {trial.trial_id} failed ({error_line(trial)}); restarting it from its last round")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.say(f"trial {trial.trial_id} failed for good ({error_line(trial)}; the traceback is in "
                 f"{trial.error_file or 'the log'}) | {self.overview(trials)}")


def error_line(trial: Any) -> str:
    """The last line of the trial's error as Tune saved it (the exception and its message: a full disk names its
    file there), or what to read instead."""
    try:  # Tune appends each failure to the trial's local error file before it calls back
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:  # the error file itself may be unreadable (the disk that failed)
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "its error is in the log"

"""The local report of a sweep: DIR/index.html with its PNG figures, rounds.csv, and for each top trial an
experiment file that `lth-sweep run` reruns alone. Reads the sweep's storage only (no Ray cluster)."""

from __future__ import annotations

import csv
import io
import shlex
from dataclasses import dataclass
from pathlib import Path

from lth_sweep.checkpoint import write_bytes, write_text
from lth_sweep.config import dump_yaml
from lth_sweep.report.data import SweepData, load_sweep_data
from lth_sweep.report.figures import Figure, all_figures
from lth_sweep.report.page import TopTrial, render

CSV_NAME = "rounds.csv"
CSV_KEYS = ["trial_id", "config_hash", "round", "density", "val_acc", "val_acc_std", "test_acc",
            "test_acc_at_early_stop", "test_acc_at_early_stop_std", "early_stop_iter", "train_loss", "control",
            "control_val_acc", "control_test_acc", "control_test_acc_at_early_stop", "control_early_stop_iter",
            "instability", "instability_std", "control_instability", "seconds"]


@dataclass(frozen=True)
class LocalReport:
    index: Path
    figures: list[Figure]
    top: list[TopTrial]
    data: SweepData


def rounds_csv(data: SweepData) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_KEYS, extrasaction="ignore")
    writer.writeheader()
    for trial in data.trials:
        for record in trial.records:
            writer.writerow({**record, "trial_id": trial.trial_id, "config_hash": trial.config_hash})
    return out.getvalue()


def top_trials(data: SweepData, out_dir: Path) -> list[TopTrial]:
    """The best trials, each with its experiment file written into `out_dir/experiments/` and the commands
    that export its ticket and rerun it."""
    rows = []
    for rank, trial in enumerate(data.best, 1):
        experiment = out_dir / "experiments" / f"{trial.trial_id}.yaml"
        write_text(experiment, dump_yaml(data.spec.trial_config(trial.params)))
        ticket = shlex.join(["lth-sweep", "ticket", "export", data.experiment_dir, trial.trial_id, "--out",
                             str(out_dir / "tickets" / f"{trial.trial_id}.pt")])
        if data.winning_ticket(trial) is None:
            ticket = f"{ticket} --round R  # no winning ticket: {data.no_ticket_reason(trial)}"
        rerun = shlex.join(["lth-sweep", "run", str(experiment), "--out", f"runs/{data.name}-{trial.trial_id}"])
        rows.append(TopTrial(rank, trial, str(experiment), ticket, rerun))
    return rows


def write_report(path: str, out_dir: Path) -> LocalReport:
    """Writes the report of the sweep at `path` into `out_dir`; returns what it wrote."""
    data = load_sweep_data(path)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = all_figures(data)
    for fig in figures:
        write_bytes(out_dir / fig.name, fig.png)
    top = top_trials(data, out_dir)
    write_text(out_dir / CSV_NAME, rounds_csv(data))
    index = out_dir / "index.html"
    write_text(index, render(data, figures, top, CSV_NAME))
    return LocalReport(index, figures, top, data)

"""The local report of a sweep: DIR/index.html with its PNG figures, rounds.csv, and for each top trial an
experiment file that `lth-sweep run` reruns alone. Reads the sweep's storage only (no Ray cluster)."""

from __future__ import annotations

import csv
import io
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lth_sweep.checkpoint import fsync_dir, write_bytes, write_text
from lth_sweep.config import dump_yaml
from lth_sweep.errors import RunFailure
from lth_sweep.report.data import SweepData, load_sweep_data
from lth_sweep.report.figures import Figure, all_figures
from lth_sweep.report.page import TopTrial, render

CSV_NAME = "rounds.csv"
INDEX_NAME = "index.html"
STAGE_PREFIX = ".report-being-written-"  # the folder inside DIR a report is written into first
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


def top_trials(data: SweepData, out_dir: Path, write_into: Path) -> list[TopTrial]:
    """The best trials, each with its experiment file, `out_dir/experiments/<trial>.yaml` (written into
    `write_into/experiments/`), and the commands that export its ticket and rerun it."""
    rows = []
    for rank, trial in enumerate(data.best, 1):
        name = Path("experiments", f"{trial.trial_id}.yaml")
        write_text(write_into / name, dump_yaml(data.spec.trial_config(trial.params)))
        experiment = out_dir / name
        ticket = shlex.join(["lth-sweep", "ticket", "export", data.experiment_dir, trial.trial_id, "--out",
                             str(out_dir / "tickets" / f"{trial.trial_id}.pt")])
        if data.winning_ticket(trial) is None:
            ticket = f"{ticket} --round R  # no winning ticket: {data.no_ticket_reason(trial)}"
        rerun = shlex.join(["lth-sweep", "run", str(experiment), "--out", f"runs/{data.name}-{trial.trial_id}"])
        rows.append(TopTrial(rank, trial, str(experiment), ticket, rerun))
    return rows


@contextmanager
def staged(out_dir: Path, last: str) -> Iterator[Path]:
    """A folder inside `out_dir` to write a report into; once the block ends, its files are renamed into `out_dir`
    (`last` after the others). A write that fails (a full disk) leaves the report that was there as it was."""
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out_dir))
    try:
        yield stage
        names = sorted((p.relative_to(stage) for p in stage.rglob("*") if p.is_file()), key=lambda n: str(n) == last)
        for name in names:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, out_dir / name)
        fsync_dir(out_dir)
    except RunFailure as failure:  # named as the report's file, not the stage's
        if not failure.path.is_relative_to(stage):
            raise
        raise RunFailure(out_dir / failure.path.relative_to(stage), failure.message) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_report(path: str, out_dir: Path) -> LocalReport:
    """Writes the report of the sweep at `path` into `out_dir`; returns what it wrote. Each file replaces its
    old version only once every file of the report is written (index.html last)."""
    data = load_sweep_data(path)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = all_figures(data)
    index = out_dir / INDEX_NAME
    with staged(out_dir, last=INDEX_NAME) as stage:
        for fig in figures:
            write_bytes(stage / fig.name, fig.png)
        top = top_trials(data, out_dir, stage)
        write_text(stage / CSV_NAME, rounds_csv(data))
        write_text(stage / INDEX_NAME, render(data, figures, top, CSV_NAME))
    return LocalReport(index, figures, top, data)

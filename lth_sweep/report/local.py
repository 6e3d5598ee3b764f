"""A local report of a sweep: every trial's IMP curve (val_acc and test_acc against density), the best
trials, the Pareto front, as Markdown with a PNG plot and a CSV of every round."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.checkpoint import write_text
from lth_sweep.sweep.status import sweep_status


def trial_curves(status: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Round records per trial id, read from the by-config engine state."""
    curves = {}
    for row in status["trials"]:
        if row["config_hash"] is None:
            continue
        path = storage.join(status["experiment_dir"], "by_config", row["config_hash"], "engine", "rounds.jsonl")
        if storage.exists(path):
            curves[row["trial_id"]] = [json.loads(line) for line in storage.read_text(path).splitlines()]
    return curves


def plot(curves: dict[str, list[dict[str, Any]]], front: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for trial_id, records in curves.items():
        ax.plot([100 * r["density"] for r in records], [r["val_acc"] for r in records], marker="o",
                markersize=3, linewidth=1, alpha=0.7, label=trial_id)
    if front:
        ax.plot([100 * p["density"] for p in front], [p["val_acc"] for p in front], "k--", linewidth=1.5,
                label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([t for t in (100, 64, 41, 26, 17, 11, 7, 4.5, 2.9, 1.8, 1.2, 0.7, 0.5, 0.3, 0.2, 0.1)
                   if any(100 * r["density"] <= t * 1.05 for c in curves.values() for r in c)])
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def rounds_csv(curves: dict[str, list[dict[str, Any]]]) -> str:
    keys = ["trial_id", "round", "density", "val_acc", "test_acc", "test_acc_at_early_stop", "early_stop_iter",
            "train_loss", "seconds"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for trial_id, records in curves.items():
        for record in records:
            writer.writerow({**record, "trial_id": trial_id})
    return out.getvalue()


def markdown(status: dict[str, Any], curves: dict[str, list[dict[str, Any]]]) -> str:
    params = sorted({k for row in status["trials"] for k in row["params"]})
    lines = [f"# Sweep {status['name']}", "",
             f"{len(status['trials'])} of {status['num_samples']} trials; objective `{status['objective']}` "
             f"({', '.join(f'{m} {o}' for m, o in zip(status['metric'], status['mode'], strict=True))}). "
             f"Results in `{status['experiment_dir']}`.", "", "![val_acc against density](density_vs_accuracy.png)",
             "", "## Trials", "",
             "| trial | state | " + " | ".join(params) + " | rounds | density | val_acc | test_acc | objective |",
             "|" + "---|" * (len(params) + 7)]

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))

    for row in status["trials"]:
        lines.append(f"| {row['trial_id']} | {row['state']} | " + " | ".join(cell(row["params"].get(p)) for p in params)
                     + f" | {row['rounds_done']} | {cell(row['density'])} | {cell(row['val_acc'])} | "
                       f"{cell(row['test_acc'])} | {cell(row['objective'])} |")
    if status.get("best"):
        lines += ["", "## Best trials", ""]
        for rank, row in enumerate(status["best"], 1):
            lines.append(f"{rank}. `{row['trial_id']}` objective {cell(row['objective'])}: "
                         + ", ".join(f"{k} = {cell(v)}" for k, v in row["params"].items()))
    if status["pareto"]:
        lines += ["", "## Pareto front over all rounds (density, val_acc)", "",
                  "| trial | round | density | val_acc | test_acc |", "|---|---|---|---|---|"]
        lines += [f"| {p['trial_id']} | {p['round']} | {p['density']:.4f} | {p['val_acc']:.4f} | "
                  f"{p['test_acc']:.4f} |" for p in status["pareto"]]
    lines += ["", f"Every round of every trial: `rounds.csv` ({sum(len(c) for c in curves.values())} rows).", ""]
    return "\n".join(lines)


def write_report(path: str, out_dir: Path) -> Path:
    status = sweep_status(path)
    curves = trial_curves(status)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(curves, status["pareto"], out_dir / "density_vs_accuracy.png")
    write_text(out_dir / "rounds.csv", rounds_csv(curves))
    write_text(out_dir / "report.md", markdown(status, curves))
    return out_dir / "report.md"

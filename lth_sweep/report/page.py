"""The report's static HTML page: progress and compute, the top trials with the commands that take their
ticket out and rerun them, the figures, every trial. No script, no CDN, no network: it opens offline."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lth_sweep.report.data import SweepData, TrialRow, is_number
from lth_sweep.report.figures import Figure
from lth_sweep.sweep.optuna_store import dashboard_command
from lth_sweep.sweep.status import IN_PROGRESS

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin-top: 0; }
.warning { color: #8a4b00; background: #fff4e0; padding: .4em .6em; border-left: 3px solid #e0a040; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 9px; text-align: right; vertical-align: top; }
th { background: #f6f6f6; } td.text, th.text { text-align: left; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f4f4f4; padding: 1px 4px;
       border-radius: 3px; white-space: pre-wrap; word-break: break-all; }
figure { margin: 1.2em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; max-width: 900px; }
.best td { background: #fff4f4; }
dl.progress { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; } dl.progress dt { color: #666; }
"""


@dataclass(frozen=True)
class TopTrial:
    """A row of the top-trials table with the two commands printed for it."""

    rank: int
    trial: TrialRow
    experiment_file: str  # written into the report folder
    ticket_command: str
    rerun_command: str


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else html.escape(str(value))


def percent(density: float | None) -> str:
    return "–" if density is None else f"{100 * density:.3g}%"


def progress(data: SweepData) -> str:
    counts = data.counts
    done, started = counts.get("TERMINATED", 0), counts.get("RUNNING", 0) + counts.get(IN_PROGRESS, 0)
    failed = counts.get("ERROR", 0)
    pending = data.num_samples - done - started - failed
    resources = data.spec.sweep.resources
    seconds = data.compute_seconds()
    if resources.gpu:
        compute = f"{seconds * resources.gpu / 3600:.3g} GPU-hours ({resources.gpu:g} GPU per trial)"
    else:
        compute = f"{seconds * resources.cpu / 3600:.3g} CPU-hours ({resources.cpu:g} CPU per trial)"
    rounds = sum(len(t.rounds) for t in data.trials)
    stopped = sum(t.stopped_early for t in data.trials)
    items = [("trials", f"{done} done{f' ({stopped} stopped early by ASHA)' if stopped else ''}, {started} in "
                        f"progress, {failed} failed, {max(pending, 0)} not started (of {data.num_samples})"),
             ("rounds finished", str(rounds)),
             ("compute spent", f"{compute}; {seconds / 60:.3g} minutes of training in all"),
             ("objective", f"{html.escape(data.objective)} "
                           f"({', '.join(f'{m} {o}' for m, o in zip(data.metrics, data.modes, strict=True))})")]
    if data.control:
        items.append(("control", html.escape(data.control + (" (searched)" if data.control_searched else ""))))
    if data.replicates > 1:
        items.append(("replicates", f"{data.replicates_text} seeds per trial (values are means; bands ±1 std)"))
    dashboard = dashboard_command(data.spec)
    if dashboard:
        items.append(("Optuna study", f"<code>{html.escape(dashboard)}</code>"))
    return '<dl class="progress">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


TICKET_HEAD = ("<th>winning ticket</th><th>its val_acc</th><th>its test_acc at early stop</th>"
               "<th>pruned to</th>")


def ticket_cells(data: SweepData, t: TrialRow) -> str:
    """The winning ticket's density (and round), val_acc and test_acc at early stop, then how far the trial pruned."""
    ticket = data.winning_ticket(t)
    if ticket is None:
        first = f"<td title='{html.escape(data.no_ticket_reason(t))}'>none</td>" if t.records else "<td>–</td>"
        return first + f"<td>–</td><td>–</td><td>{percent(t.density_reached)}</td>"
    return (f"<td>{percent(ticket.density)} (round {ticket.round})</td><td>{cell(ticket.val_acc.ticket)}</td>"
            f"<td>{cell(ticket.test_acc_at_early_stop.ticket)}</td><td>{percent(t.density_reached)}</td>")


def top_table(data: SweepData, top: list[TopTrial]) -> str:
    if not top:
        return "<p>No trial has finished a round yet.</p>"
    keys = list(data.space)
    single = data.single_objective  # a Pareto sweep's objective is (density, val_acc): no column of its own
    head = ("<tr><th>#</th><th class='text'>trial</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
            + ("<th>objective</th>" if single else "") + TICKET_HEAD
            + "<th class='text'>take its ticket out</th><th class='text'>rerun it alone</th></tr>")
    rows = []
    for row in top:
        t = row.trial
        rows.append(f"<tr class='{'best' if row.rank == 1 else ''}'><td>{row.rank}</td>"
                    f"<td class='text'>{html.escape(t.trial_id)}</td>"
                    + "".join(f"<td>{cell(t.params.get(k))}</td>" for k in keys)
                    + (f"<td>{cell(t.objective)}</td>" if single else "") + ticket_cells(data, t)
                    + f"<td class='text'><code>{html.escape(row.ticket_command)}</code></td>"
                      f"<td class='text'><code>{html.escape(row.rerun_command)}</code></td></tr>")
    return f"<table id='top-trials'>{head}{''.join(rows)}</table>"


def trials_table(data: SweepData) -> str:
    keys = list(data.space)
    single = data.single_objective
    head = ("<tr><th class='text'>trial</th><th class='text'>state</th>"
            + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
            + "<th>rounds</th>" + ("<th>objective</th>" if single else "") + TICKET_HEAD
            + "<th class='text'>config</th></tr>")
    rows = []
    for t in data.trials:
        state = "stopped by ASHA" if t.stopped_early else t.state
        rows.append(f"<tr><td class='text'>{html.escape(t.trial_id)}</td><td class='text'>{html.escape(state)}</td>"
                    + "".join(f"<td>{cell(t.params.get(k))}</td>" for k in keys)
                    + f"<td>{len(t.rounds)}</td>"
                    + (f"<td>{cell(t.objective if is_number(t.objective) else None)}</td>" if single else "")
                    + ticket_cells(data, t) + f"<td class='text'><code>{cell(t.config_hash)}</code></td></tr>")
    return f"<table id='trials'>{head}{''.join(rows)}</table>"


def figure_block(fig: Figure) -> str:
    return (f"<figure id='{html.escape(fig.name.removesuffix('.png'))}'><img src='{html.escape(fig.name)}' "
            f"style='width: {round(fig.width_in * 96)}px' alt='{html.escape(fig.title)}'>"
            f"<figcaption><b>{html.escape(fig.title)}.</b> "
            f"{html.escape(fig.caption)}</figcaption></figure>")


def render(data: SweepData, figures: list[Figure], top: list[TopTrial], csv_name: str) -> str:
    """The whole page as one HTML string."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    space = ", ".join(f"{html.escape(k)} ({d.kind})" for k, d in data.space.items()) or "nothing"
    title = "Top trials" if data.single_objective else "Trials on the Pareto front"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sweep {html.escape(data.name)}: lottery-ticket report</title><style>{STYLE}</style></head>
<body>
<h1>Sweep {html.escape(data.name)}</h1>
<p class="meta">{html.escape(data.experiment_dir)} · searched: {space} · report made {generated}</p>
<h2>Progress</h2>
{''.join(f'<p class="warning">{html.escape(w)}</p>' for w in data.warnings)}
{progress(data)}
<h2>{title}</h2>
{top_table(data, top)}
<h2>Figures</h2>
{''.join(figure_block(f) for f in figures) or '<p>No trial has finished a round yet.</p>'}
<h2>Every trial</h2>
{trials_table(data)}
<p>Every round of every trial: <a href="{html.escape(csv_name)}">{html.escape(csv_name)}</a>.</p>
</body></html>
"""


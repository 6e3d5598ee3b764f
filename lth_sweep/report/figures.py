"""The report's figures, drawn with matplotlib (no pyplot, no display) as PNG files.

Each figure function takes the sweep and returns a `Figure` (file name, caption, PNG bytes and the series it
drew, read back from matplotlib's own artists), or None when the figure does not apply to this sweep:
no figure is ever drawn empty."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

from lth_sweep.report.data import RoundRow, Series, SweepData, TrialRow, is_number
from lth_sweep.sweep.schema import ObjectiveConfig

TRIAL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
BEST_COLOR = "#d62728"
MAX_COLORED_TRIALS = len(TRIAL_COLORS)  # beyond that, the other trials are drawn in light grey
PERCENT_TICKS = tuple(round(m * 10.0 ** e, 6) for e in range(2, -3, -1) for m in (1, 0.7, 0.5, 0.35, 0.25, 0.15))
PAPER_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.25, "grid.linewidth": 0.6, "lines.linewidth": 1.3, "lines.markersize": 3.5,
    "savefig.dpi": 150, "figure.dpi": 100,
}


@dataclass(frozen=True)
class Drawn:
    """One series as matplotlib holds it: which axes, its label, its points, its line style."""

    axes: str
    label: str
    trial_id: str | None
    kind: str  # ticket | control | band | dense | points | front | bar
    x: list[float]
    y: list[float]
    linestyle: str = "-"


@dataclass(frozen=True)
class Figure:
    name: str  # file name next to index.html
    title: str
    caption: str
    png: bytes
    series: list[Drawn]
    width_in: float = 6.0  # printed size, so the page shows every figure at the same scale


def figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure (not registered with pyplot, so nothing global) and its axes."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def inches(fig) -> float:
    return float(fig.get_size_inches()[0])


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def styled(draw: Callable[[], Figure | None]) -> Figure | None:
    """Runs a figure's drawing (creation to PNG) in the paper style."""
    import matplotlib

    with matplotlib.rc_context(PAPER_STYLE):
        return draw()


def read_line(axes_name: str, line, trial_id: str | None, kind: str) -> Drawn:
    return Drawn(axes_name, str(line.get_label()), trial_id, kind, [float(v) for v in line.get_xdata()],
                 [float(v) for v in line.get_ydata()], str(line.get_linestyle()))


def read_band(axes_name: str, band, trial_id: str, label: str, kind: str = "band") -> Drawn:
    """A fill_between band as (x, lower) then (x, upper) along its outline."""
    vertices = band.get_paths()[0].vertices
    return Drawn(axes_name, label, trial_id, kind, [float(v) for v in vertices[:, 0]],
                 [float(v) for v in vertices[:, 1]])


def plain_number_ticks(axis, locator) -> None:
    """A log axis labelled at `locator`'s ticks only, as plain numbers (0.002, 50), not as powers of ten."""
    import matplotlib.ticker as mticker

    axis.set_major_locator(locator)
    axis.set_major_formatter(mticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def searched_range_axis(ax, bounds: tuple[float, float], log: bool) -> None:
    """x spans the searched range (a little beyond, so points on a bound show whole); a log axis gets
    plain-number ticks: at 1, 2 and 5 times the powers of ten over a range of a decade or so, at the powers of
    ten over a wider one (matplotlib's own labels every minor tick of a range under a decade, and they overlap)."""
    import matplotlib.ticker as mticker

    low, high = (float(b) for b in bounds)
    if log:
        ax.set_xscale("log")
        pad = (high / low) ** 0.04
        ax.set_xlim(low / pad, high * pad)
        subs = (1.0, 2.0, 5.0) if math.log10(high / low) < 1.5 else (1.0,)
        plain_number_ticks(ax.xaxis, mticker.LogLocator(base=10, subs=subs, numticks=6))
    else:
        pad = 0.04 * (high - low) or 0.5
        ax.set_xlim(low - pad, high + pad)


def percent_axis(ax, percents: list[float]) -> None:
    """Log x axis of weights remaining, decreasing left to right, with plain-number ticks."""
    import matplotlib.ticker as mticker

    ax.set_xscale("log")
    low, high = min(percents), max(percents)
    ax.set_xlim(high * 1.15, low / 1.15)
    ticks = [t for t in PERCENT_TICKS if low / 1.15 <= t <= high * 1.15]
    plain_number_ticks(ax.xaxis, mticker.FixedLocator(ticks))
    ax.set_xlabel("Percent of weights remaining")


def best_words(data: SweepData) -> tuple[str, str]:
    """What the red trial is, as a legend label and in a caption: the best by the objective, or (Pareto: no
    single best) the sparsest trial on the front."""
    if data.single_objective:
        return "best", "the best trial"
    return "sparsest on the front", "the sparsest trial on the Pareto front"


def trial_styles(data: SweepData, trials: list[TrialRow]) -> dict[str, dict]:
    """Line style per trial: the best trial thick and red on top, others coloured (or grey when many)."""
    best_id = data.best[0].trial_id if data.best else None
    styles, index = {}, 0
    for trial in trials:
        if trial.trial_id == best_id:
            styles[trial.trial_id] = {"color": BEST_COLOR, "linewidth": 2.2, "zorder": 5, "alpha": 1.0,
                                      "label": f"{trial.trial_id} ({best_words(data)[0]})", "extras": True}
            continue
        many = len(trials) > MAX_COLORED_TRIALS + 1
        color = "#9a9a9a" if many else TRIAL_COLORS[index % len(TRIAL_COLORS)]
        styles[trial.trial_id] = {"color": color, "linewidth": 1.0, "zorder": 2, "alpha": 0.55 if many else 0.85,
                                  "label": "_nolegend_" if many else trial.trial_id,
                                  "extras": not many}  # bands and controls: for every trial, or the best only
        index += 1
    return styles


def draw_metric(ax, axes_name: str, data: SweepData, metric: Callable[[RoundRow], Series],
                drawn: list[Drawn], dense: bool = True, trials: list[TrialRow] | None = None) -> None:
    """One line per trial (with its replicate band), its control dashed beside it, the dense reference and the
    winning tickets (when `dense`). `trials`: those with rounds, unless given."""
    trials = data.with_rounds if trials is None else trials
    styles = trial_styles(data, trials)
    for trial in trials:
        style = styles[trial.trial_id]
        x = [r.percent_remaining for r in trial.rounds]
        values = [metric(r) for r in trial.rounds]
        (line,) = ax.plot(x, [v.ticket for v in values], marker="o", color=style["color"],
                          linewidth=style["linewidth"], zorder=style["zorder"], alpha=style["alpha"],
                          label=style["label"])
        drawn.append(read_line(axes_name, line, trial.trial_id, "ticket"))
        winner = data.winning_ticket(trial)
        if winner is not None and dense:
            point = (winner.percent_remaining, metric(winner).ticket)
            ax.scatter(*point, marker="*", s=150 if style["extras"] else 90, color=style["color"],
                       edgecolors="white", linewidths=0.6, zorder=style["zorder"] + 1, alpha=style["alpha"])
            drawn.append(Drawn(axes_name, "winning ticket", trial.trial_id, "winner", [point[0]], [float(point[1])]))
        if not style["extras"]:
            continue
        if any(v.ticket_std is not None for v in values):
            band = ax.fill_between(x, [v.ticket - (v.ticket_std or 0) for v in values],
                                   [v.ticket + (v.ticket_std or 0) for v in values], color=style["color"],
                                   alpha=0.15, linewidth=0, zorder=style["zorder"] - 1)
            drawn.append(read_band(axes_name, band, trial.trial_id, f"{trial.trial_id} ±1 std"))
        controlled = [(px, v) for px, v in zip(x, values, strict=True) if v.control is not None]
        if controlled:
            (line,) = ax.plot([px for px, _ in controlled], [v.control for _, v in controlled], linestyle="--",
                              marker="x", markersize=3, color=style["color"], linewidth=style["linewidth"] * 0.8,
                              zorder=style["zorder"], alpha=style["alpha"], label="_nolegend_")
            drawn.append(read_line(axes_name, line, trial.trial_id, "control"))
            if any(v.control_std is not None for _, v in controlled):
                band = ax.fill_between([px for px, _ in controlled],
                                       [v.control - (v.control_std or 0) for _, v in controlled],
                                       [v.control + (v.control_std or 0) for _, v in controlled], color=style["color"],
                                       alpha=0.08, linewidth=0, zorder=style["zorder"] - 1)
                drawn.append(read_band(axes_name, band, trial.trial_id, f"{trial.trial_id} control ±1 std",
                                       "control band"))
    best = data.best[0] if data.best and data.best[0].rounds else None
    if dense and best is not None and best.rounds[0].round == 0:
        dense_value = metric(best.rounds[0]).ticket
        line = ax.axhline(dense_value, color="#444444", linestyle=":", linewidth=1.0, zorder=1,
                          label=f"dense ({best.trial_id})")
        drawn.append(Drawn(axes_name, str(line.get_label()), best.trial_id, "dense",
                           [], [float(dense_value)], ":"))
        tolerance = matching_tolerance(data)
        if axes_name == "val_acc" and tolerance is not None:
            line = ax.axhline(dense_value - tolerance, color="#888888", linestyle="-.", linewidth=0.9, zorder=1,
                              label=f"dense − tolerance ({tolerance:g})")
            drawn.append(Drawn(axes_name, str(line.get_label()), best.trial_id, "tolerance",
                               [], [float(dense_value - tolerance)], "-."))
    percent_axis(ax, [r.percent_remaining for t in trials for r in t.rounds])


def matching_tolerance(data: SweepData) -> float | None:
    """The objective's tolerance below the dense val_acc when it scores matching rounds, else None."""
    objective = data.spec.sweep.objective
    return objective.tolerance if objective.name in ("matching_density", "stable_matching_density") else None


def legend(fig, ax, data: SweepData, winners: bool = False) -> None:
    """One legend for the figure, outside its axes on the right, with the control and band keys (and the winning
    tickets' star, when `winners`)."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if winners and any(data.winning_ticket(t) for t in data.with_rounds):
        handles.append(Line2D([], [], color="#444444", marker="*", markersize=10, linestyle="none"))
        labels.append("winning ticket")
    if data.control:
        handles.append(Line2D([], [], color="#444444", linestyle="--", marker="x", markersize=3))
        labels.append(f"control: {data.control} (dashed)")
    if data.replicates > 1:
        from matplotlib.patches import Patch

        handles.append(Patch(color="#444444", alpha=0.15, linewidth=0))
        labels.append(f"±1 std over {data.replicates_text} replicates")
    fig.legend(handles, labels, loc="outside right upper", frameon=False)


def control_caption(data: SweepData) -> str:
    if not data.control:
        return ""
    if data.control_searched:
        return f"; a trial's control ({data.control}; control is searched) dashed beside its ticket"
    return f"; its {data.control} control dashed beside each ticket"


def lottery_ticket(data: SweepData) -> Figure | None:
    """Test accuracy at early stop and validation accuracy against the percent of weights remaining."""
    if not data.with_rounds:
        return None

    def draw() -> Figure:
        fig, (left, right) = figure(11.5, 4.0, ncols=2)
        drawn: list[Drawn] = []
        draw_metric(left, "test_acc_at_early_stop", data, lambda r: r.test_acc_at_early_stop, drawn)
        left.set_ylabel("Test accuracy at early stop")
        left.set_title("Test accuracy at the early-stop iteration")
        draw_metric(right, "val_acc", data, lambda r: r.val_acc, drawn)
        right.set_ylabel("Validation accuracy")
        right.set_title("Validation accuracy at the end of each round")
        legend(fig, right, data, winners=True)  # the right axes also hold the tolerance line
        tolerance = matching_tolerance(data)
        return Figure("lottery_ticket.png", "Accuracy against sparsity",
                      f"One line per trial (one IMP run, each round a point); {best_words(data)[1]} in red; "
                      "a star marks each trial's winning ticket (the round `ticket export` takes); "
                      "the dotted line is its dense network"
                      + ("" if tolerance is None else ", the dash-dotted one its dense val_acc less "
                                                      f"objective.tolerance {tolerance:g} (a round on or above it "
                                                      "matches)")
                      + control_caption(data)
                      + (f"; bands are ±1 std over {data.replicates_text} replicates" if data.replicates > 1 else "")
                      + ".", to_png(fig), drawn, inches(fig))

    return styled(draw)


def early_stop(data: SweepData) -> Figure | None:
    """The early-stop iteration (minimum validation loss) against the percent of weights remaining."""
    if not data.with_rounds:
        return None

    def draw() -> Figure:
        fig, (ax,) = figure(7.0, 3.8)
        drawn: list[Drawn] = []
        draw_metric(ax, "early_stop_iter", data, lambda r: r.early_stop_iter, drawn, dense=False)
        ax.set_ylabel("Early-stop iteration")
        ax.set_title("Iteration of minimum validation loss")
        legend(fig, ax, data)
        caption = ("The iteration of minimum validation loss in each round (measured every train.eval_every "
                   "iterations). Frankle & Carbin found winning tickets reach it earlier than the dense network and "
                   "random controls later.")
        if lowest_at_the_end(data):
            caption += (" In this sweep every round's validation loss was lowest at its last evaluation: the "
                        "rounds end before it rises, so this iteration is the round's length and tells the tickets "
                        "apart only with longer rounds (train.epochs or train.iterations).")
        return Figure("early_stop.png", "Early-stop iteration", caption, to_png(fig), drawn, inches(fig))

    return styled(draw)


def lowest_at_the_end(data: SweepData) -> bool:
    """Whether every round that has both values ended at its minimum validation loss (`val_loss` is the last
    evaluation's, `val_loss_min` the lowest of the round's)."""
    pairs = [(r["val_loss"], r["val_loss_min"]) for t in data.with_rounds for r in t.records
             if is_number(r.get("val_loss")) and is_number(r.get("val_loss_min"))]
    return bool(pairs) and all(last <= lowest for last, lowest in pairs)


def objective_label(data: SweepData) -> str:
    better = "lower" if data.modes[0] == "min" else "higher"
    return f"{data.objective} ({better} is better)"


# how a trial's point is drawn: trained all its rounds, stopped by ASHA (its value when it stopped), still running
POINT_STYLES = {"finished": {"color": "#1f77b4", "label": "finished"},
                "stopped": {"color": "#8c8c8c", "marker": "x", "label": "stopped by ASHA (value then)"},
                "running": {"facecolors": "none", "edgecolors": "#1f77b4", "label": "running (so far)"}}


def objective_vs_params(data: SweepData) -> Figure | None:
    """The objective of every trial that has one against each searched hyperparameter."""
    scored = [t for t in data.trials if is_number(t.objective)]
    if not data.single_objective or not data.space or not scored:
        return None

    def draw() -> Figure:
        keys = list(data.space)
        fig, axes = figure(min(3.4 * len(keys), 11), 3.2, ncols=len(keys))
        best_id = data.best[0].trial_id if data.best else None
        drawn: list[Drawn] = []
        for ax, key in zip(axes, keys, strict=True):
            dist = data.space[key]
            rows = [t for t in scored if key in t.params]
            if dist.kind == "choice":
                positions = {repr(c): i for i, c in enumerate(dist.choice)}
                x = [float(positions[repr(t.params[key])]) for t in rows]
                ax.set_xticks(range(len(dist.choice)), [str(c) for c in dist.choice])
            else:
                x = [float(t.params[key]) for t in rows]
                searched_range_axis(ax, getattr(dist, dist.kind), log=dist.kind == "loguniform")
            y = [float(t.objective) for t in rows]
            kinds = ["stopped" if t.stopped_early else "finished" if t.state == "TERMINATED" else "running"
                     for t in rows]
            for kind, style in POINT_STYLES.items():
                if kind in kinds:
                    ax.scatter([v for v, k in zip(x, kinds, strict=True) if k == kind],
                               [v for v, k in zip(y, kinds, strict=True) if k == kind], s=18, zorder=3, **style)
            drawn.append(Drawn(key, "trials", None, "points", x, y))
            for t, px, py in zip(rows, x, y, strict=True):
                if t.trial_id == best_id:
                    ax.scatter([px], [py], marker="*", s=110, color=BEST_COLOR, zorder=4, label="best")
            ax.set_xlabel(key + (" (log scale)" if dist.kind == "loguniform" else ""))
        axes[0].set_ylabel(objective_label(data))
        if axes[0].get_legend_handles_labels()[0]:  # a panel whose key no trial has yet draws no point
            axes[0].legend(frameon=False)
        return Figure("objective_vs_params.png", "Objective against each searched hyperparameter",
                      f"Each point is a trial's {data.objective}; hollow points are trials still running"
                      + ("; grey crosses are trials ASHA stopped, at the value they had then"
                         if any(t.stopped_early for t in data.trials) else "") + ".",
                      to_png(fig), drawn, inches(fig))

    return styled(draw)


def optuna_distribution(dist):
    import optuna

    if dist.kind == "uniform":
        return optuna.distributions.FloatDistribution(*dist.uniform)
    if dist.kind == "loguniform":
        return optuna.distributions.FloatDistribution(*dist.loguniform, log=True)
    if dist.kind == "integer":
        return optuna.distributions.IntDistribution(*dist.integer)
    return optuna.distributions.CategoricalDistribution(dist.choice)


def param_importances(data: SweepData) -> dict[str, float]:
    """Optuna's parameter importances from the finished trials, through an in-memory study of their values;
    empty when there are fewer than two finished trials or nothing varies."""
    import optuna

    finished = [t for t in data.finished if all(k in t.params for k in data.space)]
    if not data.single_objective or len(data.space) == 0 or len(finished) < 2:
        return {}
    if len({t.objective for t in finished}) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {key: optuna_distribution(dist) for key, dist in data.space.items()}
    study = optuna.create_study(direction="minimize" if data.modes[0] == "min" else "maximize")
    for t in finished:
        study.add_trial(optuna.trial.create_trial(params={k: t.params[k] for k in data.space},
                                                  distributions=distributions, value=float(t.objective)))
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return {}
    return {k: float(v) for k, v in importances.items() if math.isfinite(v)}


def importance(data: SweepData) -> Figure | None:
    importances = param_importances(data)
    if not importances:
        return None

    def draw() -> Figure:
        keys = sorted(importances, key=importances.get)
        fig, (ax,) = figure(5.0, 0.9 + 0.45 * len(keys))
        bars = ax.barh(keys, [importances[k] for k in keys], color="#1f77b4", height=0.6)
        for bar, key in zip(bars, keys, strict=True):
            ax.annotate(f"{importances[key]:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_xlim(0, max(importances.values()) * 1.2)
        ax.set_xlabel(f"importance for {data.objective}")
        ax.set_title("Optuna parameter importance")
        ax.grid(axis="y", visible=False)
        drawn = [Drawn("importance", "importance", None, "bar", [float(b.get_width()) for b in bars],
                       list(range(len(keys))))]
        return Figure("importance.png", "Parameter importance", f"optuna.importance over the {len(data.finished)} "
                      f"finished trials: how much of the variation of {data.objective} each hyperparameter explains.",
                      to_png(fig), drawn, inches(fig))

    return styled(draw)


def pareto(data: SweepData) -> Figure | None:
    """Multi-objective sweeps: every round's (weights remaining, validation accuracy) and the front."""
    if data.single_objective or not data.pareto:
        return None

    def draw() -> Figure:
        fig, (ax,) = figure(5.5, 3.8)
        points = [(r.percent_remaining, r.val_acc.ticket) for t in data.with_rounds for r in t.rounds]
        cloud = ax.scatter([p for p, _ in points], [a for _, a in points], s=12, color="#9a9a9a", alpha=0.7,
                           label="every round of every trial", zorder=2)
        front_x = [100 * p["density"] for p in data.pareto]
        front_y = [p["val_acc"] for p in data.pareto]
        (line,) = ax.plot(front_x, front_y, color=BEST_COLOR, marker="o", drawstyle="steps-post",
                          label="Pareto front", zorder=3)
        offsets = cloud.get_offsets()
        drawn = [Drawn("pareto", "rounds", None, "points", [float(v) for v in offsets[:, 0]],
                       [float(v) for v in offsets[:, 1]]), read_line("pareto", line, None, "front")]
        percent_axis(ax, [p for p, _ in points] + front_x)
        ax.set_ylabel("Validation accuracy")
        ax.set_title("Pareto front: sparsity against accuracy")
        ax.legend(loc="lower left", frameon=False)
        return Figure("pareto.png", "Pareto front", "Rounds no other round beats on both weights remaining and "
                      "validation accuracy.", to_png(fig), drawn, inches(fig))

    return styled(draw)


# Frankle et al. (2020) call a network stable when its error barrier is below 2%: the bound's default
STABLE_BELOW = ObjectiveConfig.model_fields["instability_bound"].default


def instability(data: SweepData) -> Figure | None:
    """Linear-mode-connectivity instability against weights remaining, when the rounds measured it."""
    trials = [dataclasses.replace(t, rounds=[r for r in t.rounds if r.instability is not None])
              for t in data.with_rounds]
    trials = [t for t in trials if t.rounds]  # each with the rounds that measured it
    if not trials:
        return None
    objective = data.spec.sweep.objective
    bound = objective.instability_bound if objective.name == "stable_matching_density" else STABLE_BELOW
    bound_words = ("objective.instability_bound" if objective.name == "stable_matching_density"
                   else "the paper's threshold")

    def draw() -> Figure:
        fig, (ax,) = figure(7.0, 3.8)
        drawn: list[Drawn] = []
        draw_metric(ax, "instability", data, lambda r: r.instability, drawn, dense=False, trials=trials)
        line = ax.axhline(bound, color="#888888", linestyle="-.", linewidth=0.9, zorder=1,
                          label=f"stable below {bound:g}")
        drawn.append(Drawn("instability", str(line.get_label()), None, "bound", [], [float(bound)], "-."))
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.set_ylabel("Instability (test error barrier)")
        ax.set_title("Instability to SGD noise")
        legend(fig, ax, data)  # beside the axes: inside, it covered the lines
        return Figure("instability.png", "Instability", "Each round's `instability` as the trial recorded it "
                      "(stability.points): the rise in test error along the linear path between two copies of the "
                      "network trained on different data orders, as a fraction (0.02 = 2 points); the dash-dotted "
                      f"line is {bound_words}, {bound:g}: below it a round is stable"
                      + control_caption(data)
                      + (f"; bands are ±1 std over {data.replicates_text} replicates" if data.replicates > 1 else "")
                      + ".", to_png(fig), drawn, inches(fig))

    return styled(draw)


REWIND_KEYS = ("rewind.iteration", "rewind.epoch")


def rewind_iteration(data: SweepData, trial: TrialRow) -> int:
    """The iteration a trial rewinds to (its searched rewind.iteration, or rewind.epoch in iterations)."""
    config = data.spec.trial_config(trial.params)
    return config.rewind_iteration(config.steps_per_epoch())


def instability_vs_rewind(data: SweepData) -> Figure | None:
    """Sweeps over the rewind point (Frankle et al. 2020, Figure 5): each trial's instability at its sparsest
    measured round against the iteration it rewinds to, coloured by the weights that round keeps."""
    if not any(key in data.space for key in REWIND_KEYS):
        return None
    points = []
    for trial in data.with_rounds:
        measured = [r for r in trial.rounds if r.instability is not None]
        if measured:
            sparsest = min(measured, key=lambda r: r.density)
            points.append((rewind_iteration(data, trial), sparsest.instability.ticket, sparsest.percent_remaining,
                           trial.trial_id))
    if not points:
        return None

    def draw() -> Figure:
        fig, (ax,) = figure(5.5, 3.8)
        cloud = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[p[2] for p in points], cmap="viridis",
                           s=28, zorder=3, edgecolors="black", linewidths=0.4)
        fig.colorbar(cloud, ax=ax, label="Percent of weights remaining")
        offsets = cloud.get_offsets()
        drawn = [Drawn("instability_vs_rewind", "sparsest measured round", None, "points",
                       [float(v) for v in offsets[:, 0]], [float(v) for v in offsets[:, 1]])]
        ax.set_xlabel("Rewind iteration")
        ax.set_ylabel("Instability (error barrier)")
        ax.set_title("Instability against the rewind point")
        return Figure("instability_vs_rewind.png", "Instability against the rewind point",
                      "One point per trial: the instability of its sparsest measured round against the iteration its "
                      "ticket rewinds to. Matching tickets at standard learning rates appear once rewinding is late "
                      "enough for the network to be stable (Frankle et al. 2020).", to_png(fig), drawn, inches(fig))

    return styled(draw)


FIGURES = (lottery_ticket, early_stop, objective_vs_params, importance, pareto, instability, instability_vs_rewind)


def all_figures(data: SweepData) -> list[Figure]:
    """Every figure that applies to this sweep, in the page's order."""
    return [f for f in (make(data) for make in FIGURES) if f is not None]

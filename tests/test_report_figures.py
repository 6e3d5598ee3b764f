"""The report's figures on sweeps the end-to-end test does not launch: a multi-objective (pareto) sweep whose
rounds measured instability, and one with no finished round. The rows are written here as `status` and the
engine would give them; the figures are drawn by matplotlib for real."""

from __future__ import annotations

import dataclasses
import itertools
import shlex
from pathlib import Path
from typing import Any

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lth_sweep.report import figures as figs
from lth_sweep.report.data import RoundRow, SweepData, TrialRow
from lth_sweep.report.local import top_trials
from lth_sweep.report.page import TopTrial, render
from lth_sweep.sweep.objectives import pareto_front
from lth_sweep.sweep.schema import Distribution, SweepConfig
from lth_sweep.sweep.spec import LaunchSpec


def record(round_index: int, density: float, val_acc: float, instability: float | None) -> dict[str, Any]:
    out = {"round": round_index, "density": density, "val_acc": val_acc, "test_acc": val_acc - 0.01,
           "test_acc_at_early_stop": val_acc - 0.02, "early_stop_iter": 100.0 - 10 * round_index, "seconds": 2.0}
    if instability is not None:
        out["instability"] = instability
    return out


def sweep_data(raw: dict[str, Any], tmp_path: Path, trials: list[TrialRow], objective: str,
               space: dict[str, Any] | None = None) -> SweepData:
    space = {"prune.rate": {"uniform": [0.2, 0.5]}, **(space or {})}
    sweep = SweepConfig.model_validate({"name": "mo", "objective": {"name": objective}, "search": {
        "space": space, "sampler": "nsga2" if objective == "pareto" else "tpe"}})
    spec = LaunchSpec(sweep=sweep, experiment=raw, experiment_dir=str(tmp_path), wandb_mode="disabled")
    points = [{"trial_id": t.trial_id, "round": r.round, "density": r.density, "val_acc": r.val_acc.ticket,
               "test_acc": r.test_acc} for t in trials for r in t.rounds]
    front = pareto_front(points)
    multi = objective == "pareto"
    best = [t for t in trials if any(p["trial_id"] == t.trial_id for p in front)] if multi else trials[:1]
    return SweepData(spec=spec, name="mo", experiment_dir=str(tmp_path), objective=objective,
                     metrics=["density", "val_acc"] if multi else ["objective"],
                     modes=["min", "max"] if multi else ["min"], num_samples=len(trials),
                     counts={"TERMINATED": len(trials)}, trials=trials, best=best, pareto=front)


def trial(trial_id: str, rate: float, records: list[dict[str, Any]]) -> TrialRow:
    return TrialRow(trial_id=trial_id, state="TERMINATED", params={"prune.rate": rate}, config_hash=trial_id,
                    objective=records[-1]["val_acc"] if records else None,
                    rounds=[RoundRow.from_record(r) for r in records], records=records)


@pytest.fixture
def pareto_sweep(raw_config: dict[str, Any], tmp_path: Path) -> SweepData:
    trials = [
        trial("a", 0.2, [record(0, 1.0, 0.90, 0.01), record(1, 0.8, 0.91, 0.02), record(2, 0.64, 0.89, 0.05)]),
        trial("b", 0.5, [record(0, 1.0, 0.88, None), record(1, 0.5, 0.87, 0.10), record(2, 0.25, 0.80, 0.30)]),
    ]
    return sweep_data(raw_config, tmp_path, trials, "pareto")


def test_a_pareto_sweep_gets_its_front_and_no_single_objective_figures(pareto_sweep: SweepData) -> None:
    names = [f.name for f in figs.all_figures(pareto_sweep)]
    assert names == ["lottery_ticket.png", "early_stop.png", "pareto.png", "instability.png"]
    drawn = {d.kind: d for d in next(f for f in figs.all_figures(pareto_sweep) if f.name == "pareto.png").series}
    assert drawn["front"].x == pytest.approx([100 * p["density"] for p in pareto_sweep.pareto])
    assert drawn["front"].y == pytest.approx([p["val_acc"] for p in pareto_sweep.pareto])
    assert len(drawn["points"].x) == 6


def test_instability_is_drawn_for_the_rounds_that_measured_it(pareto_sweep: SweepData) -> None:
    instability = next(f for f in figs.all_figures(pareto_sweep) if f.name == "instability.png")
    lines = {d.trial_id: d for d in instability.series}
    assert lines["a"].x == pytest.approx([100, 80, 64]) and lines["a"].y == pytest.approx([0.01, 0.02, 0.05])
    assert lines["b"].x == pytest.approx([50, 25]) and lines["b"].y == pytest.approx([0.10, 0.30])
    assert instability.png.startswith(b"\x89PNG\r\n\x1a\n")


def test_instability_shows_the_controls_and_the_stable_bound(raw_config: dict[str, Any], tmp_path: Path) -> None:
    """The control's instability dashed beside its ticket (Frankle et al. 2020 compare the two), and the bound
    below which a round is stable: the paper's 2%, or the objective's own bound when it scores stability."""
    rows = [record(0, 1.0, 0.90, 0.01), record(1, 0.8, 0.89, 0.02), record(2, 0.64, 0.85, 0.04)]
    for r in rows[1:]:
        r.update(control="random_mask", control_val_acc=0.8, control_test_acc_at_early_stop=0.79,
                 control_early_stop_iter=50.0, control_instability=r["instability"] + 0.1)
    for objective, bound in (("matching_density", 0.02), ("stable_matching_density", 0.05)):
        raw_config.update(control="random_mask", stability={"points": 3})
        data = sweep_data(raw_config, tmp_path, [trial("a", 0.2, rows)], objective)
        if objective == "stable_matching_density":
            data.spec.sweep.objective.instability_bound = bound
        figure = next(f for f in figs.all_figures(data) if f.name == "instability.png")
        drawn = {d.kind: d for d in figure.series}
        assert drawn["ticket"].y == pytest.approx([0.01, 0.02, 0.04])
        assert drawn["control"].x == pytest.approx([80, 64]) and drawn["control"].y == pytest.approx([0.12, 0.14])
        assert drawn["control"].linestyle == "--"
        assert drawn["bound"].y == pytest.approx([bound]) and f"{bound:g}: below it a round is stable" in figure.caption


def test_a_sweep_without_a_finished_round_draws_nothing(raw_config: dict[str, Any], tmp_path: Path) -> None:
    data = sweep_data(raw_config, tmp_path, [trial("a", 0.3, []), trial("b", 0.4, [])], "matching_density")
    assert figs.all_figures(data) == []
    page = render(data, [], [], "rounds.csv")
    assert page.count("No trial has finished a round yet.") == 2 and "<img" not in page


def test_with_many_trials_only_the_best_gets_its_control_and_band(raw_config: dict[str, Any], tmp_path: Path) -> None:
    def rows(k: int) -> list[dict[str, Any]]:
        out = [record(0, 1.0, 0.9, None), record(1, 0.8, 0.9 - k / 100, None)]
        for r in out:
            r.update(val_acc_std=0.01, control_val_acc=r["val_acc"] - 0.1, control="random_mask")
        return out

    trials = [trial(f"t{k}", 0.2 + k / 100, rows(k)) for k in range(15)]
    data = sweep_data(raw_config, tmp_path, trials, "matching_density")
    drawn = [d for d in figs.lottery_ticket(data).series if d.axes == "val_acc"]
    assert len([d for d in drawn if d.kind == "ticket"]) == 15
    assert {d.trial_id for d in drawn if d.kind in ("control", "band")} == {"t0"}  # the best (first) trial


def test_a_sweep_over_the_rewind_point_plots_instability_against_it(raw_config: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    """One point per trial: (its rewind iteration, the instability of its sparsest measured round)."""
    trials = [TrialRow(trial_id=name, state="TERMINATED", params={"rewind.iteration": rewind}, config_hash=name,
                       objective=0.5, rounds=[RoundRow.from_record(r) for r in records], records=records)
              for name, rewind, records in [
                  ("early", 0, [record(0, 1.0, 0.9, 0.02), record(1, 0.8, 0.85, 0.20), record(2, 0.64, 0.8, 0.40)]),
                  ("late", 50, [record(0, 1.0, 0.9, 0.01), record(1, 0.8, 0.9, 0.02), record(2, 0.64, 0.9, 0.03)]),
                  ("unmeasured", 20, [record(0, 1.0, 0.9, None)])]]
    data = sweep_data(raw_config, tmp_path, trials, "matching_density")
    data = dataclasses.replace(data, spec=data.spec.model_copy(update={"sweep": data.spec.sweep.model_copy(
        update={"search": data.spec.sweep.search.model_copy(update={"space": {
            "rewind.iteration": Distribution(integer=(0, 50))}})}, deep=True)}))
    drawn = next(f for f in figs.all_figures(data) if f.name == "instability_vs_rewind.png")
    (points,) = drawn.series
    assert sorted(zip(points.x, points.y, strict=True)) == [(0.0, 0.40), (50.0, 0.03)]
    assert drawn.png.startswith(b"\x89PNG")
    without_rewind = sweep_data(raw_config, tmp_path, trials, "matching_density")  # prune.rate searched only
    assert "instability_vs_rewind.png" not in [f.name for f in figs.all_figures(without_rewind)]


@pytest.mark.parametrize("bounds", [(5e-4, 5e-3), (1e-4, 3e-1), (0.01, 0.03), (1e-6, 1.0)])
def test_a_log_axis_over_the_searched_range_has_readable_ticks(bounds: tuple[float, float]) -> None:
    """The objective-against-parameter panel of a loguniform value (as wide as in the report, 3 panels): the x
    axis spans the searched range, its tick labels are plain numbers, at least two, none overlapping another."""
    fig, axes = figs.figure(10.2, 3.2, ncols=3)
    ax = axes[2]
    low, high = bounds
    ax.scatter([low * 1.2, (low * high) ** 0.5, high / 1.1], [0.3, 0.2, 0.25])
    figs.searched_range_axis(ax, bounds, log=True)
    canvas = FigureCanvasAgg(fig)  # what savefig draws with
    canvas.draw()
    left, right = ax.get_xlim()
    assert left < low and high < right
    renderer = canvas.get_renderer()
    labels = [label for label in ax.xaxis.get_ticklabels(minor=False) + ax.xaxis.get_ticklabels(minor=True)
              if label.get_text() and left <= label.get_position()[0] <= right]
    assert len(labels) >= 2, [label.get_text() for label in labels]
    assert all("10^" not in label.get_text() for label in labels)  # matplotlib's own: mathtext powers of ten
    boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda box: box.x0)
    for before, after in itertools.pairwise(boxes):
        assert before.x1 < after.x0, [label.get_text() for label in labels]


@pytest.mark.parametrize("rises", [False, True])
def test_the_early_stop_caption_says_when_no_round_reached_its_minimum_before_the_end(
        raw_config: dict[str, Any], tmp_path: Path, rises: bool) -> None:
    """Rounds too short to overfit put every early stop at the round's last evaluation: the caption says so, and
    says nothing of the kind once one round's validation loss rose after its minimum."""
    def rounds(losses: list[tuple[float, float]]) -> list[dict[str, Any]]:
        return [{**record(k, 0.8 ** k, 0.9, None), "val_loss": last, "val_loss_min": lowest}
                for k, (last, lowest) in enumerate(losses)]

    trials = [trial("a", 0.2, rounds([(0.50, 0.50), (0.45, 0.45)])),
              trial("b", 0.5, rounds([(0.60, 0.60), (0.58, 0.52) if rises else (0.52, 0.52)]))]
    data = sweep_data(raw_config, tmp_path, trials, "matching_density")
    caption = next(f for f in figs.all_figures(data) if f.name == "early_stop.png").caption
    assert ("lowest at its last evaluation" in caption) is not rises


def test_a_pareto_sweep_names_its_red_trial_and_has_no_objective_column(pareto_sweep: SweepData) -> None:
    """A Pareto sweep has no single best (the red trial is the sparsest on the front) and no scalar objective
    (the trials' `objective` is their last val_acc, already a column)."""
    figure = figs.lottery_ticket(pareto_sweep)
    labels = {d.label for d in figure.series if d.kind == "ticket"}
    assert f"{pareto_sweep.best[0].trial_id} (sparsest on the front)" in labels
    assert "sparsest trial on the Pareto front in red" in figure.caption and "best" not in figure.caption
    top = [TopTrial(1, pareto_sweep.best[0], "e.yaml", "lth-sweep ticket export", "lth-sweep run")]
    page = render(pareto_sweep, [], top, "rounds.csv")
    assert "id='top-trials'" in page and "<th>its val_acc</th>" in page and "<th>objective</th>" not in page


@pytest.mark.parametrize("searched", [False, True], ids=["fixed", "searched"])
def test_the_legend_and_caption_name_the_controls_and_replicates_the_trials_train(
        searched: bool, raw_config: dict[str, Any], tmp_path: Path) -> None:
    """With `control` and `replicates` searched, the experiment's own values (none, 1) say nothing of the
    trials: the legend and captions name the controls they drew and their range of replicates."""
    def rows(control: str, replicates: int) -> list[dict[str, Any]]:
        out = [record(0, 1.0, 0.9, None), record(1, 0.8, 0.88, None)]
        if replicates > 1:
            for r in out:
                r.update(val_acc_std=0.01, test_acc_at_early_stop_std=0.01)
        if control != "none":
            out[1].update(control_val_acc=0.8, control_test_acc_at_early_stop=0.79, control=control)
        return out

    if searched:
        draws = [("none", 1), ("reinit", 2), ("random_mask", 3)]
        space = {"control": {"choice": ["none", "reinit", "random_mask"]}, "replicates": {"int": [1, 3]}}
    else:
        raw_config.update(control="reinit", replicates=2)
        draws, space = [("reinit", 2)] * 3, {}
    trials = [dataclasses.replace(trial(f"t{k}", 0.3, rows(*draw)), params={"prune.rate": 0.3, "control": draw[0],
                                                                          "replicates": draw[1]})
              for k, draw in enumerate(draws)]
    figure = figs.lottery_ticket(sweep_data(raw_config, tmp_path, trials, "matching_density", space))
    if searched:
        assert "a trial's control (reinit or random_mask; control is searched)" in figure.caption
        assert "±1 std over 1–3 replicates" in figure.caption
    else:
        assert "its reinit control dashed beside each ticket" in figure.caption
        assert "±1 std over 2 replicates" in figure.caption


def test_a_trial_asha_stopped_says_so_on_the_page(raw_config: dict[str, Any], tmp_path: Path) -> None:
    """Tune calls an ASHA-stopped trial TERMINATED, like one that trained all its rounds: the page tells them
    apart."""
    done = trial("a", 0.3, [record(0, 1.0, 0.9, None), record(1, 0.7, 0.9, None), record(2, 0.49, 0.89, None)])
    stopped = dataclasses.replace(trial("b", 0.2, [record(0, 1.0, 0.85, None)]), stopped_early=True)
    data = sweep_data(raw_config, tmp_path, [done, stopped], "matching_density")
    page = render(data, [], [], "rounds.csv")
    assert "2 done (1 stopped early by ASHA)" in page
    crosses = "grey crosses are trials ASHA stopped"  # their objective is the value they had when stopped
    assert crosses in figs.objective_vs_params(data).caption
    assert crosses not in figs.objective_vs_params(sweep_data(raw_config, tmp_path, [done], "matching_density")).caption
    rows = {row.split("</td>")[0].rsplit(">", 1)[-1]: row for row in page.split("<tr>")[1:]}
    assert "<td class='text'>stopped by ASHA</td>" in rows["b"] and "<td class='text'>TERMINATED</td>" in rows["a"]


def test_a_best_trial_without_a_winning_ticket_gets_no_default_export_command(raw_config: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    """A trial whose dense network stayed at chance has no winning ticket, so `ticket export` without --round
    exits 2: the report's command for it names --round and says why; a trial that learned gets the plain one."""
    trials = [trial("learned", 0.2, [record(0, 1.0, 0.90, None), record(1, 0.8, 0.90, None)]),
              trial("chance", 0.5, [record(0, 1.0, 0.10, None), record(1, 0.5, 0.10, None)])]
    data = dataclasses.replace(sweep_data(raw_config, tmp_path, trials, "matching_density"), best=trials)
    learned, chance = top_trials(data, tmp_path / "report", tmp_path / "report")
    assert learned.ticket_command == shlex.join(["lth-sweep", "ticket", "export", str(tmp_path), "learned", "--out",
                                                 str(tmp_path / "report" / "tickets" / "learned.pt")])
    assert chance.ticket_command.startswith(f"lth-sweep ticket export {tmp_path} chance --out ")
    assert chance.ticket_command.endswith(" --round R  # no winning ticket: its dense network did not learn "
                                          "(val_acc 0.1 < objective.min_dense_val_acc 0.15)")


def test_the_tables_and_the_plot_show_each_trials_winning_ticket(raw_config: dict[str, Any], tmp_path: Path) -> None:
    """The page used to show only the last round's density ("density reached") beside the objective, and the plot
    no ticket: a reader took the sparsest round for the winning ticket. Trial "a" matches its dense val_acc (0.90,
    tolerance 0.01) down to round 2 and pruned on to round 3; trial "b" never matches below the dense network."""
    a = trial("a", 0.2, [record(0, 1.0, 0.90, None), record(1, 0.8, 0.905, None), record(2, 0.64, 0.891, None),
                         record(3, 0.512, 0.80, None)])
    b = trial("b", 0.5, [record(0, 1.0, 0.90, None), record(1, 0.5, 0.85, None)])
    data = dataclasses.replace(sweep_data(raw_config, tmp_path, [a, b], "matching_density"), best=[a, b])
    page = render(data, [], top_trials(data, tmp_path / "report", tmp_path / "report"), "rounds.csv")
    for table in ("top-trials", "trials"):
        rows = {row.split("</td>")[1].rsplit(">", 1)[-1] if table == "top-trials" else
                row.split("</td>")[0].rsplit(">", 1)[-1]: row
                for row in page.split(f"<table id='{table}'>")[1].split("</table>")[0].split("<tr")[2:]}
        assert "<td>64% (round 2)</td><td>0.891</td><td>0.871</td><td>51.2%</td>" in rows["a"], rows["a"]
        assert "no pruned round is within objective.tolerance 0.01" in rows["b"] and ">none</td>" in rows["b"]
    figure = figs.lottery_ticket(data)
    stars = {(d.axes, d.trial_id): (d.x, d.y) for d in figure.series if d.kind == "winner"}
    assert stars == {("val_acc", "a"): ([64.0], [0.891]), ("test_acc_at_early_stop", "a"): ([64.0], [0.871])}
    (tolerance,) = [d for d in figure.series if d.kind == "tolerance"]
    assert tolerance.axes == "val_acc" and tolerance.y == [pytest.approx(0.89)]
    assert "a star marks each trial's winning ticket" in figure.caption
    best_val = figs.lottery_ticket(dataclasses.replace(data, spec=data.spec.model_copy(update={
        "sweep": data.spec.sweep.model_copy(update={"objective": data.spec.sweep.objective.model_copy(
            update={"name": "best_val_acc"})})})))
    assert not [d for d in best_val.series if d.kind == "tolerance"], "no tolerance line when nothing is matched"

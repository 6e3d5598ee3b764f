"""The sweep's W&B report (wandb-workspaces' reports API) over the runs of its W&B group: test and
validation accuracy against density per trial, a parallel-coordinates panel over the searched values and the
objective, parameter importance on the objective, and a run comparer.

With W&B credentials the report is saved and its URL returned; without them (or when saving fails) its
definition is written to DIR/wandb_report.json. The definition builds offline: `Report` gets its entity
explicitly (without one it asks the W&B API) and the runsets' entity and project stay empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lth_sweep.checkpoint import write_text
from lth_sweep.report.data import SweepData
from lth_sweep.sweep.tracking import has_api_key

DEFINITION_FILE = "wandb_report.json"
PANEL_KINDS = ("Run History Line Plot", "Parallel Coordinates Plot", "Parameter Importance", "Run Comparer")


def group_of(data: SweepData) -> str:
    """The W&B group the sweep's runs are in (as the trainable names it)."""
    return data.spec.sweep.wandb.group or data.name


def objective_keys(data: SweepData) -> list[str]:
    """The summary keys that stand for the objective: `objective`, or (density, val_acc) for pareto."""
    return ["objective"] if data.single_objective else list(data.metrics)


def build_report(data: SweepData, entity: str, project: str, runset_entity: str = "", runset_project: str = ""):
    """The report object (nothing is sent anywhere until `save()`)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    group = group_of(data)
    runset = wr.Runset(entity=runset_entity, project=runset_project, name=f"sweep {group}",
                       filters=expr.And(expr.Metric("Group") == group))
    accuracy = [
        wr.LinePlot(title=f"{title} against density", x="density", y=[key], log_x=True,
                    title_x="density (fraction of weights remaining)", title_y=title, legend_position="south")
        for key, title in (("test_acc_at_early_stop", "test accuracy at early stop"),
                           ("val_acc", "validation accuracy"))
    ]
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key), display_name=key,
                                                log=dist.kind == "loguniform")
               for key, dist in data.space.items()]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(key), display_name=key)
                for key in objective_keys(data)]
    panels = [
        *accuracy,
        wr.ParallelCoordinatesPlot(title="searched values and the objective", columns=columns),
        wr.ParameterImportancePlot(with_respect_to=objective_keys(data)[-1]),
        wr.RunComparer(diff_only="split"),
    ]
    objective = ", ".join(f"{m} {o}" for m, o in zip(data.metrics, data.modes, strict=True))
    return wr.Report(
        entity=entity, project=project, title=f"Lottery-ticket sweep {data.name}",
        description=f"{len(data.trials)} of {data.num_samples} trials; objective {data.objective} ({objective})",
        blocks=[
            wr.H1(text=f"Sweep {data.name}"),
            wr.P(text=f"Every trial is one iterative-magnitude-pruning run (W&B group {group}); each round is a "
                      f"point at the density it reached. Objective: {data.objective} ({objective})."),
            wr.PanelGrid(runsets=[runset], panels=panels),
        ],
    )


def definition(report) -> dict[str, Any]:
    """The report's definition as W&B stores it (the view spec), built offline."""
    return report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def write_definition(data: SweepData, out_dir: Path) -> Path:
    settings = data.spec.sweep.wandb
    report = build_report(data, entity=settings.entity or "", project=settings.project)
    path = out_dir / DEFINITION_FILE
    write_text(path, json.dumps(definition(report), indent=1))
    return path


def default_entity() -> str:
    """The entity of the configured API key (asks the W&B server)."""
    import wandb

    return wandb.Api().default_entity


def publish(data: SweepData, out_dir: Path) -> str:
    """Saves the W&B report when credentials exist and returns a line to print: its URL, or why not and where
    the definition was written instead."""
    if not has_api_key():
        path = write_definition(data, out_dir)
        return (f"no W&B credentials (WANDB_API_KEY or `wandb login`): the W&B report was not published; "
                f"its definition is in {path}")
    settings = data.spec.sweep.wandb
    try:
        entity = settings.entity or default_entity()
        report = build_report(data, entity=entity, project=settings.project, runset_entity=entity,
                              runset_project=settings.project)
        report.save()
        return f"W&B report: {report.url}"
    except Exception as err:  # noqa: BLE001 - no network, a rejected key: the local report stands anyway
        path = write_definition(data, out_dir)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"the W&B report could not be saved ({reason}); its definition is in {path}"

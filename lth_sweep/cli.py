"""The `lth-sweep` command. User mistakes print one line and exit 2; failures while running exit 1."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lth_sweep.errors import UserError

if TYPE_CHECKING:
    from lth_sweep.sweep.spec import LaunchSpec

ROUND_COLUMNS = (
    ("round", "{:>5}", "round"),
    ("density", "{:>8.4f}", "density"),
    ("val_acc", "{:>7.4f}", "val_acc"),
    ("test_acc", "{:>8.4f}", "test_acc"),
    ("early_stop_iter", "{:>8.0f}", "es_iter"),
    ("test_acc_at_early_stop", "{:>7.4f}", "test@es"),
    ("train_loss", "{:>10.4f}", "train_loss"),
    ("seconds", "{:>7.1f}", "seconds"),
    ("samples_per_s", "{:>10.0f}", "samples/s"),
)


def round_header() -> str:
    widths = [len(fmt.format(0)) for _, fmt, _ in ROUND_COLUMNS]
    return " ".join(title.rjust(w) for (_, _, title), w in zip(ROUND_COLUMNS, widths, strict=True))


def round_row(record: dict[str, Any]) -> str:
    row = " ".join(fmt.format(record[key]) for key, fmt, _ in ROUND_COLUMNS)
    if "control_test_acc" in record:
        row += f"   {record['control']}: test_acc {record['control_test_acc']:.4f}"
    if "val_acc_std" in record:
        row += f"   ±{record['val_acc_std']:.4f} over {record['replicates']} replicates"
    return row


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Lottery-ticket (iterative magnitude pruning) experiments and sweeps."""


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a dotted key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Trial directory (default runs/<experiment>-<config hash>). Rerun to resume.")
def run(experiment: Path, overrides: tuple[str, ...], out: Path | None) -> None:
    """Run one IMP trial (no Ray): train, prune, rewind, retrain for prune.rounds rounds."""
    from lth_sweep.config import load_experiment, parse_overrides
    from lth_sweep.engine.lottery import Trial

    config = load_experiment(experiment, parse_overrides(overrides))
    out = out or Path("runs") / f"{experiment.stem}-{config.config_hash()}"
    trial = Trial(config, out, on_round=lambda record: click.echo(round_row(record)))
    done = trial.records()
    click.echo(f"# {config.model.name} on {config.dataset.name}, {config.prune.rounds} rounds, "
               f"config {config.config_hash()}, device {trial.device} -> {out}")
    click.echo(round_header())
    for record in done:
        click.echo(round_row(record))
    if done and len(done) < config.prune.rounds:
        click.echo(f"# resuming after round {done[-1]['round']}")
    trial.run()
    click.echo(f"# rounds written to {out / 'rounds.jsonl'}")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def print_status(status: dict[str, Any]) -> None:
    click.echo(f"sweep {status['name']} at {status['experiment_dir']}: objective {status['objective']} "
               f"({', '.join(f'{m} {o}' for m, o in zip(status['metric'], status['mode'], strict=True))}); "
               f"{len(status['trials'])}/{status['num_samples']} trials "
               + ", ".join(f"{n} {state.lower()}" for state, n in status["counts"].items()))
    params = sorted({k for row in status["trials"] for k in row["params"]})
    columns = ["trial_id", "state", *params, "rounds_done", "density", "val_acc", "objective"]
    table = [[format_value(row["params"].get(c) if c in params else row.get(c)) for c in columns]
             for row in status["trials"]]
    widths = [max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)]
    click.echo("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in table:
        click.echo("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    if status.get("best"):
        click.echo("best trials: " + "; ".join(
            f"{b['trial_id']} objective {format_value(b['objective'])} "
            f"({', '.join(f'{k}={format_value(v)}' for k, v in b['params'].items())})" for b in status["best"]))
    if status["pareto"]:
        click.echo("pareto front (density, val_acc) over all rounds: " + ", ".join(
            f"({p['density']:.3f}, {p['val_acc']:.4f})" for p in status["pareto"]))


def finish_sweep(spec: LaunchSpec, interrupted: bool) -> None:
    from lth_sweep.sweep.status import sweep_status

    status = sweep_status(spec.experiment_dir)
    print_status(status)
    states = [row["state"] for row in status["trials"]]
    failed = "ERROR" in states
    unfinished = len(states) < status["num_samples"] or any(state != "TERMINATED" for state in states)
    if spec.wandb_mode == "offline":
        from lth_sweep.sweep.fetch import wandb_sync_command

        command = wandb_sync_command(spec.experiment_dir, spec.name)
        click.echo(f"W&B runs were written offline; upload them with: {command}")
    if interrupted or unfinished:
        # Tune catches Ctrl+C itself, saves the experiment and returns: unfinished trials and no
        # errors mean the sweep was stopped, not that it failed.
        click.echo(f"the sweep is not finished{' (some trials failed)' if failed else ''}; "
                   f"continue it with: lth-sweep resume {spec.experiment_dir}")
        sys.exit(1 if failed else 130)
    click.echo(f"everything is under {spec.experiment_dir}")


SHARED_STORAGE_HELP = ("The --storage folder is mounted at the same path on every node (NFS): allowed on a "
                       "multi-node cluster (sweep key storage_shared: true).")


@cli.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a dotted key of the sweep (search.num_samples=4) or of its experiment (prune.rounds=3).")
@click.option("--name", default=None, help="Sweep name (default: the sweep file's name).")
@click.option("--storage", default=None, help="Folder or URI (s3://, gs://) for the sweep's results.")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray on this machine).")
@click.option("--shared-storage", is_flag=True, help=SHARED_STORAGE_HELP)
def launch(sweep_file: Path, overrides: tuple[str, ...], name: str | None, storage: str | None,
           address: str | None, shared_storage: bool) -> None:
    """Run a sweep: Ray Tune trials, each a full IMP schedule, searched by Optuna, logged to W&B."""
    from lth_sweep.config import parse_overrides
    from lth_sweep.sweep.launch import prepare_launch, run_sweep
    from lth_sweep.sweep.schema import load_sweep

    sweep, experiment = load_sweep(sweep_file, parse_overrides(overrides))
    if shared_storage:
        sweep.storage_shared = True
    spec = prepare_launch(sweep, experiment, storage, name)
    click.echo(f"# sweep {sweep.name}: {sweep.search.num_samples} trials, objective {sweep.objective.name}, "
               f"W&B {spec.wandb_mode} -> {spec.experiment_dir}")
    _, interrupted = run_sweep(spec, address, resume=False)
    finish_sweep(spec, interrupted)


@cli.command()
@click.argument("path")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray on this machine).")
@click.option("--shared-storage", is_flag=True, help=SHARED_STORAGE_HELP)
def resume(path: str, address: str | None, shared_storage: bool) -> None:
    """Continue an interrupted sweep; finished rounds are never recomputed."""
    from lth_sweep.sweep.launch import run_sweep
    from lth_sweep.sweep.spec import load_spec

    spec = load_spec(path)
    if shared_storage:
        spec = spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"storage_shared": True})})
    click.echo(f"# resuming sweep {spec.name} at {spec.experiment_dir}")
    _, interrupted = run_sweep(spec, address, resume=True)
    finish_sweep(spec, interrupted)


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(path: str, as_json: bool) -> None:
    """Show every trial of a sweep: searched values, state, rounds, density, objective; and the best."""
    import json

    from lth_sweep.sweep.status import sweep_status

    result = sweep_status(path)
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    else:
        print_status(result)


@cli.command()
@click.argument("path")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.md, density_vs_accuracy.png and rounds.csv (default PATH/report).")
def report(path: str, out: Path | None) -> None:
    """Write a local report of a sweep: IMP curves of every trial, best trials, Pareto front."""
    from lth_sweep import storage
    from lth_sweep.report.local import write_report
    from lth_sweep.sweep.spec import load_spec

    spec = load_spec(path)
    if out is None:
        if storage.is_uri(spec.experiment_dir):
            raise UserError("--out", "give a local folder for the report of a sweep stored at a URI")
        out = Path(spec.experiment_dir) / "report"
    click.echo(f"report written to {write_report(path, out)}")


@cli.command()
@click.argument("path")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Local folder.")
@click.option("--wandb", "wandb_only", is_flag=True, help="Only the offline W&B runs (by_config/*/wandb).")
def fetch(path: str, out: Path, wandb_only: bool) -> None:
    """Copy a sweep from its storage (s3://, gs://, a folder) to a local folder, e.g. to `wandb sync` it."""
    import shlex

    from lth_sweep.sweep.fetch import WANDB_RUNS_GLOB, fetch_sweep
    from lth_sweep.sweep.spec import load_spec

    spec = load_spec(path)
    runs = fetch_sweep(spec.experiment_dir, out, wandb_only)
    click.echo(f"copied {'the W&B runs' if wandb_only else 'the sweep'} of {spec.name} to {out} "
               f"({len(runs)} offline W&B runs)")
    if runs:
        click.echo(f"upload them with: wandb sync {shlex.quote(str(out))}/{WANDB_RUNS_GLOB}")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="lth-sweep", standalone_mode=False)
    except UserError as err:
        click.echo(f"lth-sweep: error: {err}", err=True)
        sys.exit(2)
    except click.UsageError as err:
        click.echo(f"lth-sweep: error: {err.format_message()}", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        click.echo("lth-sweep: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)


if __name__ == "__main__":
    main()

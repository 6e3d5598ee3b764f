"""The `lth-sweep` command. User mistakes print one line and exit 2; failures while running exit 1."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lth_sweep.errors import UserError

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
    from lth_sweep.lottery import Trial

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

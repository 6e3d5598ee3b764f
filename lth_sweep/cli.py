"""The `lth-sweep` command. User mistakes print one line and exit 2; failures while running exit 1."""

from __future__ import annotations

import atexit
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from lth_sweep.errors import RunFailure, UserError
from lth_sweep.signals import sigterm_as_ctrl_c, stopped_exit_code

if TYPE_CHECKING:
    from lth_sweep.sweep.launch import Start
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
        row += f"   val_acc ±{record['val_acc_std']:.4f} (std over {record['replicates']} replicates)"
    return row


def echo(text: str = "", err: bool = False) -> None:
    """click.echo that survives a reader that went away (`| tee` or `| head` ended): our output then stops,
    the command goes on to its own end and exit status."""
    try:
        click.echo(text, err=err)
    except BrokenPipeError:
        stream = sys.stderr if err else sys.stdout
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # later writes, and the flush at exit, go nowhere
        os.close(devnull)


class FullShortHelp:
    """The group's listing shows each command's first sentence whole (click cuts it to the terminal width)."""

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help:  # type: ignore[attr-defined]
            return self.short_help  # type: ignore[attr-defined]
        return click.utils.make_default_short_help(self.help or "", max_length=10_000)  # type: ignore[attr-defined]


class Command(FullShortHelp, click.Command):
    pass


class Group(FullShortHelp, click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too


@click.group(cls=Group, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lth-sweep", prog_name="lth-sweep", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Lottery-ticket (iterative magnitude pruning) experiments and sweeps."""
    if ctx.invoked_subcommand is None:
        echo(ctx.get_help())


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a dotted key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Trial directory (default runs/<experiment>-<config hash>). Rerun to resume.")
@click.option("--ticket", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Retrain this exported ticket for its one round instead (no EXPERIMENT, no --set).")
def run(experiment: Path | None, overrides: tuple[str, ...], out: Path | None, ticket: Path | None) -> None:
    """Run one IMP trial (no Ray): train, prune, rewind, retrain for prune.rounds rounds.

    A larger prune.rounds on a finished trial's --out continues it; a smaller one reports its first rounds."""
    from lth_sweep.checkpoint import load_torch
    from lth_sweep.config import load_experiment, machine_cpus, parse_overrides
    from lth_sweep.engine.lottery import Trial
    from lth_sweep.storage import check_folder

    if ticket is not None:
        if experiment is not None or overrides:
            raise click.UsageError("--ticket takes no EXPERIMENT and no --set: the ticket holds its experiment")
        run_ticket(ticket, out)
        return
    if experiment is None:
        raise click.UsageError("give an EXPERIMENT file (or --ticket FILE)")
    config = load_experiment(experiment, parse_overrides(overrides))
    cores = machine_cpus()
    if config.runtime.threads > cores:  # torch would start them all: far more than the cores can hang a round
        raise UserError("runtime.threads", f"{config.runtime.threads} is more than the {cores} CPUs this process "
                                           f"may use; allowed: 1 to {cores}")
    out = out or Path("runs") / f"{experiment.stem}-{config.config_hash()}"
    check_folder(out, "--out")
    check_trial_folder(out)
    trial = Trial(config, out, on_round=lambda record: click.echo(round_row(record)))
    done = trial.records()
    if len(done) < config.prune.rounds:
        trial.check()  # the dataset (downloaded if asked) and the model, before the header
        if done and trial.rewind_path.exists():
            load_torch(trial.rewind_path)  # the rounds to come start from it: unreadable is said now
    click.echo(f"# {config.model.name} on {config.dataset.name}, {config.prune.rounds} rounds, "
               f"config {config.config_hash()}, device {trial.device} -> {out}")
    click.echo(round_header())
    for record in done:
        click.echo(round_row(record))
    if done and len(done) < config.prune.rounds:
        click.echo(f"# resuming after round {done[-1]['round']}")
    trained = len(done) < config.prune.rounds
    trial.run()
    click.echo(f"# rounds written to {out / 'rounds.jsonl'}" if trained else
               f"# nothing to train: its rounds were in {out / 'rounds.jsonl'} already")


def run_ticket(path: Path, out: Path | None) -> None:
    """`lth-sweep run --ticket FILE`: one round from the ticket's rewind weights under its masks."""
    from lth_sweep.report.tickets import Retraining, differences

    retraining = Retraining(path, out, on_round=lambda record: click.echo(round_row(record)))
    ticket = retraining.ticket
    click.echo(f"# ticket {path}: round {ticket['round']} of config {retraining.trial_hash} (replicate "
               f"{ticket['replicate']}, seed {ticket['seed']}), density {ticket['record']['density']:.4f}, "
               f"one round from its rewind weights under its masks -> {retraining.out}")
    click.echo(round_header())
    for record in retraining.records():
        click.echo(round_row(record))
    diff = differences(ticket, retraining.run())
    if diff:
        click.echo("# differs from the ticket's record (float rounding: trained on another device, with another "
                   f"thread count, or stacked in a pack of configs?): {'; '.join(diff)}")
    else:
        click.echo("# reproduces the ticket's recorded metrics exactly")
    click.echo(f"# round written to {retraining.out / 'rounds.jsonl'}")


@cli.group()
def ticket() -> None:
    """Winning tickets: export one round of a trial as a plain PyTorch file."""


@ticket.command("export")
@click.argument("path")
@click.argument("trial", required=False)
@click.option("--round", "round_index", type=int, default=None,
              help="Round to export (default: the winning ticket as the sweep's objective scores it: the sparsest "
                   "round within its tolerance of the dense val_acc, and stable for stable_matching_density).")
@click.option("--replicate", type=int, default=0, show_default=True, help="Which replicate (seed + K) to export.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The ticket file to write.")
def ticket_export(path: str, trial: str | None, round_index: int | None, replicate: int, out: Path) -> None:
    """Export TRIAL (a trial id or config hash, as `status` prints them; default: the sweep's best trial) of the
    sweep at PATH (a folder or URI), or the `lth-sweep run` trial folder PATH (no TRIAL), as a ticket file. Reads
    storage only; starts no Ray."""
    from lth_sweep.report.tickets import export_ticket

    written = export_ticket(path, trial, out, round_index, replicate)
    record, source = written["record"], written["source"]
    if trial is None and source["trial_chosen"] != "asked for":
        click.echo(f"trial {source['trial']} ({source['trial_chosen']})")
    click.echo(f"ticket of round {written['round']} ({source['round_chosen']}): density {record['density']:.4f}, "
               f"val_acc {record['val_acc']:.4f}, replicate {written['replicate']} (seed {written['seed']}), "
               f"config {source['config_hash']} -> {out}")


TRIAL_MARKER = "config.yaml"  # the first file a trial writes into its folder


def check_trial_folder(out: Path) -> None:
    """--out must be new, empty, or a trial's folder (to resume it): never a folder of other files."""
    if out.is_dir() and not (out / TRIAL_MARKER).exists() and any(out.iterdir()):
        raise UserError("--out", f"{out} is not empty and holds no trial (no {TRIAL_MARKER}); give a new or "
                                 "empty folder, or the folder of a trial to resume it")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


STOPPED = "STOPPED"  # shown for a trial ASHA ended early (Tune's state is TERMINATED)


def print_status(status: dict[str, Any]) -> None:
    for warning in status.get("warnings", []):
        echo(f"lth-sweep: warning: {warning}", err=True)
    stopped = sum(bool(row.get("stopped_early")) for row in status["trials"])
    echo(f"sweep {status['name']} at {status['experiment_dir']}: objective {status['objective']} "
         f"({', '.join(f'{m} {o}' for m, o in zip(status['metric'], status['mode'], strict=True))}); "
         f"{len(status['trials'])}/{status['num_samples']} trials "
         + (", ".join(f"{n} {state.lower().replace('_', ' ')}" for state, n in status["counts"].items())
            or "(Tune has started none yet)")
         + (f" ({stopped} of them stopped early by ASHA)" if stopped else ""))
    if not status["trials"]:
        return
    params = sorted({k for row in status["trials"] for k in row["params"]})
    single = len(status["metric"]) == 1  # a Pareto sweep's objective is (density, val_acc): no column of its own
    columns = ["trial_id", "config", "state", *params, "rounds_done", "density", "val_acc",
               *(["objective"] if single else [])]
    shown = [{**row, "config": row["config_hash"], "state": STOPPED if row.get("stopped_early") else row["state"]}
             for row in status["trials"]]
    table = [[format_value(row["params"].get(c) if c in params else row.get(c)) for c in columns] for row in shown]
    widths = [max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)]
    echo("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in table:
        echo("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    if status.get("best"):
        echo("best trials: " + "; ".join(
            f"{b['trial_id']} objective {format_value(b['objective'])} "
            f"({', '.join(f'{k}={format_value(v)}' for k, v in b['params'].items())})" for b in status["best"]))
    if status["pareto"]:
        echo("pareto front (density, val_acc) over all rounds: " + ", ".join(
            f"({p['density']:.3f}, {p['val_acc']:.4f})" for p in status["pareto"]))


def is_finished(status: dict[str, Any]) -> bool:
    states = [row["state"] for row in status["trials"]]
    return len(states) >= status["num_samples"] and all(state == "TERMINATED" for state in states)


def same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def say_twice(text: str) -> None:
    """On stdout, and on stderr as well unless both are the same terminal or file: a line that must reach
    the user even when stdout is a pipe whose reader died (Ctrl+C kills `tee` too)."""
    echo(text)
    if not same_file(sys.stdout.fileno(), sys.stderr.fileno()):
        echo(text, err=True)


def spec_saved(spec: LaunchSpec) -> bool:
    """Whether the sweep's spec is in its folder (a launch saves it once Ray has started, before Tune)."""
    from lth_sweep import storage
    from lth_sweep.sweep.spec import SPEC_FILE

    return storage.exists(storage.join(spec.experiment_dir, SPEC_FILE))


def stopped_before_start(spec: LaunchSpec) -> NoReturn:
    say_twice(f"the sweep was stopped before it started; nothing of it was saved: launch it again with the same "
              f"command (the name {spec.name} is still free)")
    sys.exit(stopped_exit_code())


def stop_unfinished(spec: LaunchSpec, failed: bool = False, saved: bool | None = None) -> NoReturn:
    """The line that says how to go on, then exit: 1 if trials failed, else 130 (Ctrl+C) or 143 (SIGTERM).
    `saved`: whether the spec is known to be in the sweep's folder (None: look)."""
    if not (spec_saved(spec) if saved is None else saved):
        stopped_before_start(spec)
    say_twice(f"the sweep is not finished{' (some trials failed)' if failed else ''}; "
              f"continue it with: lth-sweep resume {shlex.quote(spec.experiment_dir)}")
    sys.exit(1 if failed else stopped_exit_code())


def finish_sweep(spec: LaunchSpec, interrupted: bool) -> None:
    from lth_sweep.sweep.status import status_of

    if interrupted and not spec_saved(spec):
        stopped_before_start(spec)
    status = status_of(spec)
    print_status(status)
    failed = any(row["state"] == "ERROR" for row in status["trials"])
    from lth_sweep.sweep.fetch import has_offline_runs, wandb_sync_command

    if spec.wandb_mode in ("offline", "online") and has_offline_runs(spec.experiment_dir):
        echo(f"W&B runs were written offline; upload them with: {wandb_sync_command(spec.experiment_dir, spec.name)}")
    if interrupted or not is_finished(status):
        # Tune catches Ctrl+C itself, saves the experiment and returns: unfinished trials and no
        # errors mean the sweep was stopped, not that it failed. The spec was saved before Tune ran (looked at
        # above if interrupted).
        stop_unfinished(spec, failed, saved=True)
    where = shlex.quote(spec.experiment_dir)
    ticket = (f"lth-sweep ticket export {where} --out ticket.pt (the best trial's winning ticket)" if status.get("best")
              else f"lth-sweep ticket export {where} TRIAL --out ticket.pt (a trial's winning ticket)")
    echo(f"next: lth-sweep report {where} (a page of figures); {ticket}")
    echo(f"everything is under {spec.experiment_dir}")


def run_and_finish(spec: LaunchSpec, address: str | None, start: Start, verbose: bool) -> None:
    """Runs the sweep and prints its summary; Ctrl+C (SIGTERM) at any point ends with the resume command and exit
    130 (143)."""
    from lth_sweep.sweep.launch import driver_log_path, run_sweep

    RAN_RAY.append(True)
    try:
        if not verbose:
            echo(f"# Ray's and Tune's own output goes to {driver_log_path(spec)} (-v shows it here)")
        _, interrupted = run_sweep(spec, address, start, verbose=verbose)
        finish_sweep(spec, interrupted)
    except KeyboardInterrupt:
        stop_unfinished(spec)
    except RunFailure as err:  # the disk under the sweep filled up, or went read-only
        say_twice(f"lth-sweep: error: {err}; once that is fixed, continue the sweep with: lth-sweep resume "
                  f"{shlex.quote(spec.experiment_dir)}")
        sys.exit(1)


VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Show Ray's and Tune's own output here too.")


SHARED_STORAGE_HELP = ("The --storage folder is mounted at the same path on every node (NFS): allowed on a "
                       "multi-node cluster (sweep key storage_shared: true).")


@cli.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a dotted key of the sweep (search.num_samples=4) or of its experiment (prune.rounds=3).")
@click.option("--name", default=None, help="Sweep name (default: the sweep file's name).")
@click.option("--storage", default=None, help="Folder or URI (s3://, gs://) for the sweep's results "
                                              "(default: the sweep file's storage:, relative to that file).")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray on this machine).")
@click.option("--shared-storage", is_flag=True, help=SHARED_STORAGE_HELP)
@VERBOSE
def launch(sweep_file: Path, overrides: tuple[str, ...], name: str | None, storage: str | None,
           address: str | None, shared_storage: bool, verbose: bool) -> None:
    """Run a sweep: Ray Tune trials, each a full IMP schedule, searched by Optuna, logged to W&B."""
    from lth_sweep.config import parse_overrides
    from lth_sweep.sweep.launch import check_cluster_storage, end_dead_drivers_ray, prepare_launch
    from lth_sweep.sweep.lock import driver_lock
    from lth_sweep.sweep.schema import load_sweep

    sweep, experiment = load_sweep(sweep_file, parse_overrides(overrides))
    if shared_storage:
        sweep.storage_shared = True
    spec = prepare_launch(sweep, experiment, storage, name, address)
    check_cluster_storage(spec, address)
    with driver_lock(spec.experiment_dir) as dead_driver:  # one killed before it saved the sweep, if any
        end_dead_drivers_ray(dead_driver)
        pack = spec.sweep.search.pack
        packs = f" in packs of {pack} per Ray trial" if isinstance(pack, int) and pack > 1 else ""
        echo(f"# sweep {sweep.name}: {sweep.search.num_samples} trials{packs}, objective {sweep.objective.name}, "
             f"W&B {spec.wandb_mode} -> {spec.experiment_dir}")
        run_and_finish(spec, address, "launch", verbose=verbose)


@cli.command()
@click.argument("path")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray on this machine).")
@click.option("--shared-storage", is_flag=True, help=SHARED_STORAGE_HELP)
@VERBOSE
def resume(path: str, address: str | None, shared_storage: bool, verbose: bool) -> None:
    """Continue an interrupted sweep; finished rounds are never recomputed."""
    from lth_sweep import storage
    from lth_sweep.sweep.launch import (
        check_address,
        check_cluster_storage,
        check_ray_temp_dir,
        check_resources,
        check_restorable,
        end_dead_drivers_ray,
        with_env_wandb_mode,
    )
    from lth_sweep.sweep.lock import driver_lock
    from lth_sweep.sweep.snapshot import has_snapshot, repair
    from lth_sweep.sweep.spec import SPEC_FILE, load_spec
    from lth_sweep.sweep.status import status_of

    spec = with_env_wandb_mode(load_spec(path))
    if shared_storage:
        spec = spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"storage_shared": True})})
    check_resources(spec.sweep.resources, address)
    check_address(address)
    check_cluster_storage(spec, address)
    with driver_lock(spec.experiment_dir) as dead_driver:  # first: a sweep another driver runs is not finished
        repaired = repair(spec.experiment_dir)  # a snapshot a kill cut short, put back from the kept copy
        if repaired:
            echo(f"# {repaired}")
        status = status_of(spec)
        if is_finished(status):
            echo(f"sweep {spec.name} at {spec.experiment_dir} is finished ({len(status['trials'])} trials); "
                 f"nothing to resume; see: lth-sweep status {shlex.quote(spec.experiment_dir)}")
            return
        # a launch stopped before Tune saved its first snapshot (and no copy of one was put back) cannot be
        # restored: Tune's tuner.pkl alone holds a searcher without its search space, if it was written at all
        start: Start = "restore" if has_snapshot(storage.list_files(spec.experiment_dir)) else "relaunch"
        if start == "restore":
            check_restorable(spec.experiment_dir)
        check_ray_temp_dir(address)
        echo(f"# resuming sweep {spec.name} at {spec.experiment_dir}")
        if start == "relaunch":
            echo("# its launch was stopped before Tune saved a snapshot of it: starting it again from its "
                 f"{SPEC_FILE}; rounds its trials trained are found by their configs")
        if dead_driver:
            echo(f"# taking the sweep over from pid {dead_driver.get('pid')} on host {dead_driver.get('host')}, "
                 "which stopped without releasing it")
            ended = end_dead_drivers_ray(dead_driver)
            if ended:
                echo(f"# ended {ended} process{'es' if ended > 1 else ''} of its Ray instance that outlived it")
        run_and_finish(spec, address, start, verbose=verbose)


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(path: str, as_json: bool) -> None:
    """Show every trial of a sweep: config hash, searched values, state, rounds, density, objective; and the best."""
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
              help="Folder for index.html, its figures and rounds.csv (default PATH/report).")
@click.option("--wandb", "with_wandb", is_flag=True,
              help="Also build a W&B report of the sweep's group (published when W&B credentials exist).")
def report(path: str, out: Path | None, with_wandb: bool) -> None:
    """Write a sweep's report (finished or running): a static index.html with its figures; reads storage only."""
    from lth_sweep import storage
    from lth_sweep.report.local import write_report
    from lth_sweep.sweep.spec import load_spec

    spec = load_spec(path)
    if out is None:
        if storage.is_uri(spec.experiment_dir):
            raise UserError("--out", "give a local folder for the report of a sweep stored at a URI")
        out = Path(spec.experiment_dir) / "report"
    try:
        written = write_report(path, out)
    except OSError as err:  # a read-only or full disk, a file where a folder should be
        name = str(err.filename or out)
        if name.startswith((str(out), str(out.resolve()))):
            raise UserError("--out", f"cannot write the report into {out}: {err.strerror or err}") from None
        raise UserError("PATH", f"cannot read {name}: {err.strerror or err}") from None
    for warning in written.data.warnings:
        echo(f"lth-sweep: warning: {warning}", err=True)
    click.echo(f"report written to {written.index} ({len(written.figures)} figures)")
    if with_wandb:
        from lth_sweep.report.wandb_report import publish

        click.echo(publish(written.data, out))


@cli.group()
def cluster() -> None:
    """Cluster files: Ray cluster-launcher YAMLs and KubeRay manifests."""


@cluster.command("validate")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def cluster_validate(files: tuple[Path, ...]) -> None:
    """Check cluster files offline (default: every YAML under ./cluster/); one line per file."""
    from lth_sweep.sweep.cluster import cluster_files, validate_file

    refused = 0
    for path in cluster_files(files):  # every file gets its line, the refused ones too
        try:
            click.echo(validate_file(path).line())
        except UserError as err:
            click.echo(f"lth-sweep: error: {err}", err=True)
            refused += 1
    if refused:
        sys.exit(2)


@cli.command()
@click.argument("path")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Local folder.")
@click.option("--wandb", "wandb_only", is_flag=True, help="Only the offline W&B runs (by_config/*/wandb).")
def fetch(path: str, out: Path, wandb_only: bool) -> None:
    """Copy a sweep from its storage (s3://, gs://, a folder) to a local folder (to `wandb sync` it, say)."""
    import shlex

    from lth_sweep.sweep.fetch import WANDB_RUNS_GLOB, fetch_sweep
    from lth_sweep.sweep.spec import load_spec

    spec = load_spec(path)
    runs = fetch_sweep(spec.experiment_dir, out, wandb_only)
    if wandb_only and not runs:
        click.echo(f"{spec.name} has no offline W&B runs (its trials logged online, or with W&B disabled): "
                   f"nothing copied to {out}")
        return
    click.echo(f"copied {'the W&B runs' if wandb_only else 'the sweep'} of {spec.name} to {out} "
               f"({len(runs)} offline W&B runs)")
    if runs:
        click.echo(f"upload them with: wandb sync {shlex.quote(str(out))}/{WANDB_RUNS_GLOB}")


DEBUG_ENV = "LTH_SWEEP_DEBUG"


RAN_RAY: list[bool] = []  # a launch/resume ran in this process (then it may skip the interpreter's teardown)


def main(argv: list[str] | None = None) -> None:
    """The program (`lth-sweep`, `python -m lth_sweep.cli`: argv None) or a call from Python code (argv given).
    As the program, a launch or resume ends with `exit_now`: after Ray's shutdown everything is on disk, and
    the interpreter's teardown of torch, Ray and Tune would add about a second."""
    if argv is not None:
        run_command(argv)
        return
    try:
        run_command(None)
        code: int | str | None = 0
    except SystemExit as exit_:
        code = exit_.code
    if not RAN_RAY:
        sys.exit(code)
    exit_now(code)


def exit_now(code: int | str | None) -> None:
    """What sys.exit(code) does, less the interpreter's teardown: flushes stdout and stderr, runs the atexit
    handlers (Ray's, logging's), then os._exit."""
    if isinstance(code, str):
        echo(code, err=True)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def run_command(argv: list[str] | None) -> None:
    """Runs one command; SIGTERM stops it as Ctrl+C does, with exit 143 (130 for Ctrl+C)."""
    try:
        with sigterm_as_ctrl_c():
            cli.main(args=argv, prog_name="lth-sweep", standalone_mode=False)
    except UserError as err:
        click.echo(f"lth-sweep: error: {err}", err=True)
        sys.exit(2)
    except RunFailure as err:
        if os.environ.get(DEBUG_ENV):
            err.__suppress_context__ = False  # the traceback shows the world's own error that the line sums up
            raise
        click.echo(f"lth-sweep: error: {err}", err=True)
        sys.exit(1)
    except click.UsageError as err:
        click.echo(f"lth-sweep: error: {err.format_message()}", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        command = shlex.join(["lth-sweep", *(sys.argv[1:] if argv is None else argv)])
        click.echo(f"lth-sweep: interrupted; resume with the same command: {command}", err=True)
        sys.exit(stopped_exit_code())
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except OSError as err:  # what the world did (storage unreachable, a disk gone): one line, naming what failed
        if os.environ.get(DEBUG_ENV):
            raise
        what = f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err).splitlines()[0]
        click.echo(f"lth-sweep: error: {what} (set {DEBUG_ENV}=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

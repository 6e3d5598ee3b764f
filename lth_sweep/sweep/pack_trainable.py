"""The Tune trainable's side of a pack (`search.pack` > 1): K configs, one stacked population, one trial.

Each member is a `ConfigRun` exactly as a config alone is (its by-config engine folder, W&B run, ledger lines),
so a config that comes back alone after a kill finds its rounds, and the other way round. The members are
trained by the engine's `Pack`, split first into packs that can train together (`split_packs`: suggestions that
differ in the model, batch size, iterations... train in separate packs, one after another). The trial reports to
Tune after every phase in which a member finished a round (a stacked group's phase, or one member's when they
train one after another), and, for rounds the members found already, after each round index: every member's
latest metrics under `members`, and a checkpoint holding each member's engine folder under its config hash.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.engine.lottery import Trial
from lth_sweep.engine.pack import Pack, split_packs
from lth_sweep.sweep.entry import reporting
from lth_sweep.sweep.packing import ACTOR_NAMESPACE, MEMBERS_KEY, asha_actor_name, member_id, pack_checkpoint_dir
from lth_sweep.sweep.spec import LaunchSpec
from lth_sweep.sweep.trainable import ConfigRun, inject_failure


def pack_checkpoint(runs: list[ConfigRun], trial_id: str) -> Path:
    """A folder of hard links to every member's engine files (a snapshot: the engine replaces its files by
    rename, never in place), `<config hash>/<file>`, in the first member's config folder (`pack_checkpoint_dir`).
    Call holding every member's lock."""
    folder = pack_checkpoint_dir(runs[0].root, trial_id)
    shutil.rmtree(folder, ignore_errors=True)
    for run in runs:
        target = folder / run.config_hash
        target.mkdir(parents=True)
        if not run.engine_dir.is_dir():
            continue
        for path in run.engine_dir.iterdir():
            if path.is_file() and not path.name.startswith("."):
                try:
                    os.link(path, target / path.name)
                except OSError:
                    shutil.copy2(path, target / path.name)
    return folder


def member_asha(spec: LaunchSpec):
    """The driver's MemberRungs actor when the sweep runs ASHA, else None."""
    if spec.sweep.scheduler.name != "asha":
        return None
    import ray

    return ray.get_actor(asha_actor_name(spec.name), namespace=ACTOR_NAMESPACE)


def run_pack(members: list[dict[str, Any]], spec: LaunchSpec) -> None:
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    node_id = ray.get_runtime_context().get_node_id()
    by_hash: dict[str, ConfigRun] = {}  # Optuna may suggest one config twice: it is trained once, for both
    member_runs = []
    for j, params in enumerate(members):
        run = ConfigRun(spec, params, member_id(trial_id, j))
        member_runs.append(by_hash.setdefault(run.config_hash, run))
    runs = list(by_hash.values())
    asha = member_asha(spec)
    stopped: set[int] = set()
    fresh = False  # a member finished a round since the last report

    def report() -> None:
        nonlocal fresh
        if not fresh:
            return
        fresh = False
        notices = [f"{run.label} ({run.config_hash}): {text}" for run in runs for text in run.take_notices()]
        for run in runs:
            run.sync()
        results = [{**run.latest, "training_iteration": len(run.records), "stopped": runs.index(run) in stopped}
                   if run.records else {} for run in member_runs]
        checkpoint = pack_checkpoint(runs, trial_id)
        try:
            with reporting():
                tune.report({MEMBERS_KEY: results, "rounds_done": sum(len(run.records) for run in member_runs),
                             "pack_size": len(member_runs), **({"notice": "; ".join(notices)} if notices else {})},
                            checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))
        finally:
            shutil.rmtree(checkpoint, ignore_errors=True)

    def on_round(j: int, record: dict[str, Any], trained_now: bool = True) -> None:
        nonlocal fresh
        run = runs[j]
        metrics = run.add(record, trained_now, run.label, node_id)  # the ledger names the member
        fresh = fresh or len(run.records) > run.reported  # else Tune has it already (restored from its checkpoint)
        if asha is not None and j not in stopped and len(run.records) < run.config.prune.rounds:
            value = metrics.get("objective")
            if ray.get(asha.on_result.remote(run.label, len(run.records), value)):
                stopped.add(j)
        if trained_now:
            inject_failure(run, record["round"])

    with ExitStack() as stack:
        for run in sorted(runs, key=lambda r: r.config_hash):  # one order for every pack: no deadlock
            stack.enter_context(storage.exclusive(run.root))
        checkpoint = tune.get_checkpoint()
        ended = False  # with every member's files in the store: all done (or stopped by ASHA), or stopped by Tune
        try:
            for run in runs:
                run.open(checkpoint, subdir=run.config_hash)
            trials = [Trial(run.config, run.engine_dir, on_round=lambda r, j=j: on_round(j, r), on_eval=run.curve)
                      for j, run in enumerate(runs)]
            replay(trials, on_round, report)
            for indices in split_packs([run.config for run in runs], size=len(runs)):
                pack = Pack([trials[j] for j in indices], after_group=report)
                pack.stopped = StoppedView(stopped, indices)
                pack.run()
            report()
            ended = True
        except SystemExit:  # how Tune stops a function trainable: in a report, once every member's state was sent
            ended = True
            raise
        finally:
            for run in runs:
                run.finish_wandb()
            for run in runs:  # after the last run's end stopped W&B's service: every offline file is whole
                run.mirror_wandb()
            if ended:
                for run in runs:
                    run.release_local_copy()


def replay(trials: list[Trial], on_round: Callable[..., None], report: Callable[[], None]) -> None:
    """The rounds the members have already, round index by round index, a report after each: Optuna gets each
    round's value as it would from the members alone."""
    found = [trial.records() for trial in trials]
    for round_index in range(max(map(len, found), default=0)):
        for j, records in enumerate(found):
            if round_index < len(records):
                on_round(j, records[round_index], trained_now=False)
        report()


class StoppedView:
    """The members of one engine pack that ASHA stopped, seen through the trial's member numbering."""

    def __init__(self, stopped: set[int], indices: list[int]) -> None:
        self.stopped = stopped
        self.indices = indices

    def __contains__(self, index: int) -> bool:
        return self.indices[index] in self.stopped

"""The Ray Tune trainable: each trial runs the engine's whole IMP schedule for one config that Optuna chose.

A trial reports once per round (`tune.report` with the round's metrics, the running objective and a
checkpoint of the engine state). Its engine state lives under `<sweep>/by_config/<config hash>/`, so a
trial restarted by Tune, resumed by `lth-sweep resume`, or re-suggested under a new id after the
driver was killed continues from its finished rounds instead of recomputing them. With URI storage
(s3://, gs://) the engine and W&B run in a local mirror on the trial's node, sent to that folder after
every round, so a trial that lands on another node (or a fresh disk) finds them there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.checkpoint import write_text
from lth_sweep.engine.lottery import STATE_FILE, Trial
from lth_sweep.engine.recovery import Candidate, adopt, describe, newest_intact, set_aside
from lth_sweep.engine.train import Evaluation
from lth_sweep.sweep.entry import reporting
from lth_sweep.sweep.objectives import best_by_validation, dense_did_not_learn, objective_value
from lth_sweep.sweep.packing import PACK_KEY, is_pack, remove_pack_checkpoints
from lth_sweep.sweep.schema import objective_metrics
from lth_sweep.sweep.spec import LaunchSpec
from lth_sweep.sweep.tracking import LOGGED_ROUNDS_FILE, Tracker, scalar_metrics

LEDGER_FILE = "rounds_trained.jsonl"  # local storage: one line per round trained
LEDGER_DIR = "ledger"  # URI storage: one small object per round trained (object stores cannot append)
FAIL_ONCE_ENV = "LTH_SWEEP_FAIL_ONCE_AFTER_ROUND"  # fault injection for tests: raise once after round k
NODE_CHECK_DIR = "node_checks"  # URI storage: one small object per node, written as each trial starts there

log = logging.getLogger(__name__)


def work_dir(spec: LaunchSpec, config_hash: str) -> Path:
    """Where the engine runs: the shared by-config folder itself, or a local mirror of a remote one."""
    experiment_dir = spec.experiment_dir
    if not storage.is_uri(experiment_dir):
        return Path(experiment_dir) / "by_config" / config_hash
    return Path(tempfile.gettempdir()) / "lth_sweep" / spec.name / config_hash


def by_config(spec: LaunchSpec, config_hash: str, *parts: str) -> str:
    """A path in the config's shared folder `<sweep>/by_config/<hash>/` (a folder or a URI)."""
    return storage.join(spec.experiment_dir, "by_config", config_hash, *parts)


def count_rounds(engine_dir: Path) -> int:
    path = engine_dir / "rounds.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def tune_checkpoints(checkpoint, stack: ExitStack, subdir: str = "") -> Iterator[Candidate]:
    """The trial's Tune checkpoints, newest first: the one Tune restored and its siblings in the trial folder
    (Tune keeps the last few). Each is opened (downloaded, for a URI) only when asked for. A pack's checkpoints
    hold one folder per member config: `subdir`."""
    import pyarrow.fs as pafs
    from ray import tune

    parent = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    try:
        infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
        paths = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                        and i.base_name.startswith("checkpoint_")), reverse=True)
    except OSError:
        paths = []
    if checkpoint.path.rstrip("/") not in paths:
        paths.insert(0, checkpoint.path)
    for path in paths:
        saved = tune.Checkpoint(path, filesystem=checkpoint.filesystem)
        yield Candidate(f"Tune checkpoint {path}", Path(stack.enter_context(saved.as_directory())) / subdir)


def restore_engine_dir(spec: LaunchSpec, config_hash: str, engine_dir: Path, checkpoint,
                       subdir: str = "") -> tuple[int, str | None]:
    """Brings the most advanced intact saved state into `engine_dir` (the engine's own, else a remote copy, else
    Tune's newest intact checkpoint, else none: the config starts over), says which in one log line when it is
    not simply the engine's own; returns the rounds Tune already has, and that line."""
    engine = Candidate(f"the engine state in {engine_dir}", engine_dir)
    with ExitStack() as stack:
        groups: list[Iterable[Candidate]] = [[engine]]
        remote = by_config(spec, config_hash, "engine")
        if storage.is_uri(remote) and storage.exists(storage.join(remote, STATE_FILE)):
            mirror = stack.enter_context(tempfile.TemporaryDirectory(prefix="lth_sweep_remote_"))
            storage.copy_dir(remote, mirror)
            groups.append([Candidate(f"the copy at {remote}", Path(mirror))])
        reported = 0
        if checkpoint is not None:
            reported = count_rounds(Path(stack.enter_context(checkpoint.as_directory())) / subdir)
            groups.append(tune_checkpoints(checkpoint, stack, subdir))
        choice = newest_intact(groups)
        if choice.chosen is None:
            set_aside(choice, engine_dir)
        elif choice.chosen is not engine:
            engine_dir.mkdir(parents=True, exist_ok=True)
            adopt(choice.chosen.directory, engine_dir)
    line = describe(choice, engine.label)
    if line is not None:
        print(f"lth-sweep: config {config_hash}: {line}", file=sys.stderr, flush=True)
    return reported, line


def restore_logged_rounds(spec: LaunchSpec, config_hash: str, root: Path) -> None:
    """For URI storage, on a node that has not run this config: which rounds already reached W&B."""
    if not storage.is_uri(spec.experiment_dir):
        return
    logged_remote = by_config(spec, config_hash, "wandb", LOGGED_ROUNDS_FILE)
    logged_local = root / "wandb" / LOGGED_ROUNDS_FILE
    if not logged_local.exists() and storage.exists(logged_remote):
        write_text(logged_local, storage.read_text(logged_remote))


def run_started(source: Path, name: str) -> bool:
    """A file of an offline W&B run folder goes to the bucket once the folder holds the run's `.wandb` file (W&B
    writes it shortly after the folder, off the trial's path): a folder without it would only make `wandb sync`
    of the bucket's copy fail."""
    parts = Path(name).parts
    for i, part in enumerate(parts[:-1]):
        if part.startswith("offline-run-"):
            return any(source.joinpath(*parts[:i + 1]).glob("*.wandb"))
    return True


def wandb_uploader(source: Path, destination: str) -> storage.Uploader:
    """The offline W&B runs' mirror: a run folder waits for its `.wandb` file (run_started), which then goes
    first, so that a copy cut short by a kill never holds a run's logs without it."""
    return storage.Uploader(source, destination, ready=run_started, first=(".wandb",))


class RemoteMirror:
    """For URI storage: sends a trial's engine state (after every round) and its offline W&B runs (after
    every round and at the end) from the node's local work folder to `<sweep>/by_config/<hash>/`, so a
    lost node loses nothing and `wandb sync` works from anywhere. Does nothing for local storage."""

    def __init__(self, spec: LaunchSpec, config_hash: str, root: Path) -> None:
        self.enabled = storage.is_uri(spec.experiment_dir)
        self.engine = storage.Uploader(root / "engine", by_config(spec, config_hash, "engine"),
                                       last=("rounds.jsonl",))
        self.wandb = wandb_uploader(root / "wandb", by_config(spec, config_hash, "wandb"))

    def engine_state(self) -> None:
        if self.enabled:
            self.engine.upload()

    def wandb_runs(self, offline: bool) -> bool:
        """Copies the offline runs (`offline`: the sweep's mode, or this trial's after W&B could not start
        online); returns whether the store has them (or there was nothing to copy). Best effort, like all W&B
        tracking: a failed copy is logged and never fails the trial."""
        if not (self.enabled and offline):
            return True
        try:
            self.wandb.upload()
        except Exception as err:  # noqa: BLE001
            log.warning("could not copy the W&B runs to %s: %s", self.wandb.destination, err)
            return False
        return True

    def release(self, root: Path) -> None:
        """Deletes the node's copy of a config whose files the store has (call under the config's lock): the
        engine folder and W&B's files, all but W&B's logged-rounds mark (an online run's only record of the rounds
        W&B has) and the lock file itself (a trial waiting on it holds it open). A node that runs hundreds of
        configs would keep every one's state otherwise (VGG-16: ~180 MB of weights, momentum and rewind point).
        A trial of the config that runs here again restores it from the store, as on a fresh node."""
        if not self.enabled:
            return  # local storage: the folder *is* the store
        try:
            self.engine.upload()  # whatever the engine wrote after the last round's upload (nothing, today)
        except OSError as err:
            log.warning("kept the local copy in %s: could not copy it to %s: %s", root, self.engine.destination, err)
            return
        shutil.rmtree(root / "engine", ignore_errors=True)
        wandb_dir = root / "wandb"
        for path in wandb_dir.iterdir() if wandb_dir.is_dir() else []:
            if path.name == LOGGED_ROUNDS_FILE:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


class ConfigRun:
    """One config's side of a trial (a trial's only config, or one member of a pack): its engine folder,
    restored first, its W&B run, its remote mirror, and its records so far."""

    def __init__(self, spec: LaunchSpec, params: dict[str, Any], label: str) -> None:
        self.spec = spec
        self.params = params
        self.label = label  # what the W&B run's name starts with: the trial's name, or a pack member's id
        self.config = spec.trial_config(params)
        self.config_hash = self.config.config_hash()
        self.root = work_dir(spec, self.config_hash)
        self.engine_dir = self.root / "engine"
        self.mirror = RemoteMirror(spec, self.config_hash, self.root)
        self.iterations_per_round = self.config.iterations_per_round(self.config.steps_per_epoch())
        self.records: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}  # the metrics of the last round, as reported
        self.reported = 0
        self.tracker: Tracker | None = None
        self.wandb_in_store = False  # the W&B runs reached the store (or needed no copy), at the end

    def open(self, checkpoint, subdir: str = "") -> None:
        """Restores the engine folder (see restore_engine_dir) and starts the W&B run; call under the lock."""
        spec, sweep = self.spec, self.spec.sweep
        remove_pack_checkpoints(self.root)  # a killed pack trial's, if any: no live trial has one here
        self.reported, restored_from = restore_engine_dir(spec, self.config_hash, self.engine_dir, checkpoint,
                                                          subdir)
        restore_logged_rounds(spec, self.config_hash, self.root)
        _, modes = objective_metrics(sweep.objective)
        self.tracker = Tracker(
            sweep.wandb.model_copy(update={"mode": spec.wandb_mode}),
            group=sweep.wandb.group or sweep.name, run_id=wandb_id(f"{sweep.name}-{self.config_hash}"),
            run_name=f"{self.label}-{self.config_hash}",
            config={**self.config.model_dump(mode="json"), "searched": self.params, "config_hash": self.config_hash,
                    "sweep": sweep.name},
            directory=self.root / "wandb", objective_mode=None if len(modes) > 1 else modes[0],
            iterations_per_round=self.iterations_per_round)
        if restored_from:
            self.tracker.notices.append(restored_from)

    def add(self, record: dict[str, Any], trained_now: bool, trial_id: str, node_id: str) -> dict[str, Any]:
        """A finished round: logged to W&B, and when it was trained now (not replayed) mirrored and put in the
        ledger; returns the metrics Tune gets for it."""
        sweep = self.spec.sweep
        self.records.append(record)
        final = len(self.records) == self.config.prune.rounds
        extra = {"objective": objective_value(self.records, sweep.objective, final), "rounds_done": len(self.records),
                 "config_hash": self.config_hash, "node_id": node_id, **best_by_validation(self.records)}
        self.tracker.log_round(record, extra)
        objective = sweep.objective
        if (len(self.records) == 1 and objective.name in ("matching_density", "stable_matching_density")
                and dense_did_not_learn(self.records, objective.min_dense_val_acc)):
            self.tracker.notices.append(
                f"the dense network reached val_acc {record['val_acc']:.3g}, below objective.min_dense_val_acc "
                f"{objective.min_dense_val_acc:g}: it did not learn, so every round would match it; the trial "
                f"scores {extra['objective']:g}")
        if trained_now:  # after the round is safe in the shared store
            self.mirror.engine_state()
            append_ledger(self.spec.experiment_dir, self.config_hash, record["round"], trial_id, node_id)
        self.latest = {**scalar_metrics(record), **extra}
        return self.latest

    def sync(self) -> None:
        """Sends what changed to the remote store (URI storage only)."""
        self.mirror.engine_state()
        self.mirror_wandb()

    def mirror_wandb(self) -> None:
        """Sends the offline W&B runs to the remote store (URI storage only)."""
        self.wandb_in_store = self.mirror.wandb_runs(self.tracker is not None and self.tracker.mode == "offline")

    def release_local_copy(self) -> None:
        """After the trainable ended with the config's files in the store (its rounds done, or Tune stopped it at
        a report, where the round had just been sent), under the config's lock: URI storage keeps nothing of the
        config on this node but its lock and W&B's logged-rounds mark (RemoteMirror.release)."""
        if self.wandb_in_store:
            self.mirror.release(self.root)

    def take_notices(self) -> list[str]:
        notices = list(self.tracker.notices) if self.tracker is not None else []
        if self.tracker is not None:
            self.tracker.notices.clear()
        return notices

    def curve(self, round_index: int, phase: str, evaluation: Evaluation) -> None:
        if phase != "ticket":  # a control's curve would run back over the round's steps
            return
        step = round_index * self.iterations_per_round + evaluation.iteration
        self.tracker.log_curve({"iteration": step, "round_index": round_index,
                                "val_loss": statistics.fmean(evaluation.val_loss),
                                "val_acc": statistics.fmean(evaluation.val_acc),
                                "train_loss": statistics.fmean(evaluation.extras["train_loss"])}, step)

    def close(self) -> None:
        self.finish_wandb()
        self.mirror_wandb()

    def finish_wandb(self) -> None:
        """Ends the W&B run. Its offline file is whole only once W&B's service stopped, which the last run of the
        process does: mirror the runs after that (a pack finishes every member's run first)."""
        if self.tracker is not None:
            self.tracker.finish()


def inject_failure(run: ConfigRun, round_index: int) -> None:
    """Fault injection for tests (LTH_SWEEP_FAIL_ONCE_AFTER_ROUND=k): raises once, after round k is reported."""
    fail_after = os.environ.get(FAIL_ONCE_ENV)
    marker = run.root / ".failure_injected"
    if fail_after is not None and round_index == int(fail_after) and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure after round {round_index} ({FAIL_ONCE_ENV})")


def check_node_writes_storage(spec: LaunchSpec) -> None:
    """With URI storage: this node can write the sweep's storage, else the trial fails at once with one line that
    names the node and what it lacks (Tune's own first write, at the first round's report, would fail with the
    SDK's message alone, after a round of training)."""
    if not storage.is_uri(spec.experiment_dir):
        return
    import socket

    import ray

    host, ip = socket.gethostname(), ray.util.get_node_ip_address()
    folder = storage.join(spec.experiment_dir, NODE_CHECK_DIR)
    try:  # what Tune does first when it saves a checkpoint (the folder), then a write of ours
        fs, path = storage.filesystem(folder)
        fs.create_dir(path, recursive=True)
        storage.write_text(storage.join(folder, f"{ray.get_runtime_context().get_node_id()}.json"),
                           json.dumps({"host": host, "ip": ip, "time": time.time()}))
    except OSError as err:  # the line the driver prints is the first 300 characters: what to do comes first
        reason = (str(err).splitlines() or ["-"])[0]
        raise RuntimeError(f"node {host} ({ip}) cannot write the sweep's storage: give "
                           "every node its credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                           f"GOOGLE_APPLICATION_CREDENTIALS in its environment, or a role) [{reason}]") from None


def imp_trainable(params: dict[str, Any], spec: LaunchSpec) -> None:
    """A Ray Tune function trainable: one full IMP schedule (or a pack's, see sweep/packing.py)."""
    check_node_writes_storage(spec)
    if is_pack(params):
        from lth_sweep.sweep.pack_trainable import run_pack

        run_pack(params[PACK_KEY], spec)
        return
    import ray
    from ray import tune

    run = ConfigRun(spec, params, tune.get_context().get_trial_name())
    with storage.exclusive(run.root):
        run.open(tune.get_checkpoint())
        trial_id = tune.get_context().get_trial_id()
        node_id = ray.get_runtime_context().get_node_id()

        def report(record: dict[str, Any], trained_now: bool) -> None:
            metrics = run.add(record, trained_now, trial_id, node_id)
            if len(run.records) <= run.reported:
                return  # Tune has this round already (restored from its checkpoint)
            if len(run.records) == run.config.prune.rounds:
                # the W&B run ends before the last report: at ASHA's last rung Tune stops the trial in that report
                # and, with no trial left to reuse its actor, ends the actor at once (W&B's finish was cut there)
                run.close()
            run.sync()  # sends only what changed
            notices = run.take_notices()  # for the driver's terminal (a worker's own output goes to the driver's log)
            with reporting():
                tune.report({**metrics, **({"notice": "; ".join(notices)} if notices else {})},
                            checkpoint=tune.Checkpoint.from_directory(str(run.engine_dir)))
            inject_failure(run, record["round"])

        ended = False  # with the config's files in the store: its rounds done, or stopped by Tune
        try:
            trial = Trial(run.config, run.engine_dir, on_round=lambda r: report(r, True), on_eval=run.curve)
            for record in trial.records():
                report(record, False)
            trial.run()
            ended = True
        except SystemExit:  # how Tune stops a function trainable (ASHA, the sweep stopped): in a report, once sent
            ended = True
            raise
        finally:
            run.close()
            if ended:
                run.release_local_copy()


def wandb_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:128]


def append_ledger(experiment_dir: str, config_hash: str, round_index: int, trial_id: str, node_id: str) -> None:
    """Records a round trained (not replayed) and saved: how the tests count recomputation and find the
    node a trial runs on. A line of `<sweep>/rounds_trained.jsonl`, or for URI storage one object
    `<sweep>/ledger/<time>-<hash>-r<round>-<trial>.json`."""
    entry = {"config_hash": config_hash, "round": round_index, "trial_id": trial_id, "node_id": node_id,
             "time": time.time()}
    if storage.is_uri(experiment_dir):
        name = f"{time.time_ns():020d}-{config_hash}-r{round_index}-{trial_id}.json"
        storage.write_text(storage.join(experiment_dir, LEDGER_DIR, name), json.dumps(entry))
        return
    fd = os.open(Path(experiment_dir) / LEDGER_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # less the umask
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def read_ledger(experiment_dir: str) -> list[dict[str, Any]]:
    """Every round trained so far, oldest first, from either form of the ledger."""
    if not storage.is_uri(experiment_dir):
        path = Path(experiment_dir) / LEDGER_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.strip()]
    folder = storage.join(experiment_dir, LEDGER_DIR)
    return [json.loads(storage.read_text(storage.join(folder, name))) for name in storage.list_files(folder)]

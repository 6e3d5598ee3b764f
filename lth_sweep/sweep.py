"""Sweeps on Ray Tune: each trial runs the engine's whole IMP schedule for one config that Optuna chose.

A trial reports once per round (`tune.report` with the round's metrics, the running objective and a
checkpoint of the engine state). Its engine state lives under `<sweep>/by_config/<config hash>/`, so a
trial restarted by Tune, resumed by `lth-sweep resume`, or re-suggested under a new id after the
driver was killed continues from its finished rounds instead of recomputing them.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.config import ExperimentConfig, build_experiment
from lth_sweep.errors import UserError
from lth_sweep.lottery import Trial
from lth_sweep.objectives import objective_value
from lth_sweep.sweep_config import SweepConfig, objective_metrics
from lth_sweep.tracking import Tracker, resolve_mode, scalar_metrics
from lth_sweep.train import Evaluation

SPEC_FILE = "sweep.json"
LEDGER_FILE = "rounds_trained.jsonl"
FAIL_ONCE_ENV = "LTH_SWEEP_FAIL_ONCE_AFTER_ROUND"  # fault injection for tests: raise once after round k


# ------------------------------------------------------------------------------------ the trial


def trial_config(spec: dict[str, Any], params: dict[str, Any]) -> ExperimentConfig:
    sweep = SweepConfig.model_validate(spec["sweep"])
    threads = max(1, int(sweep.resources.cpu))
    return build_experiment(spec["experiment"], {**params, "runtime.threads": threads})


def work_dir(spec: dict[str, Any], config_hash: str) -> Path:
    """Where the engine runs: the shared by-config folder itself, or a local mirror of a remote one."""
    experiment_dir = spec["experiment_dir"]
    if not storage.is_uri(experiment_dir):
        return Path(experiment_dir) / "by_config" / config_hash
    return Path(tempfile.gettempdir()) / "lth_sweep" / spec["sweep"]["name"] / config_hash


def count_rounds(engine_dir: Path) -> int:
    path = engine_dir / "rounds.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def restore_engine_dir(spec: dict[str, Any], config_hash: str, engine_dir: Path, checkpoint) -> int:
    """Brings the most advanced saved state into `engine_dir`; returns the rounds Tune already has."""
    reported = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            reported = count_rounds(Path(saved))
            if count_rounds(engine_dir) < reported:
                storage.copy_dir(saved, str(engine_dir))
    remote = storage.join(spec["experiment_dir"], "by_config", config_hash, "engine")
    if storage.is_uri(remote) and storage.exists(storage.join(remote, "rounds.jsonl")):
        remote_rounds = len(storage.read_text(storage.join(remote, "rounds.jsonl")).splitlines())
        if count_rounds(engine_dir) < remote_rounds:
            storage.copy_dir(remote, str(engine_dir))
    return reported


def imp_trainable(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """A Ray Tune function trainable: one full IMP schedule."""
    import ray
    from ray import tune

    sweep = SweepConfig.model_validate(spec["sweep"])
    config = trial_config(spec, params)
    config_hash = config.config_hash()
    root = work_dir(spec, config_hash)
    engine_dir = root / "engine"
    _, modes = objective_metrics(sweep.objective)
    iterations_per_round = config.iterations_per_round(config.steps_per_epoch())
    with storage.exclusive(root):
        reported = restore_engine_dir(spec, config_hash, engine_dir, tune.get_checkpoint())
        context = tune.get_context()
        tracker = Tracker(
            sweep.wandb.model_copy(update={"mode": spec["wandb_mode"]}),
            group=sweep.wandb.group or sweep.name, run_id=wandb_id(f"{sweep.name}-{config_hash}"),
            run_name=f"{context.get_trial_name()}-{config_hash}",
            config={**config.model_dump(mode="json"), "searched": params, "config_hash": config_hash,
                    "sweep": sweep.name},
            directory=root / "wandb", objective_mode=None if len(modes) > 1 else modes[0],
            iterations_per_round=iterations_per_round)
        records: list[dict[str, Any]] = []
        node_id = ray.get_runtime_context().get_node_id()
        fail_after = os.environ.get(FAIL_ONCE_ENV)

        def report(record: dict[str, Any], trained_now: bool) -> None:
            records.append(record)
            final = len(records) == config.prune.rounds
            extra = {"objective": objective_value(records, sweep.objective, final), "rounds_done": len(records),
                     "config_hash": config_hash, "node_id": node_id}
            tracker.log_round(record, extra)
            if trained_now:
                append_ledger(spec["experiment_dir"], config_hash, record["round"], context.get_trial_id())
            if len(records) <= reported:
                return  # Tune has this round already (restored from its checkpoint)
            remote = storage.join(spec["experiment_dir"], "by_config", config_hash, "engine")
            if storage.is_uri(remote):
                storage.copy_dir(str(engine_dir), remote)
            tune.report({**scalar_metrics(record), **extra},
                        checkpoint=tune.Checkpoint.from_directory(str(engine_dir)))
            marker = root / ".failure_injected"
            if fail_after is not None and record["round"] == int(fail_after) and not marker.exists():
                marker.touch()
                raise RuntimeError(f"injected failure after round {record['round']} ({FAIL_ONCE_ENV})")

        def curve(round_index: int, phase: str, evaluation: Evaluation) -> None:
            if phase != "ticket":  # a control's curve would run back over the round's steps
                return
            step = round_index * iterations_per_round + evaluation.iteration
            tracker.log_curve({"iteration": step, "round_index": round_index,
                               "val_loss": statistics.fmean(evaluation.val_loss),
                               "val_acc": statistics.fmean(evaluation.val_acc),
                               "train_loss": statistics.fmean(evaluation.extras["train_loss"])}, step)

        try:
            trial = Trial(config, engine_dir, on_round=lambda r: report(r, True), on_eval=curve)
            for record in trial.records():
                report(record, False)
            trial.run()
        finally:
            tracker.finish()


def wandb_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:128]


def append_ledger(experiment_dir: str, config_hash: str, round_index: int, trial_id: str) -> None:
    """One line per round trained (not replayed): how the tests count recomputation. Local storage only."""
    if storage.is_uri(experiment_dir):
        return
    line = json.dumps({"config_hash": config_hash, "round": round_index, "trial_id": trial_id}) + "\n"
    fd = os.open(Path(experiment_dir) / LEDGER_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ Tune set-up


def make_sampler(sweep: SweepConfig):
    import optuna

    seed = sweep.search.seed
    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }[sweep.search.sampler]()


def make_trainable(spec: dict[str, Any]):
    from ray import tune

    sweep = SweepConfig.model_validate(spec["sweep"])
    trainable = tune.with_parameters(imp_trainable, spec=spec)
    return tune.with_resources(trainable, {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})


def concurrent_trials(sweep: SweepConfig, on_cluster: bool) -> int:
    """How many trials run at once when the sweep file does not say. Tune lets an Optuna searcher keep
    only one trial pending unless a ConcurrencyLimiter says otherwise, which would run trials one by
    one. Here: as many as fit this machine's CPUs and GPUs; on a cluster, every sample (pending trials
    are what make the autoscaler add nodes)."""
    if sweep.search.max_concurrent:
        return sweep.search.max_concurrent
    if on_cluster:
        return sweep.search.num_samples
    import ray

    available = ray.cluster_resources()
    fits = [available.get("CPU", 1) / sweep.resources.cpu]
    if sweep.resources.gpu:
        fits.append(available.get("GPU", 0) / sweep.resources.gpu)
    return max(1, min(sweep.search.num_samples, int(min(fits))))


def build_tuner(spec: dict[str, Any], on_cluster: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sweep = SweepConfig.model_validate(spec["sweep"])
    metrics, modes = objective_metrics(sweep.objective)
    single = len(metrics) == 1
    searcher = OptunaSearch(sampler=make_sampler(sweep), **({} if single else {"metric": metrics, "mode": modes}))
    searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrent_trials(sweep, on_cluster))
    max_rounds = rounds(spec)
    scheduler = FIFOScheduler()
    if sweep.scheduler.name == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_rounds,
                                  grace_period=min(sweep.scheduler.grace_rounds, max_rounds),
                                  reduction_factor=sweep.scheduler.reduction_factor)
    base, sep, query = spec["experiment_dir"].partition("?")
    parent, name = base.rsplit("/", 1)
    parent += sep + query
    return tune.Tuner(
        make_trainable(spec),
        param_space={key: dist.to_tune() for key, dist in sweep.search.space.items()},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=sweep.search.num_samples,
            reuse_actors=True, **({"metric": metrics[0], "mode": modes[0]} if single else {}),
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=parent,
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )


def init_ray(address: str | None, spec: dict[str, Any]) -> None:
    import ray

    env_vars = {"WANDB_MODE": spec["wandb_mode"], "WANDB_SILENT": "true"}
    if spec["wandb_mode"] == "online" and os.environ.get("WANDB_API_KEY"):
        env_vars["WANDB_API_KEY"] = os.environ["WANDB_API_KEY"]
    if os.environ.get(FAIL_ONCE_ENV):
        env_vars[FAIL_ONCE_ENV] = os.environ[FAIL_ONCE_ENV]
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": True}
    if address is None:
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)


# ------------------------------------------------------------------------------------ commands


def prepare_launch(sweep: SweepConfig, experiment: dict[str, Any], storage_location: str | None,
                   name: str | None) -> dict[str, Any]:
    """The launch spec, checked; raises UserError if the sweep already exists."""
    if name is not None:
        sweep.name = name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", sweep.name or ""):
        raise UserError("name", f"'{sweep.name}' may only use letters, digits, '.', '_' and '-'")
    root = storage.normalize(storage_location or sweep.storage)
    experiment_dir = storage.join(root, sweep.name)
    if storage.exists(storage.join(experiment_dir, SPEC_FILE)):
        raise UserError("--name", f"a sweep named '{sweep.name}' already exists at {experiment_dir}; "
                                  f"continue it with: lth-sweep resume {experiment_dir} (or pick another --name)")
    return {"sweep": sweep.model_dump(mode="json", by_alias=True), "experiment": experiment,
            "experiment_dir": experiment_dir, "wandb_mode": resolve_mode(sweep.wandb.mode)}


def load_spec(path: str) -> dict[str, Any]:
    experiment_dir = storage.normalize(path)
    spec_path = storage.join(experiment_dir, SPEC_FILE)
    if not storage.exists(spec_path):
        raise UserError("PATH", f"no sweep at {experiment_dir} ({SPEC_FILE} is missing); "
                                "give the folder that `lth-sweep launch` printed")
    spec = json.loads(storage.read_text(spec_path))
    spec["experiment_dir"] = experiment_dir  # the folder may have moved
    return spec


def run_sweep(spec: dict[str, Any], address: str | None, resume: bool) -> tuple[Any, bool]:
    """Launches (or resumes) the sweep; returns (ResultGrid or None, interrupted)."""
    from ray import tune

    if not resume:
        if not storage.is_uri(spec["experiment_dir"]):
            Path(spec["experiment_dir"]).mkdir(parents=True, exist_ok=True)
        storage.write_text(storage.join(spec["experiment_dir"], SPEC_FILE), json.dumps(spec, indent=1))
    init_ray(address, spec)
    if resume:
        tuner = tune.Tuner.restore(spec["experiment_dir"], make_trainable(spec),
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = build_tuner(spec, on_cluster=address is not None)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        return None, True
    return results, False


def rounds(spec: dict[str, Any]) -> int:
    return build_experiment(spec["experiment"]).prune.rounds

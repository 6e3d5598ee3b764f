"""The Ray Tune side of a sweep: Optuna's searcher, the scheduler, the Tuner, Ray's start-up, launch and
resume."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.errors import UserError
from lth_sweep.sweep.schema import SweepConfig, objective_metrics
from lth_sweep.sweep.spec import SPEC_FILE, LaunchSpec, save_spec
from lth_sweep.sweep.tracking import resolve_mode
from lth_sweep.sweep.trainable import FAIL_ONCE_ENV, imp_trainable


def make_sampler(sweep: SweepConfig):
    import optuna

    seed = sweep.search.seed
    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }[sweep.search.sampler]()


def make_trainable(spec: LaunchSpec):
    from ray import tune

    sweep = spec.sweep
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


def build_tuner(spec: LaunchSpec, on_cluster: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sweep = spec.sweep
    metrics, modes = objective_metrics(sweep.objective)
    single = len(metrics) == 1
    searcher = OptunaSearch(sampler=make_sampler(sweep), **({} if single else {"metric": metrics, "mode": modes}))
    searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrent_trials(sweep, on_cluster))
    max_rounds = spec.rounds()
    scheduler = FIFOScheduler()
    if sweep.scheduler.name == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_rounds,
                                  grace_period=min(sweep.scheduler.grace_rounds, max_rounds),
                                  reduction_factor=sweep.scheduler.reduction_factor)
    parent, name = storage.split_last(spec.experiment_dir)
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


def init_ray(address: str | None, spec: LaunchSpec) -> None:
    import ray

    env_vars = {"WANDB_MODE": spec.wandb_mode, "WANDB_SILENT": "true"}
    if spec.wandb_mode == "online" and os.environ.get("WANDB_API_KEY"):
        env_vars["WANDB_API_KEY"] = os.environ["WANDB_API_KEY"]
    if os.environ.get(FAIL_ONCE_ENV):
        env_vars[FAIL_ONCE_ENV] = os.environ[FAIL_ONCE_ENV]
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": True}
    if address is None:
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)


def check_storage_reaches_every_node(spec: LaunchSpec, alive_nodes: int) -> None:
    """A sweep on more than one node needs storage that every node reads and writes: its trials run
    anywhere, and a restarted trial must find its rounds on whichever node it lands."""
    if alive_nodes <= 1 or storage.is_uri(spec.experiment_dir) or spec.sweep.storage_shared:
        return
    raise UserError("--storage", f"{spec.experiment_dir} is a folder on this machine, and the Ray cluster has "
                                 f"{alive_nodes} nodes whose trials cannot read or write it; allowed on a cluster: "
                                 "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or a folder mounted at the same path on "
                                 "every node (NFS) declared with --shared-storage (sweep key storage_shared: true)")


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


# ------------------------------------------------------------------------------------ commands


def prepare_launch(sweep: SweepConfig, experiment: dict[str, Any], storage_location: str | None,
                   name: str | None) -> LaunchSpec:
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
    return LaunchSpec(sweep=sweep, experiment=experiment, experiment_dir=experiment_dir,
                      wandb_mode=resolve_mode(sweep.wandb.mode))


def run_sweep(spec: LaunchSpec, address: str | None, resume: bool) -> tuple[Any, bool]:
    """Launches (or resumes) the sweep; returns (ResultGrid or None, interrupted)."""
    import ray
    from ray import tune

    init_ray(address, spec)
    try:
        check_storage_reaches_every_node(spec, alive_nodes())
    except UserError:
        ray.shutdown()
        raise
    if resume:
        tuner = tune.Tuner.restore(spec.experiment_dir, make_trainable(spec),
                                   resume_unfinished=True, resume_errored=True)
    else:
        if not storage.is_uri(spec.experiment_dir):
            Path(spec.experiment_dir).mkdir(parents=True, exist_ok=True)
        save_spec(spec)
        tuner = build_tuner(spec, on_cluster=address is not None)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        return None, True
    return results, False

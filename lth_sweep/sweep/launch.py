"""The Ray Tune side of a sweep: Optuna's searcher, the scheduler, the Tuner, Ray's start-up, launch and
resume."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from lth_sweep import storage
from lth_sweep.errors import UserError
from lth_sweep.sweep.schema import ResourcesConfig, SweepConfig, objective_metrics
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
    base, sep, query = spec.experiment_dir.partition("?")
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


def init_ray(address: str | None, spec: LaunchSpec) -> None:
    """Starts (or joins) Ray. The W&B API key is not in the runtime_env (Ray writes that to its logs):
    local workers inherit it from this process, a cluster's workers read their own environment or
    W&B's credential file."""
    import ray

    env_vars = {"WANDB_MODE": spec.wandb_mode, "WANDB_SILENT": "true"}
    if os.environ.get(FAIL_ONCE_ENV):
        env_vars[FAIL_ONCE_ENV] = os.environ[FAIL_ONCE_ENV]
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": True}
    if address is None:
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)
    if on_cluster(address):
        warning = no_node_fits(spec.sweep.resources, [node["Resources"] for node in ray.nodes() if node["Alive"]])
        if warning:
            print(f"lth-sweep: warning: {warning}", file=sys.stderr)


def with_env_wandb_mode(spec: LaunchSpec) -> LaunchSpec:
    """On resume: an explicit WANDB_MODE now wins over the mode that `auto` resolved to at launch."""
    if spec.sweep.wandb.mode != "auto" or not os.environ.get("WANDB_MODE"):
        return spec
    return spec.model_copy(update={"wandb_mode": resolve_mode("auto")})


def on_cluster(address: str | None) -> bool:
    """Whether Ray is joined rather than started here (`--address`, or RAY_ADDRESS, which ray.init reads)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def machine_cpus() -> int:
    """The CPUs this process may use (its affinity mask, as Ray counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_resources(resources: ResourcesConfig, address: str | None) -> None:
    """Refuses, before Ray starts, a trial size that Ray started on this machine could never place."""
    if on_cluster(address):
        return
    import torch

    gpus = torch.cuda.device_count()
    if resources.gpu > gpus:
        have = "no GPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus > 1 else ''}"
        allowed = "0" if gpus == 0 else f"0 to {gpus} (fractions share a GPU)"
        raise UserError("resources.gpu", f"{resources.gpu:g} per trial, but this machine has {have} "
                                         f"(torch.cuda.device_count() is {gpus}); allowed here: {allowed}, "
                                         "or run on a cluster with --address")
    cpus = machine_cpus()
    if resources.cpu > cpus:
        raise UserError("resources.cpu", f"{resources.cpu:g} per trial, but this machine has {cpus} CPUs; "
                                         f"allowed here: up to {cpus}, or run on a cluster with --address")


def no_node_fits(resources: ResourcesConfig, nodes: list[dict[str, float]]) -> str | None:
    """A one-line warning when no node (its Ray resources: {"CPU": 4, "GPU": 1}) has what one trial asks for."""
    if any(node.get("CPU", 0) >= resources.cpu and node.get("GPU", 0) >= resources.gpu for node in nodes):
        return None
    shapes = sorted({(node.get("CPU", 0), node.get("GPU", 0)) for node in nodes})
    shapes_text = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in shapes) or "none"
    return (f"no alive node of the cluster has the {resources.cpu:g} CPU and {resources.gpu:g} GPU a trial asks "
            f"for (resources.cpu/resources.gpu; nodes now: {shapes_text}); trials stay PENDING unless the "
            "autoscaler adds such a node")


# ------------------------------------------------------------------------------------ commands


def prepare_launch(sweep: SweepConfig, experiment: dict[str, Any], storage_location: str | None,
                   name: str | None, address: str | None = None) -> LaunchSpec:
    """The launch spec, checked; raises UserError if the sweep already exists or asks for resources that
    cannot exist here."""
    check_resources(sweep.resources, address)
    if name is not None:
        sweep.name = name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", sweep.name or ""):
        raise UserError("name", f"'{sweep.name}' may only use letters, digits, '.', '_' and '-'")
    root = storage.normalize(storage_location or sweep.storage)
    storage.check_location(root, "--storage" if storage_location else "storage")
    experiment_dir = storage.join(root, sweep.name)
    if storage.exists(storage.join(experiment_dir, SPEC_FILE)):
        raise UserError("--name", f"a sweep named '{sweep.name}' already exists at {experiment_dir}; "
                                  f"continue it with: lth-sweep resume {experiment_dir} (or pick another --name)")
    return LaunchSpec(sweep=sweep, experiment=experiment, experiment_dir=experiment_dir,
                      wandb_mode=resolve_mode(sweep.wandb.mode))


def run_sweep(spec: LaunchSpec, address: str | None, resume: bool) -> tuple[Any, bool]:
    """Launches (or resumes) the sweep; returns (ResultGrid or None, interrupted)."""
    from ray import tune

    if not resume:
        if not storage.is_uri(spec.experiment_dir):
            Path(spec.experiment_dir).mkdir(parents=True, exist_ok=True)
        save_spec(spec)
    init_ray(address, spec)
    if resume:
        tuner = tune.Tuner.restore(spec.experiment_dir, make_trainable(spec),
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = build_tuner(spec, on_cluster=address is not None)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        return None, True
    return results, False

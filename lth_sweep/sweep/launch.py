"""The Ray Tune side of a sweep: Optuna's searcher, the scheduler, the Tuner, Ray's start-up, launch and
resume."""

from __future__ import annotations

import importlib
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from lth_sweep import storage
from lth_sweep.config import build_experiment, machine_cpus
from lth_sweep.errors import RunFailure, UserError
from lth_sweep.signals import interrupts_held, sigterm_as_ctrl_c, terminate_as_ctrl_c
from lth_sweep.sweep.entry import EndsItsReport, imp_trainable
from lth_sweep.sweep.optuna_store import StudyStore, check_new_study, store_location
from lth_sweep.sweep.schema import ResourcesConfig, SweepConfig, objective_metrics
from lth_sweep.sweep.spec import SPEC_FILE, LaunchSpec, save_spec
from lth_sweep.sweep.tracking import resolve_mode

if TYPE_CHECKING:
    from lth_sweep.sweep.terminal import Terminal


def make_sampler(sweep: SweepConfig):
    import optuna

    from lth_sweep.sweep.optuna_search import PicklableNSGAIISampler

    seed = sweep.search.seed
    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: PicklableNSGAIISampler(seed=seed),
    }[sweep.search.sampler]()


def make_trainable(spec: LaunchSpec):
    from ray import tune

    sweep = spec.sweep
    trainable = tune.with_parameters(imp_trainable, spec=spec)
    trainable.__mixins__ = (EndsItsReport,)  # read by Tune when it makes the function's Trainable class
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


def build_tuner(spec: LaunchSpec, on_cluster: bool, callbacks: list[Any] | None = None, verbose: bool = False):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from lth_sweep.sweep.optuna_search import PackSearcher, ResumingLimiter, StoredOptunaSearch

    sweep = spec.sweep
    metrics, modes = objective_metrics(sweep.objective)
    single = len(metrics) == 1
    location = store_location(spec)
    store = None if location is None else StudyStore(location, spec.name, modes)
    space = {key: dist.to_tune() for key, dist in sweep.search.space.items()}
    pack = packed(spec)
    max_rounds = spec.max_rounds()  # a trial with fewer rounds ends there itself
    scheduler = FIFOScheduler()
    if sweep.scheduler.name == "asha" and pack == 1:  # a pack's members get ASHA inside it (MemberRungs)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_rounds,
                                  grace_period=min(sweep.scheduler.grace_rounds, max_rounds),
                                  reduction_factor=sweep.scheduler.reduction_factor)
    if pack == 1:
        searcher = StoredOptunaSearch(store, sampler=make_sampler(sweep), study_name=spec.name,
                                      **({} if single else {"metric": metrics, "mode": modes}))
        objective = {"metric": metrics[0], "mode": modes[0]} if single else {}
        param_space, trials = space, sweep.search.num_samples
    else:  # the searcher gets the space, metric and mode itself: Tune sees no metric, members carry them
        inner = StoredOptunaSearch(store, space=space, sampler=make_sampler(sweep), study_name=spec.name,
                                   metric=metrics[0] if single else metrics, mode=modes[0] if single else modes)
        searcher = PackSearcher(inner, pack, sweep.search.num_samples)
        objective, param_space, trials = {}, {}, math.ceil(sweep.search.num_samples / pack)
    searcher = ResumingLimiter(searcher, max_concurrent=min(concurrent_trials(sweep, on_cluster), trials))
    parent, name = storage.split_last(spec.experiment_dir)
    return tune.Tuner(
        make_trainable(spec),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=trials, reuse_actors=True, **objective,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=parent,
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks, verbose=1 if verbose else 0,
        ),
    )


def packed(spec: LaunchSpec) -> int:
    """Configs per trial (`search.pack`, resolved at launch)."""
    pack = spec.sweep.search.pack
    return pack if isinstance(pack, int) else 1


def start_member_asha(spec: LaunchSpec) -> Any:
    """For a pack sweep under ASHA: the actor that holds the members' rungs (one per driver, as Tune's own ASHA
    state is: a resumed sweep starts with empty rungs). Keep the handle: the actor lives as long as it."""
    if packed(spec) == 1 or spec.sweep.scheduler.name != "asha":
        return None
    from lth_sweep.sweep.packing import ACTOR_NAMESPACE, asha_actor_name, member_asha_actor

    _, modes = objective_metrics(spec.sweep.objective)
    scheduler, rounds = spec.sweep.scheduler, spec.max_rounds()
    return member_asha_actor().options(name=asha_actor_name(spec.name), namespace=ACTOR_NAMESPACE).remote(
        rounds, min(scheduler.grace_rounds, rounds), scheduler.reduction_factor, modes[0])


# A Ray started here: its trial actors get no runtime_env (`set_trial_actor_runtime_env`), so each runs in a plain
# worker that the raylet starts directly, with the environment it inherited from this driver (a runtime_env would
# put Ray's setup_worker.py, another Python start, in front of every worker). No worker is prestarted: on a small
# machine both cores are busy with the start-up anyway, and on a big one it would be a torch import per CPU for
# nothing. Each worker imports the trainable's module (the engine, torch) in its main thread as it starts: the
# driver refers to the trial function through lth_sweep.sweep.entry, which imports none of it, and torch first
# imported in Tune's trial thread leaves the worker in a state where Ray's SIGTERM at the actor's end lands in a
# weakref callback (a traceback, no exit).
# The raylet connects to its own object store with Ray's client retry: an attempt made before the store listens
# (common while the cores are busy starting everything) waited 1 s to retry; here it retries every 0.1 s, within
# the same 10 s in all.
LOCAL_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False,
                    "preload_python_modules": ["lth_sweep.sweep.trainable"],
                    "raylet_client_connect_timeout_milliseconds": 100, "raylet_client_num_connect_attempts": 100}


def worker_env(spec: LaunchSpec) -> dict[str, str]:
    """What trial workers need in their environment from this driver; never a secret. PL_DISABLE_FORK is what Tune
    itself gives its trial actors (DEFAULT_ENV_VARS in ray/tune/execution/class_cache.py)."""
    return {"WANDB_MODE": spec.wandb_mode, "WANDB_SILENT": "true", "PL_DISABLE_FORK": "1"}


def cluster_runtime_env(spec: LaunchSpec) -> dict[str, Any]:
    """A joined cluster's runtime_env: `worker_env`, and the tests' fault injection when it is set here (a Ray
    started here passes this whole environment on)."""
    from lth_sweep.sweep.trainable import FAIL_ONCE_ENV

    env_vars = worker_env(spec)
    if os.environ.get(FAIL_ONCE_ENV):
        env_vars[FAIL_ONCE_ENV] = os.environ[FAIL_ONCE_ENV]
    return {"env_vars": env_vars}


@contextmanager
def environ_set(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` holds `values` inside the block and is as before after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_ray(address: str | None, spec: LaunchSpec) -> str | None:
    """Starts (or joins) Ray; returns a warning for the terminal when no node of the cluster fits a trial.
    A Ray started here gets no runtime_env and prestarts no workers (LOCAL_RAY_CONFIG): the raylet and its workers
    inherit `worker_env` from this process's environment, set only while ray.init starts them. A joined cluster's
    workers get `worker_env` through the runtime_env. The W&B API key is never in the runtime_env (Ray writes
    that to its logs): local workers inherit it from this process, a cluster's workers read their own
    environment or W&B's credential file."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if on_cluster(address):
        with sigterm_kept_from_ray():
            ray.init(address=address, runtime_env=cluster_runtime_env(spec), log_to_driver=True)
        return no_node_fits(spec.sweep.resources, [node["Resources"] for node in ray.nodes() if node["Alive"]])
    with environ_set(worker_env(spec)), sigterm_kept_from_ray():
        ray.init(include_dashboard=False, log_to_driver=True, _system_config=LOCAL_RAY_CONFIG)
    return None


@contextmanager
def sigterm_kept_from_ray() -> Iterator[None]:
    """Inside the block Ray sets no SIGTERM handler, so a SIGTERM during `ray.init` is held like a Ctrl+C
    (`interrupts_held`). `ray.init` sets two first thing (`sys.exit(15)`, then its node's: kill Ray's processes,
    `sys.exit(1)`): raised wherever ray.init was, that exit could leave a lock of `logging` held, and the launch
    ended without the resume command. No public switch: Ray's `_private.utils.set_sigterm_handler` is
    replaced meanwhile; `set_up_tuner` puts ours back after ray.init in any case."""
    from ray._private import utils as ray_utils

    setter = getattr(ray_utils, "set_sigterm_handler", None)
    if setter is None:
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = setter


def set_trial_actor_runtime_env(address: str | None) -> None:
    """What Tune puts in its trial actors' runtime_env: never a cloud key, and on a Ray started here nothing.
    Tune copies AWS_* credentials from the driver's environment into every trial actor's runtime_env
    (ray/tune/execution/class_cache.py, ENV_VARS_TO_PROPAGATE), and Ray writes a runtime_env in plain text to its
    logs. Trials read credentials from their own environment instead: a Ray started here passes the driver's
    on to its workers; a cluster's nodes have their own (instance profile, a Secret; cluster/README.md).
    On a Ray started here, Tune's actors get no runtime_env at all: every variable Tune would put there is
    inherited already (`worker_env` holds Tune's PL_DISABLE_FORK), and a worker with a runtime_env starts through
    Ray's setup_worker.py (a Python start, ~0.3 CPU-s, per worker)."""
    from ray.tune.execution import class_cache

    if not on_cluster(address):
        class_cache.DEFAULT_ENV_VARS = {}
        class_cache.ENV_VARS_TO_PROPAGATE = set()
        return
    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in class_cache.ENV_VARS_TO_PROPAGATE
                                         if not name.startswith("AWS_")}


def skip_callback_usage_tag() -> None:
    """With Ray's usage stats off, Tune's `tag_callbacks` records nothing anyone reads, yet it imports every
    integration it counts callbacks against (W&B's, MLflow's: 0.3 s of the driver's start-up, before any trial
    starts). It is skipped then; with usage stats on, Tune tags as usual."""
    from ray._common.usage import usage_lib
    from ray.air._internal import usage as air_usage

    if not usage_lib.usage_stats_enabled():
        air_usage.tag_callbacks = lambda callbacks: False


# What ray.init imports on its own that Tune's import reaches too: imported before the two run side by side, so
# that no module is ever imported by both threads at once.
RAY_INIT_SHARED_IMPORTS = ("argparse", "gettext", "ray._common.usage.usage_lib", "ray.dashboard")
DRIVER_IMPORTS = ("ray.tune", "ray.tune.search.optuna", "ray.tune.schedulers", "optuna",
                  "lth_sweep.sweep.optuna_search", "lth_sweep.sweep.progress")


@contextmanager
def importing_meanwhile(modules: tuple[str, ...]) -> Iterator[None]:
    """Imports `modules` in a thread while the block runs (ray.init mostly waits for Ray's daemons, with a core to
    spare: ~0.8 s of the driver's start-up). Leaving the block waits for the thread. An import that failed there
    is not reported there: it fails again, with its own traceback, where the module is next imported."""
    for name in RAY_INIT_SHARED_IMPORTS:
        importlib.import_module(name)

    def import_all() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - raised again by the next import of the same module, where it is used
                pass

    thread = threading.Thread(target=import_all, name="lth-sweep-imports", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def with_env_wandb_mode(spec: LaunchSpec) -> LaunchSpec:
    """On resume: an explicit WANDB_MODE now wins over the mode that `auto` resolved to at launch."""
    if spec.sweep.wandb.mode != "auto" or not os.environ.get("WANDB_MODE"):
        return spec
    return spec.model_copy(update={"wandb_mode": resolve_mode("auto")})


def on_cluster(address: str | None) -> bool:
    """Whether Ray is joined rather than started here (`--address`, or RAY_ADDRESS, which ray.init reads)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


# Ray's longest socket path: <temp>/ray/session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store
RAY_SOCKET_SUFFIX = os.path.join("ray", "session_2026-12-01_20-06-58_760370_4194304", "sockets", "plasma_store")
MAX_SOCKET_PATH = 107  # bytes, AF_UNIX on Linux (sun_path less its terminating zero)


def ray_temp_root() -> str:
    """Where a Ray started here puts its session folder: RAY_TMPDIR, else (on Linux) TMPDIR, else /tmp (as
    ray._common.utils.get_default_system_temp_dir decides)."""
    if "RAY_TMPDIR" in os.environ:
        return os.environ["RAY_TMPDIR"]
    if sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        return os.environ["TMPDIR"]
    return "/tmp"


def check_address(address: str | None) -> None:
    """A cluster address (`--address` or RAY_ADDRESS) nobody answers at is one line, exit 1, before anything is
    written: `ray.init` would retry the GCS connection for minutes, logging every try. `auto` and `local` are
    Ray's to resolve."""
    key = "--address" if address else "RAY_ADDRESS"  # the environment's, which ray.init reads, when no flag
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local") or ("://" in address and not address.startswith("ray://")):
        return  # Ray's to resolve (an http:// dashboard address is the job CLI's, not ray.init's)
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(key, f"{address}: give HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379), "
                             "ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise RunFailure(key, f"{address}: no Ray cluster answers there ({err.strerror or err}); check that its head "
                              "runs (`ray status` on it) and that this machine can reach the port") from None


def check_restorable(experiment_dir: str) -> None:
    """The files Tune restores a sweep from can be read back; else one line naming the first that cannot, before
    Ray starts (Tune would fail with a traceback, or restore a searcher with no search space)."""
    from lth_sweep.sweep.snapshot import first_unreadable

    damaged = first_unreadable(experiment_dir)
    if damaged is not None:
        raise UserError(storage.join(experiment_dir, damaged.name),
                        f"cannot be read, it is truncated or corrupt ({damaged.reason}); resume needs it: put back "
                        "an intact copy (the trials' rounds are safe in by_config/)")


def check_ray_temp_dir(address: str | None) -> None:
    """Refuses, before Ray starts here, a temp folder whose socket paths are too long for Ray to start at all (a
    long TMPDIR, as batch schedulers set)."""
    if on_cluster(address):
        return
    root = ray_temp_root()
    longest = len(os.path.join(root, RAY_SOCKET_SUFFIX).encode())
    if longest > MAX_SOCKET_PATH:
        variable = "RAY_TMPDIR" if "RAY_TMPDIR" in os.environ else "TMPDIR"
        raise UserError(variable, f"Ray would put its sockets under {root}/ray/, where their paths reach {longest} "
                                  f"bytes, over the {MAX_SOCKET_PATH} a socket path may have; set RAY_TMPDIR to a "
                                  "shorter folder (for example RAY_TMPDIR=/tmp)")


def check_resources(resources: ResourcesConfig, address: str | None) -> None:
    """Refuses, before Ray starts, a trial size that Ray started on this machine could never place."""
    if on_cluster(address):
        return
    if resources.gpu > 0:
        check_gpus(resources.gpu)
    cpus = machine_cpus()
    if resources.cpu > cpus:
        raise UserError("resources.cpu", f"{resources.cpu:g} per trial, but this machine has {cpus} CPUs; "
                                         f"allowed here: up to {cpus}, or run on a cluster with --address")


def check_gpus(wanted: float) -> None:
    """Refuses a GPU share per trial that this machine's GPUs cannot give (torch counts them: only asked when
    a trial wants a GPU, as importing torch costs the driver a second)."""
    import torch

    gpus = torch.cuda.device_count()
    if wanted > gpus:
        have = "no GPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus > 1 else ''}"
        allowed = "0" if gpus == 0 else f"0 to {gpus} (fractions share a GPU)"
        raise UserError("resources.gpu", f"{wanted:g} per trial, but this machine has {have} "
                                         f"(torch.cuda.device_count() is {gpus}); allowed here: {allowed}, "
                                         "or run on a cluster with --address")


def no_node_fits(resources: ResourcesConfig, nodes: list[dict[str, float]]) -> str | None:
    """A one-line warning when no node (its Ray resources: {"CPU": 4, "GPU": 1}) has what one trial asks for."""
    if any(node.get("CPU", 0) >= resources.cpu and node.get("GPU", 0) >= resources.gpu for node in nodes):
        return None
    shapes = sorted({(node.get("CPU", 0), node.get("GPU", 0)) for node in nodes})
    shapes_text = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in shapes) or "none"
    return (f"no alive node of the cluster has the {resources.cpu:g} CPU and {resources.gpu:g} GPU a trial asks "
            f"for (resources.cpu/resources.gpu; nodes now: {shapes_text}); trials stay PENDING unless the "
            "autoscaler adds such a node")


def check_storage_reaches_every_node(spec: LaunchSpec, alive_nodes: int) -> None:
    """A sweep on more than one node needs storage that every node reads and writes: its trials run
    anywhere, and a restarted trial must find its rounds on whichever node it lands."""
    if alive_nodes <= 1 or storage.is_uri(spec.experiment_dir) or spec.sweep.storage_shared:
        return
    raise UserError("--storage", f"{spec.experiment_dir} is a folder on this machine, and the Ray cluster has "
                                 f"{alive_nodes} nodes whose trials cannot read or write it; allowed on a cluster: "
                                 "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or a folder mounted at the same path on "
                                 "every node (NFS) declared with --shared-storage (sweep key storage_shared: true)")


def check_cluster_storage(spec: LaunchSpec, address: str | None) -> None:
    """Before anything is written or launched: on a cluster, a local folder that is not declared shared is
    refused when the cluster has more than one alive node (asks the cluster, then disconnects)."""
    if not on_cluster(address) or storage.is_uri(spec.experiment_dir) or spec.sweep.storage_shared:
        return
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        alive = sum(1 for node in ray.nodes() if node["Alive"])
    finally:
        ray.shutdown()
    check_storage_reaches_every_node(spec, alive)


# ------------------------------------------------------------------------------------ commands


def prepare_launch(sweep: SweepConfig, experiment: dict[str, Any], storage_location: str | None,
                   name: str | None, address: str | None = None) -> LaunchSpec:
    """The launch spec, checked; raises UserError if the sweep already exists or asks for resources that
    cannot exist here."""
    check_resources(sweep.resources, address)
    check_address(address)
    if name is not None:
        sweep.name = name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", sweep.name or ""):
        raise UserError("name", f"'{sweep.name}' may only use letters, digits, '.', '_' and '-'")
    root = storage.normalize(storage_location or sweep.storage)
    storage.check_location(root, "--storage" if storage_location else "storage")
    storage.check_reachable(root, "--storage" if storage_location else "storage")
    experiment_dir = storage.join(root, sweep.name)
    if storage.exists(storage.join(experiment_dir, SPEC_FILE)):
        from lth_sweep.sweep.lock import check_not_held

        check_not_held(experiment_dir)  # a running sweep says who runs it
        raise UserError("--name", f"a sweep named '{sweep.name}' already exists at {experiment_dir}; "
                                  f"continue it with: lth-sweep resume {shlex.quote(experiment_dir)} "
                                  "(or pick another --name)")
    if sweep.search.pack == "auto":
        from lth_sweep.sweep.packing import auto_pack

        sweep.search.pack = auto_pack(build_experiment(experiment), sweep.resources.gpu, sweep.search.num_samples)
    spec = LaunchSpec(sweep=sweep, experiment=experiment, experiment_dir=experiment_dir,
                      wandb_mode=resolve_mode(sweep.wandb.mode))
    check_new_study(spec)
    check_ray_temp_dir(address)  # last: what the user got wrong is said first
    return spec


DRIVER_LOG = "driver.log"
# how `run_sweep` starts Tune: a new sweep (its spec saved first); Tune's restore of a sweep from its snapshot; or a
# new Tuner for a saved spec whose launch was stopped before Tune saved a snapshot it could restore
Start = Literal["launch", "restore", "relaunch"]


def driver_log_path(spec: LaunchSpec) -> Path:
    """Where Ray's, Tune's and Optuna's own output goes: the sweep folder, or a temp folder for a URI."""
    if storage.is_uri(spec.experiment_dir):
        return Path(tempfile.gettempdir()) / "lth_sweep" / spec.name / DRIVER_LOG
    return Path(spec.experiment_dir) / DRIVER_LOG


def set_up_tuner(spec: LaunchSpec, address: str | None, start: Start, terminal: Terminal,
                 verbose: bool) -> tuple[Any, Any]:
    """Starts Ray (or joins the cluster) and builds or restores the Tuner; returns it with the member-ASHA actor
    handle (None unless a pack sweep under ASHA), which must be held until the sweep ends. A launch saves
    its spec here."""
    with importing_meanwhile(DRIVER_IMPORTS):
        warning = init_ray(address, spec)
    signal.signal(signal.SIGTERM, terminate_as_ctrl_c)  # ray.init replaced it
    from ray import tune

    from lth_sweep.sweep.progress import Progress
    from lth_sweep.sweep.snapshot import SnapshotKeeper

    metrics, modes = objective_metrics(spec.sweep.objective)
    single = len(metrics) == 1
    set_trial_actor_runtime_env(address)
    skip_callback_usage_tag()
    progress = Progress(terminal, spec, metrics[0] if single else None, modes[0] if single else None)
    callbacks = [progress, SnapshotKeeper(spec.experiment_dir, terminal.line), *result_loggers()]
    if warning:
        terminal.line(f"lth-sweep: warning: {warning}")
    member_asha = start_member_asha(spec)
    if start == "launch":
        save_spec(spec)
    if start != "restore":
        return build_tuner(spec, on_cluster=address is not None, callbacks=callbacks, verbose=verbose), member_asha
    tuner = tune.Tuner.restore(spec.experiment_dir, make_trainable(spec), resume_unfinished=True,
                               resume_errored=True)
    # the run config comes back from tuner.pkl as launched: this run's progress and verbosity (no public API sets
    # them on a restored Tuner; a Ray Client tuner has no local one)
    if tuner._local_tuner is not None:
        run_config = tuner._local_tuner.get_run_config()
        run_config.callbacks = callbacks
        run_config.verbose = 1 if verbose else 0
    return tuner, member_asha


def run_sweep(spec: LaunchSpec, address: str | None, start: Start, verbose: bool = False) -> tuple[Any, bool]:
    """Launches, restores or launches again (`Start`) the sweep, a progress line per round on the terminal and
    Ray's own output in `driver_log_path(spec)` (on the terminal too with `verbose`); returns (ResultGrid or None,
    interrupted).
    Ray is shut down before it returns, Ctrl+C (or SIGTERM) or not, and no process of the Ray instance it started
    is left."""
    from lth_sweep.sweep.terminal import Terminal

    with Terminal(None if verbose else driver_log_path(spec)) as terminal, sigterm_as_ctrl_c():
        try:
            # a second Ctrl+C at once; the member-ASHA actor lives as long as its handle: held until the end
            with interrupts_held(second_at_once=True):
                tuner, member_asha = set_up_tuner(spec, address, start, terminal, verbose)
            return tuner.fit(), False
        except KeyboardInterrupt:  # a second Ctrl+C (Tune handles the first), or one before Tune started
            return None, True
        finally:
            shutdown_ray()


def result_loggers() -> list[Any]:
    """Tune's per-trial result files (result.json, progress.csv), given explicitly so that Tune adds no logger of
    its own (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS): its TensorBoard logger would import tensorboardX and torch into
    the driver (a second or more of start-up) and write event files that nothing here reads (W&B has every round)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    return [JsonLoggerCallback(), CSVLoggerCallback()]


def shutdown_ray() -> None:
    """ray.shutdown(), then ends what is left of the Ray instance this driver started (its agents ignore
    SIGTERM and would linger for minutes). A cluster this driver only joined is left alone. Ctrl+C is
    ignored meanwhile: a second one must not leave Ray half stopped."""
    ray = sys.modules.get("ray")
    if ray is None or not hasattr(ray, "shutdown"):
        return  # Ray was never imported whole here (importing it again after a cut import fails): none started
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ours = ray_session_processes()
        if ours:
            kill_autoscaler_monitor()
        ray.shutdown()
        end_processes(ours)
    finally:
        signal.signal(signal.SIGINT, previous)


def kill_autoscaler_monitor() -> None:
    """SIGKILLs the autoscaler monitor of the Ray instance this driver started: it holds nothing of ours, and
    ray.shutdown() would give it 1 s to heed a SIGTERM that it does not heed."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    for info in getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_MONITOR, []):
        if info.process.poll() is None:
            info.process.kill()
            try:
                info.process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass  # end_processes deals with it


def ray_session_processes() -> list[tuple[int, str]]:
    """(pid, start time) of every process of the Ray instance this driver started: those whose command
    line names the session, and all their descendants (the agents rename themselves; workers start
    sessions of their own). Empty when this driver joined a cluster or is not on Linux."""
    import ray

    node = ray._private.worker._global_node  # no public API says whether ray.init started the instance
    if node is None or not node.head or not Path("/proc").is_dir():
        return []
    table = process_table()
    ours = {pid for pid, info in table.items() if node.session_name in info.cmdline}
    grew = True
    while grew:
        children = {pid for pid, info in table.items() if info.parent in ours} - ours
        ours |= children
        grew = bool(children)
    ours.discard(os.getpid())
    return [(pid, table[pid].started) for pid in ours]


class ProcessInfo(NamedTuple):
    """A live process, as /proc/PID/stat and cmdline tell it."""

    parent: int
    started: str  # start time, in clock ticks after boot: with the pid, it names the process
    cmdline: str
    cpu_ticks: int  # user + system CPU time so far, in clock ticks (os.sysconf("SC_CLK_TCK") a second)
    group: int  # process group id


def process_table() -> dict[int, ProcessInfo]:
    """Every live process by pid, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            continue
        table[int(entry)] = ProcessInfo(int(fields[1]), fields[19], cmdline, int(fields[11]) + int(fields[12]),
                                        int(fields[2]))
    return table


def end_dead_drivers_ray(dead_driver: dict[str, Any] | None) -> int:
    """SIGKILLs what is left of the Ray instance of a driver that was SIGKILLed on this machine: Ray's dashboard
    and runtime-env agents outlive it by 60-90 s, blocked reporting the raylet's death to the GCS that died with
    it (Ray's `publish_error_to_driver`, 60 s timeout). They are the `ray::` processes still in the dead driver's
    process group: Linux gives no new process the id of a group that has members, and a driver whose own pid is
    alive again (another process now) is left alone. Returns how many were ended."""
    if not dead_driver or dead_driver.get("host") != socket.gethostname() or not Path("/proc").is_dir():
        return 0
    group = dead_driver.get("pid")
    table = process_table()
    if not isinstance(group, int) or group in table:  # the pid is someone's again: its group may be theirs
        return 0
    left = [pid for pid, info in table.items() if info.group == group and info.cmdline.startswith("ray::")]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)  # they hold nothing of ours; a SIGTERM waits for their 60 s call
        except (ProcessLookupError, PermissionError):
            pass
    return len(left)


def end_processes(processes: list[tuple[int, str]], grace_s: float = 5.0) -> None:
    """Waits up to `grace_s` for the processes to exit, then SIGTERM, then SIGKILL; a pid whose start time
    changed is another process now and is left alone."""

    def alive() -> list[int]:
        table = process_table()
        return [pid for pid, started in processes if pid in table and table[pid].started == started]

    for sig, wait_s in ((None, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        left = alive()
        if sig is not None:
            for pid in left:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = alive()
        if not left:
            return

"""Helpers for the sweep tests: tiny sweep files, `lth-sweep` as a subprocess, readers for what a sweep leaves
(status, per-config engine records, the rounds-trained ledger, W&B offline runs) and process bookkeeping.

Every Ray instance these tests start lives under a private temp dir (`RAY_TMPDIR`, one per test module):
`ray.init()` without an address then never joins a cluster someone else started on this machine (Ray reads
`$RAY_TMPDIR/ray/ray_current_cluster`), and every process Ray starts for us inherits a marker variable, so
clean-up can find exactly our processes and nothing else.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from lth_sweep.sweep.trainable import FAIL_ONCE_ENV, read_ledger

# Set in the environment of every process the tests start; Ray's processes inherit it.
MARKER_ENV = "LTH_SWEEP_TEST_MARKER"
MARKER = f"lth-sweep-tests-{uuid.uuid4().hex[:12]}"

# Searched in the shared sweep: a rate in (0, 1), an iteration inside training, a learning rate on a log scale.
SPACE = {
    "prune.rate": {"uniform": [0.2, 0.5]},
    "rewind.iteration": {"int": [0, 50]},
    "train.lr": {"loguniform": [0.001, 0.005]},
}


def experiment(data_root: str | Path, epochs: int = 3, rounds: int = 3) -> dict[str, Any]:
    """The tiny MNIST-1D experiment (mlp [32], batch 100: 35 iterations per epoch) as inline sweep keys."""
    return {
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": "mnist1d", "root": str(data_root)},
        "model": {"name": "mlp", "widths": [32]},
        "train": {"optimizer": "adam", "lr": 0.002, "batch_size": 100, "epochs": epochs, "eval_every": 10},
        "prune": {"strategy": "layerwise", "rate": 0.2, "rounds": rounds},
        "rewind": {"iteration": 0},
    }


def sweep_tree(data_root: str | Path, *, epochs: int = 3, rounds: int = 3, num_samples: int = 4,
               max_concurrent: int | None = 2, sampler: str = "random", space: dict[str, Any] | None = None,
               objective: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A whole sweep file as data; `top` adds or replaces top-level keys."""
    search: dict[str, Any] = {"space": copy.deepcopy(SPACE if space is None else space),
                              "num_samples": num_samples, "sampler": sampler, "seed": 0}
    if max_concurrent is not None:
        search["max_concurrent"] = max_concurrent
    tree = {
        "experiment": experiment(data_root, epochs, rounds),
        "search": search,
        "objective": objective or {"name": "matching_density", "tolerance": 0.01},
        "resources": {"cpu": 1, "gpu": 0},
        "wandb": {"project": "lth-sweep-tests", "mode": "offline"},
    }
    tree.update(top)
    return tree


def write_sweep(path: Path, tree: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ processes


def cli_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "lth_sweep.cli", *(str(a) for a in args)]


def cli_env(ray_tmp: str | Path | None, **extra: str) -> dict[str, str]:
    """The test environment: W&B offline and quiet, no usage stats, our private Ray temp dir, no stray
    RAY_ADDRESS or fault injection inherited from the shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", FAIL_ONCE_ENV)}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
    env[MARKER_ENV] = MARKER
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    env.update(extra)
    return env


class Result:
    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str, seconds: float) -> None:
        self.argv, self.returncode, self.stdout, self.stderr, self.seconds = argv, returncode, stdout, stderr, seconds

    def explain(self) -> str:
        return (f"$ {' '.join(self.argv)}\nexit {self.returncode} after {self.seconds:.1f}s\n"
                f"--- stdout (tail) ---\n{self.stdout[-6000:]}\n--- stderr (tail) ---\n{self.stderr[-6000:]}")


def run_cli(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 240) -> Result:
    """Runs `lth-sweep ARGS` in its own process group; on a timeout the whole group is killed."""
    argv = cli_argv(*args)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        stderr += f"\n[test harness] killed after {timeout}s"
        return Result(argv, -9, stdout, stderr, time.monotonic() - started)
    finally:
        reap_group(proc.pid)
    return Result(argv, proc.returncode, stdout, stderr, time.monotonic() - started)


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, process group) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def _has_marker(pid: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_ENV}={MARKER}".encode() in environ.split(b"\0")


def our_processes(pgid: int | None = None) -> list[int]:
    """Live (not zombie) processes that the tests started: in process group `pgid` or, for any group,
    carrying this session's marker in their environment. Never this pytest process itself."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        if (pgid is not None and stat[1] == pgid) or (pgid is None and _has_marker(pid)):
            found.append(int(pid))
    return found


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap_group(pgid: int, wait: float = 0.0) -> list[int]:
    """Waits up to `wait` seconds for the processes left in our process group `pgid` to exit, then kills
    what is left. Returns the pids that had to be killed."""
    return _reap(lambda: our_processes(pgid), wait)


def kill_marked(wait: float = 0.0) -> list[int]:
    """Like reap_group, for every process that carries this session's marker (e.g. Ray workers, which
    Ray starts in sessions of their own)."""
    return _reap(our_processes, wait)


def _reap(find: Callable[[], list[int]], wait: float) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        left = find()
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@contextmanager
def started(*args: str | Path, cwd: Path, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """An `lth-sweep` command running in a process group of its own, its output in `log_path`. Leaving the block
    kills the group if the command still runs, then reaps what of it outlives 5 s (Ray's own reaper takes a local
    instance down with its driver)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cli_argv(*args), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
            proc.wait()
        reap_group(proc.pid, wait=5)


def private_ray_tmp() -> Iterator[Path]:
    """For a fixture: a short private Ray temp dir (Ray's socket paths must stay under ~107 bytes);
    afterwards, kills whatever process of this test session still runs, and removes the dir."""
    path = Path(tempfile.mkdtemp(prefix="lthray-", dir="/tmp"))
    yield path
    kill_marked(wait=5)
    shutil.rmtree(path, ignore_errors=True)


def poll(condition: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------ what a sweep leaves


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ledger(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """The rounds trained (replayed rounds are not written), oldest first: <sweep>/rounds_trained.jsonl, or
    the objects under <sweep>/ledger/ for a sweep at a URI."""
    return read_ledger(str(sweep_dir))


def part_way(ledger_lines: list[dict[str, Any]], rounds: int) -> list[str]:
    """The configs with some but not all of their rounds in the ledger: their trials run again on resume."""
    done = Counter(line["config_hash"] for line in ledger_lines)
    return sorted(config_hash for config_hash, n in done.items() if 0 < n < rounds)


def leave_pack_checkpoint(config_root: Path, config_hash: str) -> Path:
    """What a pack trial killed while Tune took its checkpoint leaves in its first member's folder
    (pack_trainable.pack_checkpoint), as hard links to the engine's files."""
    stray = config_root / ".pack-checkpoint-4d1e5a7b" / config_hash
    stray.mkdir(parents=True)
    (stray / "state.pt").write_bytes(b"left by a kill")
    return stray.parent


def engine_rounds(sweep_dir: Path, config_hash: str) -> list[dict[str, Any]]:
    return read_jsonl(sweep_dir / "by_config" / config_hash / "engine" / "rounds.jsonl")


def status_json(sweep_dir: Path | str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run_cli("status", sweep_dir, "--json", cwd=cwd, env=env, timeout=120)
    assert result.returncode == 0, result.explain()
    return json.loads(result.stdout)


def matching_density(records: list[dict[str, Any]], tolerance: float) -> float:
    """The objective, recomputed here independently: the smallest density whose val_acc is within
    `tolerance` of the dense round's val_acc."""
    dense = next(r for r in records if r["round"] == 0)["val_acc"]
    return min(r["density"] for r in records if r["val_acc"] >= dense - tolerance)


def assert_every_round_once(sweep_dir: Path, trials: list[dict[str, Any]], rounds: int,
                            tolerance: float = 0.01) -> None:
    """Every trial's engine has rounds 0..rounds-1 once, and its objective is their matching density."""
    for trial in trials:
        records = engine_rounds(sweep_dir, trial["config_hash"])
        assert [r["round"] for r in records] == list(range(rounds)), trial
        assert math.isclose(trial["objective"], matching_density(records, tolerance), rel_tol=1e-6), trial


def resume_to_the_end(sweep_dir: Path, cwd: Path, env: dict[str, str], num_samples: int, rounds: int) -> Result:
    """`lth-sweep resume` of an interrupted sweep: it exits 0, every trial is TERMINATED, and the ledger holds each
    config's every round exactly once. Returns the resume's result."""
    resumed = run_cli("resume", sweep_dir, cwd=cwd, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.explain()
    status = status_json(sweep_dir, cwd, env)
    assert [t["state"] for t in status["trials"]] == ["TERMINATED"] * num_samples
    trained = [(line["config_hash"], line["round"]) for line in ledger(sweep_dir)]
    assert len(trained) == len(set(trained)) == num_samples * rounds
    return resumed


def wandb_run_dirs(sweep_dir: Path, config_hash: str) -> list[Path]:
    return sorted((sweep_dir / "by_config" / config_hash / "wandb" / "wandb").glob("offline-run-*"))


def wandb_rounds(sweep_dir: Path, config_hash: str) -> list[int]:
    """The rounds of a config's offline W&B runs, read in order as `wandb sync` does: a run's row counts only
    when its step is past every step before it (a resumed run replays nothing)."""
    last_step, rounds = -1, []
    for run_dir in wandb_run_dirs(sweep_dir, config_hash):
        for item in history_items(wandb_records(run_dir)):
            if item["_step"] > last_step:
                last_step = item["_step"]
                if "val_acc" in item:
                    rounds.append(item["round"])
    return rounds


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """An offline run's records, read with W&B's own reader (`wandb leet inspect --json RUN_DIR`); none for
    a run dir without its .wandb file (a run killed while it started)."""
    if not any(run_dir.glob("*.wandb")):
        return []
    exe = shutil.which("wandb")
    argv = [exe] if exe else [sys.executable, "-m", "wandb"]
    proc = subprocess.run([*argv, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                          timeout=120, env=cli_env(None))
    assert proc.returncode == 0, f"wandb leet inspect {run_dir} failed:\n{proc.stderr[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def history_items(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def run_config(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's config: the run record's config merged with later config updates."""
    config: dict[str, Any] = {}
    for record in records:
        if record.get("type") == "run":
            config.update(record["run"].get("config", {}).get("update", {}))
        elif record.get("type") == "config":
            config.update(record["config"].get("update", {}))
    return config


# ------------------------------------------------------------------------------------ the shared sweep


class Sweep(NamedTuple):
    dir: Path  # <storage>/<name>
    tree: dict[str, Any]  # the sweep file's data
    launch: Result
    cwd: Path
    env: dict[str, str]


def reference_tree(data_root: str | Path) -> dict[str, Any]:
    """The sweep that test_sweep.py checks end to end and test_sweep_resume.py interrupts: 4 trials, 2 at a
    time, 3 rounds of 6 epochs (210 iterations), random sampler with a seed."""
    return sweep_tree(data_root, epochs=6, rounds=3, num_samples=4, max_concurrent=2, sampler="random")


def launch_sweep(tree: dict[str, Any], base: Path, ray_tmp: Path, name: str = "imp", timeout: float = 240,
                 **env_extra: str) -> Sweep:
    base.mkdir(parents=True, exist_ok=True)
    sweep_file = write_sweep(base / f"{name}.yaml", tree)
    env = cli_env(ray_tmp, **env_extra)
    result = run_cli("launch", sweep_file, "--storage", base / "storage", cwd=base, env=env, timeout=timeout)
    return Sweep(base / "storage" / name, tree, result, base, cli_env(ray_tmp))


def finished(sweep: Sweep) -> Sweep:
    """`sweep`, after checking that its launch exited 0."""
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    return sweep

"""What keeps a sweep's fixed cost small (issue 11 part 5; figures in benchmarks/RESULTS.md), each with the
guarantee next to it: a Ray started here has no runtime_env and prestarts no workers, yet its workers get W&B's
mode and the trainable preloaded, and this driver's environment is as before; its shutdown leaves none of its
processes; the driver never imports torch; an offline W&B run starts in the background and gets every row
logged meanwhile, in order; the program's early exit still flushes its output and keeps its exit code.
Real Ray (local), real W&B (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sweep_helpers as h

from lth_sweep.sweep.schema import SweepConfig, WandbConfig
from lth_sweep.sweep.spec import LaunchSpec
from lth_sweep.sweep.tracking import LOGGED_ROUNDS_FILE, Tracker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    yield from h.private_ray_tmp()


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def workers(processes: list[tuple[int, str]]) -> list[str]:
    """The Ray worker processes among `processes` ((pid, start time) pairs): named ray::IDLE once started, running
    default_worker.py before (the raylet's own command line names that script too)."""
    from lth_sweep.sweep.launch import process_table

    table = process_table()
    commands = [table[pid].cmdline for pid, _ in processes if pid in table]
    return [command for command in commands if command.startswith("ray::IDLE")
            or ("default_worker.py" in command and not command.split()[0].endswith("/raylet"))]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_ray_has_no_runtime_env_and_shuts_down_whole(ray_tmp: Path, data_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray.tune.execution.class_cache import _ActorClassCache

    from lth_sweep.sweep.launch import (
        init_ray,
        process_table,
        ray_session_processes,
        set_trial_actor_runtime_env,
        shutdown_ray,
    )

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("WANDB_MODE", "online")  # the spec's mode, not this, must reach the workers
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    tree = h.sweep_tree(data_root, wandb={"project": "p", "mode": "disabled"})
    experiment = tree.pop("experiment")
    spec = LaunchSpec(sweep=SweepConfig.model_validate({**tree, "name": "ov"}), experiment=experiment,
                      experiment_dir=str(ray_tmp / "ov"), wandb_mode="disabled")
    try:
        assert init_ray(None, spec) is None
        assert os.environ["WANDB_MODE"] == "online" and "WANDB_SILENT" not in os.environ  # as before

        time.sleep(3)  # a prestarted worker is spawned as the driver registers, before ray.init returns
        assert workers(ray_session_processes()) == [], "workers prestarted for nothing (Tune's actors never use them)"

        @ray.remote(num_cpus=1)
        def worker_view() -> tuple[dict, str | None, str | None, bool]:
            return (ray.get_runtime_context().runtime_env, os.environ.get("WANDB_MODE"),
                    os.environ.get("WANDB_SILENT"), "lth_sweep.sweep.trainable" in sys.modules)

        # the trainable (torch) preloaded in the worker's main thread, not first imported in Tune's trial thread
        assert ray.get(worker_view.remote(), timeout=60) == ({}, "disabled", "true", True)

        # Tune's trial actors too get no runtime_env: they run in a worker the raylet started itself (no setup_worker),
        # with Tune's own variable inherited
        set_trial_actor_runtime_env(None)

        class TrialActorView:
            def view(self) -> tuple[dict, str | None, str]:
                parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")[0].decode()
                return ray.get_runtime_context().runtime_env, os.environ.get("PL_DISABLE_FORK"), Path(parent).name

        actor = _ActorClassCache().get(TrialActorView).options(num_cpus=1).remote()
        assert ray.get(actor.view.remote(), timeout=60) == ({}, "1", "raylet")
        ours = ray_session_processes()
        assert len(ours) >= 5 and workers(ours)  # gcs, raylet, monitor, dashboard, agents, the task's worker
    finally:
        shutdown_ray()
    table = process_table()
    assert [pid for pid, started in ours if pid in table and table[pid].started == started] == []


def test_the_driver_imports_no_torch() -> None:
    """Everything a launch imports in the driver, the trainable's reference and Tune's loggers included."""
    done = python("import sys\n"
                  "import lth_sweep.cli, lth_sweep.sweep.progress, lth_sweep.sweep.status, lth_sweep.sweep.fetch\n"
                  "from lth_sweep.sweep import launch\n"
                  "from lth_sweep.sweep.schema import ResourcesConfig\n"
                  "launch.check_resources(ResourcesConfig(cpu=1, gpu=0), None)\n"
                  "launch.result_loggers()\n"
                  "assert launch.imp_trainable.__module__ == 'lth_sweep.sweep.entry'\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorboardX')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tunes_callback_usage_tag_is_skipped_only_with_usage_stats_off() -> None:
    """It imports W&B into the driver to count callbacks (0.3 s of start-up); with usage stats on, Tune tags as ever."""
    code = ("import os, sys\n"
            "from lth_sweep.sweep import launch\n"
            "from ray.air._internal import usage\n"
            "from ray.tune.logger import JsonLoggerCallback\n"
            "launch.skip_callback_usage_tag()\n"
            "usage.tag_callbacks([JsonLoggerCallback()])\n"
            "print('wandb' in sys.modules)")
    assert [python(code, env={"RAY_USAGE_STATS_ENABLED": enabled}).stdout.strip() for enabled in ("0", "1")] \
        == ["False", "True"]


def test_imports_meanwhile_are_done_when_the_block_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver imports Tune's side while ray.init runs; a module that fails there fails again where it is used."""
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(0.5)\nDONE = True\n")
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from lth_sweep.sweep.launch import importing_meanwhile

    with importing_meanwhile(("broken_module", "slow_module")):
        pass
    assert sys.modules["slow_module"].DONE
    with pytest.raises(RuntimeError, match="broken at import"):
        import broken_module  # noqa: F401
    for name in ("slow_module", "broken_module"):
        sys.modules.pop(name, None)


def test_an_offline_run_gets_what_was_logged_while_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(WandbConfig(mode="offline"), "g", "bg-start", "bg-start", {}, tmp_path, "max", 10)
    for r in range(3):  # before the run has started, most likely: the start takes ~0.5 s
        tracker.log_curve({"val_acc": 0.5 + r / 10}, 10 * r + 5)
        tracker.log_round({"round": r, "density": 0.8 ** r, "val_acc": 0.6 + r / 10}, {"objective": r})
    tracker.finish()
    assert tracker.notices == []
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    items = h.history_items(h.wandb_records(run_dir))
    assert [item["round"] for item in items if "val_acc" in item] == [0, 1, 2]
    assert [item["curve/val_acc"] for item in items if "curve/val_acc" in item] == [0.5, 0.6, 0.7]
    assert json.loads((tmp_path / LOGGED_ROUNDS_FILE).read_text()) == {"round": 2}


def test_a_pack_s_runs_keep_every_row_whichever_finishes_first(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack's members are live W&B runs in one worker, finished one after another: finishing one must not stop
    W&B's service under the others (their last rows were lost, and with them the round in W&B)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trackers = [Tracker(WandbConfig(mode="offline"), "g", f"member-{k}", f"member-{k}", {}, tmp_path / str(k), "max",
                        10) for k in range(2)]
    for r in range(3):
        for tracker in trackers:
            tracker.log_curve({"val_acc": 0.5 + r / 10}, 10 * r + 5)
            tracker.log_round({"round": r, "density": 0.8 ** r, "val_acc": 0.6 + r / 10}, {"objective": r})
    for tracker in trackers:
        tracker.finish()
        assert tracker.notices == []
    for k in range(2):
        (run_dir,) = (tmp_path / str(k)).glob("wandb/offline-run-*")
        items = h.history_items(h.wandb_records(run_dir))
        assert [item["round"] for item in items if "val_acc" in item] == [0, 1, 2], k
        assert json.loads((tmp_path / str(k) / LOGGED_ROUNDS_FILE).read_text()) == {"round": 2}, k


def test_a_pack_s_runs_start_together_without_losing_their_connection(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Three members' runs start at once, in threads of their own, right after the previous trial stopped W&B's
    service: two starts at once raced in W&B's service start ("Connection lost", about 1 start in 12 here before
    W&B's calls were made one at a time). Eight packs in a row, as a reused Ray worker runs them."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for pack in range(8):
        trackers = [Tracker(WandbConfig(mode="offline"), "g", f"p{pack}-{k}", f"p{pack}-{k}", {},
                            tmp_path / f"{pack}-{k}", "max", 10) for k in range(3)]
        for tracker in trackers:
            tracker.log_round({"round": 0, "density": 1.0, "val_acc": 0.6}, {"objective": 1.0})
        for tracker in trackers:
            tracker.finish()
        assert [text for tracker in trackers for text in tracker.notices] == [], pack
        assert all((tmp_path / f"{pack}-{k}" / LOGGED_ROUNDS_FILE).exists() for k in range(3)), pack


def test_a_run_that_cannot_start_turns_tracking_off_with_a_notice(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The start thread's failure reaches the trial's notices at its next log call, and the trial goes on."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").write_text("a file where W&B wants its folder")
    tracker = Tracker(WandbConfig(mode="offline"), "g", "no-start", "no-start", {}, tmp_path, None, 10)
    tracker.finish()
    tracker.log_round({"round": 0, "val_acc": 0.5}, {})
    assert len(tracker.notices) == 1 and "W&B tracking is off for this trial" in tracker.notices[0]
    assert not (tmp_path / LOGGED_ROUNDS_FILE).exists()


@pytest.mark.parametrize("code, returncode, stderr", [("3", 3, ""), ("'bad thing'", 1, "bad thing\n")])
def test_the_early_exit_flushes_and_keeps_the_exit_code(code: str, returncode: int, stderr: str) -> None:
    done = python("import atexit, sys\n"
                  "from lth_sweep.cli import exit_now\n"
                  "atexit.register(lambda: print('atexit ran'))\n"
                  "print('buffered line', end='')\n"
                  f"exit_now({code})\n", env={"PYTHONUNBUFFERED": ""})  # stdout to a pipe: block-buffered
    assert (done.returncode, done.stdout, done.stderr) == (returncode, "buffered lineatexit ran\n", stderr)

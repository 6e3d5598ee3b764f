"""Ctrl+C (and SIGTERM) on `lth-sweep launch`: Tune saves the experiment, the command exits (within the harness's
60 s) with 130 (143) and prints the resume command, and `lth-sweep resume` finishes the sweep; a Ctrl+C while the launch
starts. Real Ray, Optuna, W&B offline."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sweep_helpers as h

NUM_SAMPLES, ROUNDS = 3, 3


def launch_and_signal(tmp_path: Path, tree: dict[str, Any], env: dict[str, str], ready: Callable[[], Any],
                      signum: int, timeout: float, interval: float,
                      before: Callable[[], bool] = lambda: True) -> tuple[int, str]:
    """Launches the sweep `tree` into tmp_path/storage, sends it `signum` once `ready()` (checking `before()`
    then), waits for it to exit (60 s at most) and reaps its process group; returns (exit code, its output)."""
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", tree)
    with open(tmp_path / "launch.log", "w") as log:
        proc = subprocess.Popen(h.cli_argv("launch", sweep_file, "--storage", tmp_path / "storage"), cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        h.poll(lambda: ready() or proc.poll() is not None, timeout=timeout, interval=interval, what="the moment")
        assert proc.poll() is None, "the launch ended before the signal:\n" + (tmp_path / "launch.log").read_text()
        assert before(), (tmp_path / "launch.log").read_text()
        proc.send_signal(signum)
        returncode = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            h.kill_group(proc.pid)
            proc.wait()
    h.reap_group(proc.pid, wait=5)
    return returncode, (tmp_path / "launch.log").read_text()


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["Ctrl+C", "SIGTERM"])
def test_ctrl_c_saves_exits_and_resumes(tmp_path: Path, data_root: Path, ray_tmp: Path, signum: int,
                                        exit_code: int) -> None:
    """SIGTERM (a batch scheduler's preemption) does what Ctrl+C does; before, Ray's own handler ended the driver
    at once with exit 1, its output unflushed and no resume command."""
    tree = h.sweep_tree(data_root, epochs=6, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=1,
                        sampler="random")
    sweep_dir = tmp_path / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    returncode, output = launch_and_signal(tmp_path, tree, env, lambda: len(h.ledger(sweep_dir)) >= 2, signum,
                                           timeout=240, interval=0.1)
    assert returncode == exit_code, output[-3000:]
    assert f"lth-sweep resume {sweep_dir}" in output
    assert len(h.ledger(sweep_dir)) < NUM_SAMPLES * ROUNDS
    # "best trials" are trials that finished all their rounds, never a running value
    stopped = h.status_json(sweep_dir, tmp_path, env)
    partial = {t["trial_id"] for t in stopped["trials"] if 0 < t["rounds_done"] < ROUNDS}
    assert all(b["rounds_done"] == ROUNDS for b in stopped["best"]), stopped
    assert all(t["state"] == "IN_PROGRESS" for t in stopped["trials"] if t["trial_id"] in partial), stopped
    best_line = next((line for line in output.splitlines() if line.startswith("best trials:")), "")
    assert not any(trial_id in best_line for trial_id in partial), output[-3000:]

    h.resume_to_the_end(sweep_dir, tmp_path, env, NUM_SAMPLES, ROUNDS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("signum", "exit_code", "moment"), [
    (signal.SIGINT, 130, "importing Ray"), (signal.SIGINT, 130, "starting Ray"), (signal.SIGTERM, 143, "starting Ray"),
], ids=["Ctrl+C importing Ray", "Ctrl+C starting Ray", "SIGTERM starting Ray"])
def test_ctrl_c_while_the_launch_starts_stops_it_once_set_up_and_resume_launches_it_again(
        tmp_path: Path, data_root: Path, ray_tmp: Path, signum: int, exit_code: int, moment: str) -> None:
    """Ctrl+C while the driver imports Ray (once its log is open) or while Ray starts (its session folder made).
    Before, a KeyboardInterrupt raised there left Ray half imported (a traceback from importing it again), or a
    lock of `logging` held that the thread importing Tune then waited on (the launch hung, 1 in 3), or no
    sweep.json (the launch said "no sweep at ...", exit 2). Now the Ctrl+C takes effect once the sweep is set
    up: exit 130 with the resume command and no process left; Tune never started, so the resume launches the
    sweep again from its sweep.json. A SIGTERM there met the handlers `ray.init` sets (`sys.exit`, exit 1 or 15
    and no resume command); now it does what the Ctrl+C does, with exit 143."""
    sweep_dir = tmp_path / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    sessions = set((ray_tmp / "ray").glob("session_2*"))
    ready = ((lambda: (sweep_dir / "driver.log").exists()) if moment == "importing Ray" else
             (lambda: bool(set((ray_tmp / "ray").glob("session_2*")) - sessions)))
    returncode, output = launch_and_signal(tmp_path, h.sweep_tree(data_root, rounds=1, num_samples=1), env,
                                              ready, signum, timeout=60, interval=0.02,
                                              before=lambda: not (sweep_dir / "sweep.json").exists())
    assert h.kill_marked(wait=10) == [], "a process of the Ray it started outlived the launch"
    assert returncode == exit_code, output
    assert f"the sweep is not finished; continue it with: lth-sweep resume {sweep_dir}" in output, output
    assert "Traceback" not in output and "W&B runs were written offline" not in output, output
    assert "; 0/1 trials (Tune has started none yet)" in output and "trial_id" not in output, output
    assert not list(sweep_dir.glob("experiment_state-*")), "Tune started"
    resumed = h.resume_to_the_end(sweep_dir, tmp_path, env, num_samples=1, rounds=1)
    assert "# its launch was stopped before Tune saved a snapshot of it" in resumed.stdout, resumed.explain()


def test_a_launch_stopped_before_it_saved_its_spec_says_to_launch_it_again(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A Ctrl+C between taking the sweep's lock and the start-up that defers it (a few lines of Python) leaves no
    sweep.json: nothing to resume, and the name is free."""
    from lth_sweep.cli import finish_sweep
    from lth_sweep.sweep.launch import prepare_launch
    from lth_sweep.sweep.schema import load_sweep

    sweep, experiment = load_sweep(Path(__file__).parents[1] / "sweeps" / "quickstart.yaml", {})
    spec = prepare_launch(sweep, experiment, str(tmp_path / "storage"), "imp")
    with pytest.raises(SystemExit) as exit_:
        finish_sweep(spec, interrupted=True)
    assert exit_.value.code == 130
    assert capfd.readouterr().out.strip().splitlines()[-1] == (
        "the sweep was stopped before it started; nothing of it was saved: launch it again with the same command "
        "(the name imp is still free)")


@pytest.mark.timeout(300)
def test_resume_of_a_launch_killed_before_it_saved_its_spec_says_to_launch_it_again(
        tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    """A SIGKILL while the launch starts Ray leaves the sweep's folder with its lock and driver.log but no
    sweep.json. `resume` of that folder (the one the launch printed) says that the launch was stopped before it
    saved the sweep and to run it again, exit 2, and starts nothing; the same launch then runs the sweep."""
    sweep_dir = tmp_path / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    tree = h.sweep_tree(data_root, rounds=1, num_samples=1)
    returncode, _ = launch_and_signal(tmp_path, tree, env, lambda: (sweep_dir / "driver.log").exists(),
                                      signal.SIGKILL, timeout=60, interval=0.02,
                                      before=lambda: not (sweep_dir / "sweep.json").exists())
    h.kill_marked(wait=10)
    assert returncode == -signal.SIGKILL and (sweep_dir / "driver.lock").exists()
    assert not (sweep_dir / "sweep.json").exists(), "the kill came too late for this test"

    resumed = h.run_cli("resume", sweep_dir, cwd=tmp_path, env=env, timeout=120)
    assert resumed.returncode == 2, resumed.explain()
    assert resumed.stderr.strip().splitlines() == [
        f"lth-sweep: error: PATH: no sweep at {sweep_dir} (sweep.json is missing): the launch that began it was "
        "stopped before it saved the sweep (or is starting now), so nothing of it ran; run that `lth-sweep launch` "
        "again"], resumed.explain()
    assert not list(sweep_dir.glob("experiment_state-*")) and not (sweep_dir / "sweep.json").exists()

    launched = h.run_cli("launch", tmp_path / "imp.yaml", "--storage", tmp_path / "storage", cwd=tmp_path, env=env)
    assert launched.returncode == 0, launched.explain()
    assert [t["state"] for t in h.status_json(sweep_dir, tmp_path, env)["trials"]] == ["TERMINATED"]


def ray_agents_in_group(pgid: int) -> list[int]:
    """Live `ray::` processes (Ray's agents rename themselves so) in process group `pgid`."""
    found = []
    for pid in h.our_processes(pgid):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if name.startswith(b"ray::"):
            found.append(pid)
    return found


@pytest.mark.timeout(300)
def test_resume_after_a_sigkill_ends_the_ray_agents_the_dead_driver_left(tmp_path: Path, data_root: Path,
                                                                        ray_tmp: Path) -> None:
    """A SIGKILLed driver's Ray dies with it but for its dashboard and runtime-env agents, which stay 60-90 s in
    the driver's process group (blocked reporting the raylet's death to the dead GCS). The resume that takes the
    sweep over ends them and says so (found by an outside probe: they outlived the resume)."""
    sweep_dir = tmp_path / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", h.sweep_tree(data_root, epochs=2, rounds=2, num_samples=2))
    with h.started("launch", sweep_file, "--storage", tmp_path / "storage", cwd=tmp_path, env=env,
                   log_path=tmp_path / "launch.log") as proc:
        h.poll(lambda: h.ledger(sweep_dir) or proc.poll() is not None, timeout=120, what="a first round")
        assert proc.poll() is None, (tmp_path / "launch.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
        proc.wait(timeout=30)
        left = h.poll(lambda: ray_agents_in_group(proc.pid), timeout=10, what="the agents the kill left")
        assert len(left) == 2, left
        resumed = h.run_cli("resume", sweep_dir, cwd=tmp_path, env=env, timeout=240)
        assert resumed.returncode == 0, resumed.explain()
        assert "# ended 2 processes of its Ray instance that outlived it" in resumed.stdout, resumed.explain()
        assert ray_agents_in_group(proc.pid) == [], "an agent of the killed driver outlived the resume"

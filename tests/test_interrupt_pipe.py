"""Ctrl+C in a terminal under `lth-sweep launch ... | tee LOG`: the terminal sends SIGINT to the whole
foreground process group, so tee dies with the driver and the driver's stdout becomes a broken pipe. The
launch must still end with exit 130, print the resume command (on stderr too, so it survives the dead
pipe), and leave no Ray process of ours behind; `lth-sweep resume` then finishes the sweep.
Real Ray, Optuna, W&B offline; the Ctrl+C is a real SIGINT to the pipeline's process group."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sweep_helpers as h

from lth_sweep.sweep.launch import end_processes, process_table

NUM_SAMPLES, ROUNDS = 3, 3


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_ctrl_c_under_tee_exits_130_with_the_hint_and_leaves_no_ray(tmp_path: Path, data_root: Path,
                                                                   ray_tmp: Path) -> None:
    tree = h.sweep_tree(data_root, epochs=6, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=1,
                        sampler="random")
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", tree)
    sweep_dir = tmp_path / "storage" / "imp"
    tee_log = tmp_path / "tee.log"
    driver_rc = tmp_path / "driver.rc"  # the driver's own exit status: with pipefail, bash reports tee's
    launch = " ".join(shlex.quote(str(a)) for a in h.cli_argv("launch", sweep_file, "--storage", tmp_path / "storage"))
    script = f"set -o pipefail; {{ {launch}; echo $? > {driver_rc}; }} | tee {tee_log}"
    env = h.cli_env(ray_tmp)
    with open(tmp_path / "stderr.log", "w") as stderr:
        pipeline = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                    stderr=stderr, start_new_session=True)
    pgid = pipeline.pid
    try:
        h.poll(lambda: len(h.ledger(sweep_dir)) >= 1 or pipeline.poll() is not None, timeout=300, interval=0.1,
               what="a trial's first round")
        assert pipeline.poll() is None, "the sweep ended before Ctrl+C:\n" + tee_log.read_text()
        os.killpg(pgid, signal.SIGINT)  # what a terminal's Ctrl+C does
        pipeline.wait(timeout=120)
    finally:
        if pipeline.poll() is None:
            h.kill_group(pgid)
            pipeline.wait()
    # Ray's agents ignore SIGTERM: the driver must end the processes of the Ray session it started
    try:
        h.poll(lambda: not h.our_processes(), timeout=20, interval=0.5, what="every process of ours to exit")
        left = []
    except AssertionError:
        left = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80] for pid in h.our_processes()]
    stderr_text = (tmp_path / "stderr.log").read_text()
    returncode = driver_rc.read_text().strip() if driver_rc.exists() else "none"
    assert returncode == "130", f"driver exit {returncode}\n{stderr_text[-4000:]}"
    assert f"lth-sweep resume {sweep_dir}" in stderr_text, stderr_text[-4000:]
    assert "Traceback" not in stderr_text, stderr_text[-4000:]
    assert not left, f"left running 20 s after the driver exited: {left}"
    assert len(h.ledger(sweep_dir)) < NUM_SAMPLES * ROUNDS

    h.resume_to_the_end(sweep_dir, tmp_path, env, NUM_SAMPLES, ROUNDS)


# ------------------------------------------------------------------------------------ the last resort


IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                   "time.sleep(120)")


def start_stubborn() -> subprocess.Popen[str]:
    """A process that ignores SIGTERM, as Ray's agents do once their raylet is gone."""
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True,
                            env=h.cli_env(None))
    proc.stdout.readline()  # its SIGTERM handler is in place
    return proc


def test_end_processes_kills_what_ignores_sigterm() -> None:
    proc = start_stubborn()
    try:
        end_processes([(proc.pid, process_table()[proc.pid].started)], grace_s=0.2)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()


def test_end_processes_leaves_a_reused_pid_alone() -> None:
    proc = start_stubborn()
    try:
        end_processes([(proc.pid, "1")], grace_s=0.2)  # another start time: not the process we saw
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()

"""Ctrl+C on `lth-sweep launch`: Tune saves the experiment, the command exits within seconds with 130 and
prints the resume command, and `lth-sweep resume` finishes the sweep. Real Ray, Optuna, W&B offline."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import sweep_helpers as h

NUM_SAMPLES, ROUNDS = 3, 3


@pytest.mark.timeout(400)
def test_ctrl_c_saves_exits_and_resumes(tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    tree = h.sweep_tree(data_root, epochs=6, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=1,
                        sampler="random")
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", tree)
    sweep_dir = tmp_path / "storage" / "imp"
    env = h.cli_env(ray_tmp)
    with open(tmp_path / "launch.log", "w") as log:
        proc = subprocess.Popen(h.cli_argv("launch", sweep_file, "--storage", tmp_path / "storage"), cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        h.poll(lambda: len(h.ledger(sweep_dir)) >= 2 or proc.poll() is not None, timeout=240, interval=0.1,
               what="two rounds trained")
        assert proc.poll() is None, "the sweep ended before Ctrl+C:\n" + (tmp_path / "launch.log").read_text()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            h.kill_group(proc.pid)
            proc.wait()
    h.reap_group(proc.pid, wait=5)
    output = (tmp_path / "launch.log").read_text()
    assert returncode == 130, output[-3000:]
    assert seconds < 30, f"Ctrl+C took {seconds:.1f} s"
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

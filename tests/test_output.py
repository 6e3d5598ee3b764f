"""What `lth-sweep launch` prints: a progress line per round and our summary, not Tune's boxes; Ray's, Tune's
and Optuna's own output goes to `<sweep>/driver.log`, and `-v` brings it back to the terminal.
Real Ray, Optuna, W&B offline; the 4-trial sweep is the reference sweep that test_sweep.py checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sweep_helpers as h

from lth_sweep.sweep.launch import DRIVER_LOG

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RAY_LINE = "Started a local Ray instance"  # Ray's own line, from ray.init in the driver
NOISE = ("TensorBoard", "Tuner.restore", "token", "Trial status", "╭", "Checkpoint successfully created")
PROGRESS = re.compile(r"^\[\d+:\d\d\] trial \w+ round (\d+) \((\d+)/(\d+) done\): .*\| \d+ running, "
                      r"(\d+)/(\d+) trials done")


@pytest.fixture(scope="module")
def sweep(reference_sweep: h.Sweep) -> h.Sweep:
    return reference_sweep


def test_launch_prints_progress_and_summary_in_few_lines(sweep: h.Sweep) -> None:
    output = sweep.launch.stdout + sweep.launch.stderr
    lines = output.splitlines()
    num_samples, rounds = sweep.tree["search"]["num_samples"], sweep.tree["experiment"]["prune"]["rounds"]
    assert len(lines) < 40, output
    for word in NOISE:
        assert word not in output, f"{word!r} on the terminal:\n{output}"
    progress = [m for m in map(PROGRESS.match, sweep.launch.stdout.splitlines()) if m]
    assert len(progress) == num_samples * rounds, output  # one line per finished round
    assert {int(m.group(3)) for m in progress} == {rounds}
    assert all(int(m.group(1)) == int(m.group(2)) - 1 for m in progress)  # round r is the (r + 1)-th done
    assert int(progress[-1].group(4)) == num_samples and "best " in progress[-1].string
    assert f"{num_samples}/{num_samples} trials" in output and "best trials:" in output  # our summary
    assert sweep.launch.stdout.rstrip().endswith(f"everything is under {sweep.dir}")  # nothing of Ray's after it
    assert sweep.launch.stdout.splitlines()[-2] == (
        f"next: lth-sweep report {sweep.dir} (a page of figures); lth-sweep ticket export "
        f"{sweep.dir} --out ticket.pt (the best trial's winning ticket)"), output
    assert str(sweep.dir / DRIVER_LOG) in lines[1]


def test_ray_output_goes_to_the_driver_log(sweep: h.Sweep) -> None:
    log = (sweep.dir / DRIVER_LOG).read_text()
    assert RAY_LINE in log
    assert "Checkpoint successfully created" in log  # the workers' output, forwarded to the driver
    assert RAY_LINE not in sweep.launch.stdout + sweep.launch.stderr


def test_verbose_shows_ray_output_on_the_terminal(tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    tree = h.sweep_tree(data_root, epochs=2, rounds=2, num_samples=2, max_concurrent=2)
    sweep_file = h.write_sweep(tmp_path / "loud.yaml", tree)
    result = h.run_cli("launch", sweep_file, "--storage", tmp_path / "storage", "-v", cwd=tmp_path,
                       env=h.cli_env(ray_tmp), timeout=240)
    assert result.returncode == 0, result.explain()
    assert RAY_LINE in result.stdout + result.stderr
    assert any(PROGRESS.match(line) for line in result.stdout.splitlines()), result.explain()
    assert not (tmp_path / "storage" / "loud" / DRIVER_LOG).exists()

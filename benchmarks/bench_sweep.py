"""Sweep overhead: wall time of a whole sweep against the compute its trials report.

    python benchmarks/bench_sweep.py [--sweep sweeps/quickstart.yaml] [--set KEY=VALUE ...]

Launches the sweep (real Ray, Optuna, W&B offline) into a temporary storage folder, then compares
  wall      the `lth-sweep launch` command's wall time (Ray start-up and shutdown included)
  compute   the sum over trials and rounds of the engine's own `seconds` per round
  ideal     compute / concurrent trials (perfect packing on the machine's CPUs)
and prints the overhead ratio wall / ideal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="sweeps/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "lth_sweep.cli", "launch", args.sweep, "--storage", tmp, "--name", "bench"]
        for pair in args.overrides:
            command += ["--set", pair]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        paths = list(Path(tmp, "bench", "by_config").glob("*/engine/rounds.jsonl"))
        records = [json.loads(line) for path in paths for line in path.read_text().splitlines()]
        spec = json.loads(Path(tmp, "bench", "sweep.json").read_text())
    trials = len(paths)
    compute = sum(r["seconds"] for r in records)
    cpus = os.cpu_count() or 1
    per_trial = spec["sweep"]["resources"]["cpu"]
    concurrency = min(max(1, int(cpus // per_trial)), spec["sweep"]["search"]["num_samples"],
                      spec["sweep"]["search"]["max_concurrent"] or cpus)
    ideal = compute / concurrency
    print(f"machine: {cpu_name()}, {cpus} CPUs, Python {platform.python_version()}")
    print(f"sweep {args.sweep} {' '.join(args.overrides)}: {spec['sweep']['search']['num_samples']} trials, "
          f"{len(records)} rounds, {concurrency} concurrent trials of {per_trial} CPU")
    print(f"{'wall (launch command)':<32}{wall:8.1f} s")
    print(f"{'trial compute (sum of rounds)':<32}{compute:8.1f} s  ({trials} trial dirs)")
    print(f"{'ideal = compute / concurrency':<32}{ideal:8.1f} s")
    print(f"{'overhead ratio wall / ideal':<32}{wall / ideal:8.2f}")
    print(f"{'overhead seconds wall - ideal':<32}{wall - ideal:8.1f} s")


if __name__ == "__main__":
    main()

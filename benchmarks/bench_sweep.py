"""Sweep overhead: wall time of a whole sweep against the compute its trials report.

    python benchmarks/bench_sweep.py [--sweep sweeps/quickstart.yaml] [--set KEY=VALUE ...]

Launches the sweep (real Ray, Optuna, W&B offline) into a temporary storage folder, then compares
  wall      the `lth-sweep launch` command's wall time (Ray start-up and shutdown included)
  compute   the sum over trials and rounds of the engine's own `seconds` per round
  ideal     compute / concurrent trials (perfect packing on the machine's CPUs)
and prints the overhead ratio wall / ideal, issue 11's ratio wall / (compute / CPU cores), and where
the wall time went: start-up (launch to the first round's start), the rounds' span with its idle
slot-seconds (a slot is one concurrent trial), and the tail (last round's end to the command's exit),
from the ledger's timestamps (`rounds_trained.jsonl`: when each round was saved).
"""

from __future__ import annotations

import argparse
import itertools
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
        start, started_at = time.perf_counter(), time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        ended_at = started_at + wall
        if done.returncode != 0:
            sys.exit(f"sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        paths = list(Path(tmp, "bench", "by_config").glob("*/engine/rounds.jsonl"))
        by_hash = {path.parts[-3]: [json.loads(line) for line in path.read_text().splitlines()] for path in paths}
        records = [record for rounds in by_hash.values() for record in rounds]
        spec = json.loads(Path(tmp, "bench", "sweep.json").read_text())
        ledger = [json.loads(line) for line in Path(tmp, "bench", "rounds_trained.jsonl").read_text().splitlines()]
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
    print(f"{'ratio wall / (compute / cores)':<32}{wall / (compute / cpus):8.2f}  (issue 11: <= 1.2)")
    print_phases(by_hash, ledger, started_at, ended_at, concurrency)
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def print_phases(by_hash: dict[str, list[dict]], ledger: list[dict], started_at: float, ended_at: float,
                 slots: int) -> None:
    """Start-up, rounds span (with idle slot-seconds) and tail, from the ledger's save times."""
    seconds = {(config_hash, r["round"]): r["seconds"] for config_hash, rounds in by_hash.items() for r in rounds}
    spans = [(e["time"] - seconds[(e["config_hash"], e["round"])], e["time"]) for e in ledger]
    if not spans:
        return
    first_start, last_end = min(s for s, _ in spans), max(e for _, e in spans)
    busy = sum(e - s for s, e in spans)
    span = last_end - first_start
    by_trial: dict[str, list[tuple[float, float]]] = {}  # every round a Tune trial trained (all of a pack's configs)
    for entry, interval in zip(ledger, spans, strict=True):
        by_trial.setdefault(entry["trial_id"], []).append(interval)
    # a stacked pack's members train their rounds at once (each `seconds` is its share): no gap between those
    within = [max(0.0, later[0] - earlier[1]) for rounds in map(sorted, by_trial.values())
              for earlier, later in itertools.pairwise(rounds)]
    idle = slots * span - busy
    print(f"{'start-up (to 1st round start)':<32}{first_start - started_at:8.1f} s")
    print(f"{'rounds span':<32}{span:8.1f} s  ({slots} slots x span - round seconds = {idle:.1f} idle slot-s)")
    if within:
        print(f"{'  between rounds of a trial':<32}{sum(within):8.1f} slot-s  ({len(within)} gaps, "
              f"mean {1000 * sum(within) / len(within):.0f} ms)")
        print(f"{'  between trials, and ends':<32}{idle - sum(within):8.1f} slot-s")
    print(f"{'tail (last round end to exit)':<32}{ended_at - last_end:8.1f} s")


if __name__ == "__main__":
    main()

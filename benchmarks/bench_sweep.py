"""Sweep overhead: wall time of a whole sweep against the compute its trials report.

    python benchmarks/bench_sweep.py [--sweep sweeps/quickstart.yaml] [--set KEY=VALUE ...]

Launches the sweep (real Ray, Optuna, W&B offline) into a temporary storage folder, then compares
  wall      the `lth-sweep launch` command's wall time (Ray start-up and shutdown included)
  compute   the sum over trials and rounds of the engine's own `seconds` per round
  ideal     compute / concurrent trials (perfect packing on the machine's CPUs)
and prints the overhead ratio wall / ideal, issue 11's ratio wall / (compute / CPU cores), and where
the wall time went: start-up (launch to the first round's start), the rounds' span with its idle
slot-seconds (a slot is one concurrent trial), and the tail (last round's end to the command's exit),
from the ledger's timestamps (`rounds_trained.jsonl`: when each round was saved); last, the CPU seconds of
every process of the launch by kind (driver, Ray's daemons, trial workers, W&B's service; from /proc), how
busy they kept the cores, and the CPU seconds outside the rounds: on a CPU-bound launch, the wall time only
falls with those.
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
import threading
import time
from pathlib import Path

from lth_sweep.sweep.launch import process_table
from lth_sweep.sweep.packing import tune_trial_of


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
        launch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = CpuSampler(launch.pid)
        sampler.start()
        stdout, stderr = launch.communicate()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        ended_at = started_at + wall
        if launch.returncode != 0:
            sys.exit(f"sweep failed ({launch.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
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
    print_cpu(sampler.by_kind(), compute, wall, cpus)
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
        by_trial.setdefault(tune_trial_of(entry["trial_id"]), []).append(interval)  # a pack's lines name members
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


PROCESS_KINDS = (  # (kind, what the start of its command line holds), first match wins; Ray's own processes rename
    # themselves (ray::IDLE, ray::ImplicitFunc.train, ray::DashboardAgent) and the raylet's arguments name
    # default_worker.py, so only the program and its script are looked at
    ("Ray's daemons", ("gcs_server", "/raylet", "monitor.py", "dashboard", "agent", "Agent")),
    ("trial workers", ("default_worker.py", "setup_worker.py", "ray::")),
    ("W&B's service", ("wandb-core",)),
)


def process_kind(cmdline: str) -> str:
    words = cmdline.split()
    head = " ".join(words[:1] + [word for word in words[1:] if not word.startswith("-")][:1])  # program, script
    return next((kind for kind, marks in PROCESS_KINDS if any(mark in head for mark in marks)), "other")


class CpuSampler(threading.Thread):
    """CPU seconds (user + system) of the launch command and every process descended from it, read from /proc
    every 0.1 s (what a process spends after its last sample before it exits is missed)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.cpu: dict[int, float] = {}
        self.kind: dict[int, str] = {root: "driver"}
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.1)

    def sample(self) -> None:
        table = process_table()
        grew = True
        while grew:  # a process once seen stays ours, also once its parent has exited and it is reparented
            new = {pid for pid, info in table.items() if info.parent in self.kind and pid not in self.kind}
            for pid in new:
                self.kind[pid] = "other"
            grew = bool(new)
        for pid in self.kind.keys() & table.keys():
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), table[pid].cpu_ticks / self.tick)
            if self.kind[pid] == "other":  # seen before its exec (an empty command line), or not known yet
                self.kind[pid] = process_kind(table[pid].cmdline)

    def by_kind(self) -> dict[str, tuple[int, float]]:
        totals: dict[str, tuple[int, float]] = {}
        for pid, cpu in self.cpu.items():
            count, seconds = totals.get(self.kind[pid], (0, 0.0))
            totals[self.kind[pid]] = (count + 1, seconds + cpu)
        return totals


def print_cpu(by_kind: dict[str, tuple[int, float]], compute: float, wall: float, cpus: int) -> None:
    """CPU seconds by kind of process; the run is CPU-bound when they fill the cores for the whole wall time, and
    then only less CPU work outside the rounds brings the wall time down."""
    total = sum(seconds for _, seconds in by_kind.values())
    print("CPU seconds, every process of the launch (from /proc):")
    for kind in ("driver", *(kind for kind, _ in PROCESS_KINDS), "other"):
        if kind in by_kind:
            count, seconds = by_kind[kind]
            print(f"{'  ' + kind:<32}{seconds:8.1f} s  ({count} process{'es' if count > 1 else ''})")
    print(f"{'  all':<32}{total:8.1f} s  = {100 * total / (cpus * wall):.0f}% of {cpus} cores over the wall time")
    print(f"{'  not in rounds (all - compute)':<32}{total - compute:8.1f} s  "
          f"(at {cpus} cores: {(total - compute) / cpus:.1f} s of wall at the least)")


if __name__ == "__main__":
    main()

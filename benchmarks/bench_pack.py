#!/usr/bin/env python
"""Sweep throughput, configs x rounds per hour: K different configs packed in one trial against one per trial.

    python benchmarks/bench_pack.py [--device cpu|cuda] [--models lenet_300_100 conv4 resnet20] [--ks 1 4 16 64]
                                    [--rounds R] [--iterations N] [--json OUT.json]

For each model and K, K configs that differ as an Optuna sweep's suggestions do (learning rate, prune rate,
rewind iteration, seed), each trained for R IMP rounds of N iterations, run on the same machine in one run:
  alone   each config as its own `Trial(config, dir, data=...)`, one after another (one config per trial)
  packed  `Pack([Trial(...) for each config]).run()` (the K configs as one stacked population; on a CPU by
          default member after member, `runtime.pack_stacking: auto`; `--stacking stacked` forces the stack)
Both write their trial directories (state.pt, rewind.pt, rounds.jsonl) into a temporary folder, deleted after.
The timed region is the whole `run()` of every trial: building the trainer every phase, the steps, CUDA-graph
capture (on CUDA, once per phase, as in a sweep), evaluation every `eval_every` iterations, pruning and saving
state; it is what a sweep pays per round. Data is synthetic, in memory, on the device, built before timing.
Per-process first-use costs (CUDA context, cuDNN autotuning of each shape, kernel loading) are paid in an
untimed warm-up of both sides (one short round alone and packed at each K) before the timed runs.

Workloads (paper settings; synthetic data of the real size):
  lenet_300_100  784 inputs, 10 classes, batch 60, Adam 1.2e-3, layerwise fc 20% / output 10%
  conv4          3x32x32, batch 60, Adam 3e-4, conv 10% / fc 20% / output 10%, no augmentation
  resnet20       3x32x32, batch 128, SGD 0.1 momentum 0.9 wd 1e-4, crop + flip, global 20%, output not pruned
Needs only torch, numpy, pydantic and PyYAML (no Ray, W&B, Optuna, mnist1d or torchvision).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import OtherCpuUse, device_info  # noqa: E402
from gpu_checks import WORKLOADS, synthetic  # noqa: E402

from lth_sweep.config import ExperimentConfig, build_experiment  # noqa: E402
from lth_sweep.engine.data import DatasetSplits  # noqa: E402
from lth_sweep.engine.lottery import Trial  # noqa: E402
from lth_sweep.engine.pack import Pack, split_packs  # noqa: E402

MODELS = ("lenet_300_100", "conv4", "resnet20")
# training examples of the real dataset less its 5,000 validation images (the steps per epoch of a real sweep)
TRAIN_EXAMPLES = {"lenet_300_100": 55_000, "conv4": 45_000, "resnet20": 45_000}
PRUNE = {"lenet_300_100": {"strategy": "layerwise", "rate": 0.2},  # output rate: rate / 2
         "conv4": {"strategy": "layerwise", "rate": 0.2, "conv_rate": 0.1, "output_rate": 0.1},
         "resnet20": {"strategy": "global", "rate": 0.2, "output_rate": 0.0}}
# (K values, rounds, iterations per round) by device and model: the CPU defaults finish in a few minutes on 2 cores
DEFAULTS = {
    "cuda": {"lenet_300_100": ([1, 4, 16, 64], 3, 1000), "conv4": ([1, 4, 16, 64], 3, 300),
             "resnet20": ([1, 4, 16, 64], 3, 200)},
    "cpu": {"lenet_300_100": ([1, 2, 4], 3, 200), "conv4": ([1, 2, 4], 2, 4), "resnet20": ([1, 2, 4], 2, 4)},
}
# validation (and test) examples: the real 5,000 on a GPU; few on a CPU, where rounds are a few iterations long
# (there evaluation is still ~40% of a Conv-4 round, against ~20% for 5,000 examples every 100 iterations)
EVAL_EXAMPLES = {"cuda": 5000, "cpu": 128}


@dataclass
class Row:
    model: str
    k: int
    rounds: int
    iterations: int
    alone_s: float = math.nan  # median wall time of the K trials one after another
    packed_s: float = math.nan  # median wall time of the pack
    alone_per_h: float = math.nan  # configs x rounds per hour
    packed_per_h: float = math.nan
    ratio: float = math.nan  # packed over alone
    alone_runs: list[float] = field(default_factory=list)
    packed_runs: list[float] = field(default_factory=list)
    max_train_loss_diff: float = math.nan  # last round, packed vs alone (rounding only; a sanity check)
    densities_agree: bool | None = None
    note: str = ""


def suggestions(model: str, count: int, iterations: int, device: str, threads: int,
                rounds: int, eval_every: int, seed: int = 0, stacking: str = "auto") -> list[ExperimentConfig]:
    """`count` configs that differ as a sweep's suggestions do: lr log-uniform in [base/2, 2 base], prune rate
    in [0.1, 0.3], rewind iteration in [0, N/10], seed. The first k of them are the pack of size k."""
    raw = WORKLOADS[model][0]
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        base_lr = raw["train"]["lr"]
        config = {**raw, "device": device, "seed": rng.randrange(10 ** 6),
                  "train": {**raw["train"], "lr": base_lr * 2 ** rng.uniform(-1, 1), "iterations": iterations,
                            "eval_every": eval_every},
                  "prune": {**PRUNE[model], "rate": round(rng.uniform(0.1, 0.3), 4), "rounds": rounds},
                  "rewind": {"iteration": rng.randint(0, iterations // 10)},
                  "runtime": {"threads": threads, "pack_stacking": stacking}}
        configs.append(build_experiment(config))
    return configs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_alone(configs: list[ExperimentConfig], data: DatasetSplits, root: Path) -> tuple[float, list[list[dict]]]:
    """Each config as its own trial, one after another: wall seconds and every trial's records."""
    sync(data.train_x.device)
    start = time.perf_counter()
    records = [Trial(c, root / f"alone{k}", data=data).run() for k, c in enumerate(configs)]
    sync(data.train_x.device)
    return time.perf_counter() - start, records


def run_packed(configs: list[ExperimentConfig], data: DatasetSplits, root: Path) -> tuple[float, list[list[dict]]]:
    """The configs as one pack: wall seconds and every member's records."""
    sync(data.train_x.device)
    start = time.perf_counter()
    records = Pack([Trial(c, root / f"packed{k}", data=data) for k, c in enumerate(configs)]).run()
    sync(data.train_x.device)
    return time.perf_counter() - start, records


def compare(alone: list[list[dict]], packed: list[list[dict]]) -> tuple[float, bool]:
    """Largest |train_loss| difference in the last round, and whether every round's density agrees."""
    diff = max(abs(a[-1]["train_loss"] - p[-1]["train_loss"]) for a, p in zip(alone, packed, strict=True))
    densities = all(math.isclose(ra["density"], rp["density"], rel_tol=1e-6)
                    for a, p in zip(alone, packed, strict=True) for ra, rp in zip(a, p, strict=True))
    return diff, densities


def measure_model(model: str, ks: list[int], rounds: int, iterations: int, args: argparse.Namespace,
                  device: torch.device, on_row: Callable[[Row], None]) -> None:
    """Every K of one model, each row handed to `on_row` as soon as it is measured."""
    raw, shape, _ = WORKLOADS[model]
    eval_every = args.eval_every or min(100, iterations)
    configs = suggestions(model, max(ks), iterations, device.type, args.threads, rounds, eval_every,
                          stacking=args.stacking)
    assert len(split_packs(configs, max(ks))) == 1, "the suggestions must fit one pack"
    augment = bool(configs[0].dataset.augment)
    data = synthetic(shape, TRAIN_EXAMPLES[model], augment, device, n_eval=args.eval_examples)
    warm = suggestions(model, max(ks), args.warmup_iterations, device.type, args.threads, 1,
                       args.warmup_iterations, seed=1, stacking=args.stacking)
    print(f"\n{model}: {rounds} rounds x {iterations} iterations per config, batch {configs[0].train.batch_size}, "
          f"eval every {eval_every} on {args.eval_examples} examples; {TRAIN_EXAMPLES[model]} training examples "
          f"({len(data.train_x) // configs[0].train.batch_size} steps/epoch)", flush=True)
    print(f"  {'K':>3} {'alone s':>9} {'packed s':>9} {'alone cfg*rd/h':>15} {'packed cfg*rd/h':>16} "
          f"{'packed/alone':>13}  {'max dloss':>9}  note", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        root = Path(tmp)
        for k in ks:
            row = Row(model, k, rounds, iterations)
            try:
                # untimed: first use of each shape (cuDNN autotuning, kernel loading, CUDA context)
                run_alone(warm[:1], data, root / f"warm_alone_{k}")
                run_packed(warm[:k], data, root / f"warm_packed_{k}")
                for repeat in range(args.repeats):  # alternate which side goes first
                    order = ("alone", "packed") if repeat % 2 == 0 else ("packed", "alone")
                    results = {}
                    for side in order:
                        where = root / f"{side}_{k}_{repeat}"
                        fn = run_alone if side == "alone" else run_packed
                        seconds, results[side] = fn(configs[:k], data, where)
                        (row.alone_runs if side == "alone" else row.packed_runs).append(seconds)
                        shutil.rmtree(where, ignore_errors=True)
                    row.max_train_loss_diff, row.densities_agree = compare(results["alone"], results["packed"])
                row.alone_s, row.packed_s = statistics.median(row.alone_runs), statistics.median(row.packed_runs)
                row.alone_per_h = 3600 * k * rounds / row.alone_s
                row.packed_per_h = 3600 * k * rounds / row.packed_s
                row.ratio = row.packed_per_h / row.alone_per_h
                if not row.densities_agree:
                    row.note = "densities differ between packed and alone"
            except Exception as err:  # noqa: BLE001 - one failed row (out of memory) does not stop the others
                row.note = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for path in root.glob("warm_*"):
                shutil.rmtree(path, ignore_errors=True)
            print(fmt_row(row), flush=True)
            on_row(row)
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt_row(r: Row) -> str:
    if not math.isfinite(r.ratio):
        return f"  {r.k:>3} {'-':>9} {'-':>9} {'-':>15} {'-':>16} {'-':>13}  {'-':>9}  {r.note}"
    return (f"  {r.k:>3} {r.alone_s:>9.2f} {r.packed_s:>9.2f} {r.alone_per_h:>15.0f} {r.packed_per_h:>16.0f} "
            f"{r.ratio:>12.2f}x  {r.max_train_loss_diff:>9.1e}  {r.note}")


def targets(rows: list[Row], device: torch.device) -> list[dict[str, str]]:
    """The issue's targets that apply to the measured rows: PASS/MISS with the numbers."""
    out = []

    def add(target: str, passed: bool, detail: str) -> None:
        out.append({"target": target, "status": "PASS" if passed else "MISS", "detail": detail})

    measured = [r for r in rows if math.isfinite(r.ratio)]
    if device.type == "cuda":
        for r in measured:
            if r.model == "lenet_300_100" and r.k == 64:
                add("LeNet-300-100 K=64 packed >= 10x one config per trial", r.ratio >= 10, f"{r.ratio:.2f}x")
        resnet = [r for r in measured if r.model == "resnet20" and r.k > 1]
        if resnet:
            worst = min(resnet, key=lambda r: r.ratio)
            add("ResNet-20 packed no slower than one config per trial (every K > 1)", worst.ratio >= 1,
                f"worst K={worst.k}: {worst.ratio:.2f}x")
    else:
        for r in measured:
            if r.k > 1:
                add(f"CPU {r.model} K={r.k}: packed no slower than one config per trial", r.ratio >= 1,
                    f"{r.ratio:.2f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--ks", type=int, nargs="+", help="pack sizes (default: 1 4 16 64 on cuda, 1 2 4 on cpu)")
    parser.add_argument("--rounds", type=int, help="IMP rounds per config, the dense one included (default by model)")
    parser.add_argument("--iterations", type=int, help="iterations per round (default by model and device)")
    parser.add_argument("--eval-every", type=int, help="iterations between evaluations (default 100, at most "
                                                       "once per round)")
    parser.add_argument("--eval-examples", type=int, help="validation and test examples (default 5000 on cuda, "
                                                          "256 on cpu)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side and row (median; alternating "
                                                               "which side goes first)")
    parser.add_argument("--warmup-iterations", type=int, default=None,
                        help="iterations of the untimed warm-up round (default 20 on cuda, 2 on cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (runtime.threads; default 1)")
    parser.add_argument("--stacking", choices=("auto", "stacked", "sequential"), default="auto",
                        help="runtime.pack_stacking of the packed side (auto: stacked on cuda, sequential on cpu)")
    parser.add_argument("--json", help="also write rows, targets and the machine to this file (after every row)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    args.eval_examples = args.eval_examples or EVAL_EXAMPLES[device.type]
    args.warmup_iterations = args.warmup_iterations or (20 if device.type == "cuda" else 2)
    torch.set_num_threads(args.threads)
    info = device_info(device)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    print(f"lth-sweep packing benchmark  {when}")
    print(f"device: {info['name']}" + (f"  (host CPU: {info['cpu']}, {info['cpu_cores']} cores)"
                                        if device.type == "cuda" else ""))
    print(f"torch {info['torch']}, python {info['python']}, torch threads {args.threads}; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} on {os.cpu_count()} cores")
    other_cpu = OtherCpuUse()
    started = time.perf_counter()
    rows: list[Row] = []

    def write_json(final: bool) -> None:
        if not args.json:
            return
        payload = {"date": when, "argv": sys.argv, "device": info, "stacking": args.stacking,
                   "load_average_before": load_before,
                   "load_average_now": os.getloadavg(), "other_cpu_share": other_cpu.share(), "finished": final,
                   "eval_examples": args.eval_examples, "repeats": args.repeats,
                   "warmup_iterations": args.warmup_iterations, "rows": [asdict(r) for r in rows],
                   "targets": targets(rows, device), "seconds": time.perf_counter() - started}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")

    def on_row(row: Row) -> None:
        rows.append(row)
        write_json(False)  # a run cut short (a timeout) still leaves the rows measured so far

    for model in args.models:
        ks, rounds, iterations = DEFAULTS[device.type][model]
        measure_model(model, args.ks or ks, args.rounds or rounds, args.iterations or iterations, args, device,
                      on_row)
    results = targets(rows, device)
    print("\ntargets:" + ("" if results else " none apply to this selection"))
    for t in results:
        print(f"  {t['status']:<4}  {t['target']}: {t['detail']}")
    print(f"\ntotal {time.perf_counter() - started:.1f} s; load average now {os.getloadavg()[0]:.2f}")
    others = other_cpu.share()
    if others is not None:
        print(f"other processes used {100 * others:.0f}% of the {os.cpu_count()} CPUs during the run"
              + (" -- the machine was shared: timings are low and noisy" if others > 0.1 else ""))
    write_json(True)
    if args.json:
        print(f"wrote {args.json}")
    return 1 if any(r.note.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

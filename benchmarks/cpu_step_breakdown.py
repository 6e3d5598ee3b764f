#!/usr/bin/env python
"""Where one LeNet-300-100 training step (batch 60) spends its time on the CPU: engine vs reference.

    python benchmarks/cpu_step_breakdown.py [--threads N] [--blocks 5] [--steps 40]

The engine's phases are timed by re-running the body of `PhaseTrainer._forward_backward` (copied
here with timers between its parts), so this file must follow that method if it changes. Also times
`sqrt` on a tensor that is half zeros (the Adam second moment of a 50%-dense layer, which
torch.optim.Adam's CPU path takes the square root of every step) against one without zeros.
Each number is the median over blocks of the mean per step in a block, in microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine as bench  # noqa: E402


def median_us(fn: Callable[[], None], blocks: int, n: int) -> float:
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def engine_phases(engine, data, k: int, dense: bool, blocks: int, steps: int) -> dict[str, float]:
    w = bench.LENET
    config = engine.build_experiment(w.experiment, {"replicates": k, "train.iterations": 1000})
    pop = engine.Population.initialize(lambda: engine.build_model(config.model, w.train_shape, 10), list(range(k)),
                                       torch.device("cpu"))
    masks = bench.half_masks(engine, pop)
    if dense:
        masks = {n: torch.ones_like(m) for n, m in masks.items()}
    pop.apply_masks(masks)
    tr = engine.PhaseTrainer(config, data, pop, masks, list(range(k)))
    order = tr.epoch_order(0)[0]
    acc: dict[str, list[float]] = defaultdict(list)

    def step(self, t: dict[str, float]) -> None:  # PhaseTrainer._forward_backward, timed (no augmentation)
        t0 = time.perf_counter()
        kk, b = self.static_idx.shape
        x, y = self.data.train_x[self.static_idx], self.data.train_y[self.static_idx]
        t1 = time.perf_counter()
        logits = self.pop(x).float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(kk, b).mean(1)
        t2 = time.perf_counter()
        grads = [g.contiguous() for g in torch.autograd.grad(loss.sum(), list(self.pop.params.values()))]
        t3 = time.perf_counter()
        grad_of = dict(zip(self.pop.params, grads, strict=True))
        torch._foreach_mul_([grad_of[n] for n in self.mask_names], self.masks)
        t4 = time.perf_counter()
        self.optimizer.step(grads)
        t5 = time.perf_counter()
        with torch.no_grad():
            torch._foreach_mul_(self.masked_params, self.masks)
        self.loss_sum += loss.detach()
        t6 = time.perf_counter()
        for name, a, z in (("gather", t0, t1), ("forward+loss", t1, t2), ("backward", t2, t3),
                           ("mask grads", t3, t4), ("optimizer", t4, t5), ("mask weights", t5, t6)):
            t[name] += z - a

    pos = 0
    for _ in range(10):
        tr.static_idx.copy_(order[pos])
        tr.step()
        pos += 1
    for _ in range(blocks):
        t: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        for _ in range(steps):
            tr.static_idx.copy_(order[pos % len(order)])
            step(tr, t)
            pos += 1
        t["total"] = time.perf_counter() - start
        for name, v in t.items():
            acc[name].append(v / steps * 1e6)
    return {name: statistics.median(v) for name, v in acc.items()}


def reference_phases(engine, cpu, blocks: int, steps: int) -> dict[str, float]:
    runner = bench.ReferenceRunner(engine, bench.LENET, cpu, torch.device("cpu"), 0)
    runner.warm(10)
    model, opt, crit = runner.model, runner.optimizer, runner.criterion
    acc: dict[str, list[float]] = defaultdict(list)
    for _ in range(blocks):
        t: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            try:
                xb, yb = next(runner.batches)
            except StopIteration:
                runner.batches = iter(runner.loader)
                xb, yb = next(runner.batches)
            t1 = time.perf_counter()
            loss = crit(model(xb), yb)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            opt.zero_grad()
            t4 = time.perf_counter()
            loss.item()
            t5 = time.perf_counter()
            for name, a, z in (("DataLoader next()", t0, t1), ("forward+loss (prune hooks)", t1, t2),
                               ("backward", t2, t3), ("torch.optim.Adam step+zero_grad", t3, t4),
                               ("loss.item()", t4, t5)):
                t[name] += z - a
        t["total"] = time.perf_counter() - start
        for name, v in t.items():
            acc[name].append(v / steps * 1e6)
    return {name: statistics.median(v) for name, v in acc.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = bench.import_engine()
    info = bench.device_info(torch.device("cpu"))
    print(f"{info['name']}; torch {info['torch']}; {torch.get_num_threads()} thread(s); "
          f"LeNet-300-100 batch 60, masks at density {bench.DENSITY}")
    other_cpu = bench.OtherCpuUse()
    cpu = bench.synthetic_data(bench.LENET)
    data = bench.device_splits(engine, bench.LENET, cpu, torch.device("cpu"))

    print("\nreference step (us):")
    for name, v in reference_phases(engine, cpu, args.blocks, args.steps).items():
        print(f"  {name:<34} {v:>9.0f}")
    for k, dense in ((1, False), (1, True), (8, False), (8, True)):
        steps = args.steps if k == 1 else max(5, args.steps // 4)
        print(f"\nengine step, K={k}, {'dense (all-ones masks)' if dense else '50% density'} (us):")
        for name, v in engine_phases(engine, data, k, dense, args.blocks, steps).items():
            print(f"  {name:<34} {v:>9.0f}")

    n = 300 * 784
    nonzero = torch.rand(n) * 1e-6 + 1e-9
    half_zero = nonzero * (torch.rand(n) < 0.5)
    print(f"\nsqrt of {n} floats, as in torch.optim.Adam's CPU step (us): "
          f"no zeros {median_us(nonzero.sqrt, args.blocks, 50):.0f}, "
          f"half zeros {median_us(half_zero.sqrt, args.blocks, 50):.0f}, "
          f"all zeros {median_us(torch.zeros(n).sqrt, args.blocks, 50):.0f}")
    others = other_cpu.share()
    if others is not None:
        print(f"other processes used {100 * others:.0f}% of the {os.cpu_count()} CPUs during the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())

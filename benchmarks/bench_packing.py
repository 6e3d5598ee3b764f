"""Packing trials on one GPU: aggregate throughput of P processes sharing the GPU, as Ray runs P trials
with `resources.gpu: 1/P`. Needs only torch (and pydantic, PyYAML for the config schema).

    python benchmarks/bench_packing.py [--procs 1 2 4 8] [--steps 600] [--models lenet_300_100 resnet20 conv4]

Each process trains one model (K = 1, graphed step on CUDA) on synthetic data; all start timing
together (a barrier), and the row reports the sum of their model-epochs per second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS_PER_EPOCH = {"lenet_300_100": 60000 // 60, "resnet20": 50000 // 128, "conv4": 50000 // 60}


def worker(model: str, steps: int, barrier, results, device_name: str, threads: int) -> None:
    from gpu_checks import WORKLOADS, half_masks, synthetic

    from lth_sweep.config import build_experiment
    from lth_sweep.engine.models import build_model
    from lth_sweep.engine.population import Population
    from lth_sweep.engine.train import EarlyStop, PhaseTrainer

    device = torch.device(device_name)
    torch.set_num_threads(threads)  # on a CPU, as a trial does (runtime.threads)
    raw, shape, n = WORKLOADS[model]
    warmup = 20
    config = build_experiment({**raw, "train": {**raw["train"], "iterations": warmup + steps,
                                                "eval_every": 10 * (warmup + steps)}, "device": device.type})
    data = synthetic(shape, n, bool(config.dataset.augment), device)
    pop = Population.initialize(lambda: build_model(config.model, shape, 10), [0], device)
    masks = half_masks(pop, [0])
    pop.apply_masks(masks)
    trainer = PhaseTrainer(config, data, pop, masks, [0])
    trainer.total = warmup
    trainer.run(0, EarlyStop.fresh(1), on_epoch_end=lambda *_: None)
    trainer.total = warmup + steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    barrier.wait()
    start = time.perf_counter()
    trainer.track = lambda iteration, early_stop: None  # no evaluation inside the timed region
    trainer.run(warmup, EarlyStop.fresh(1), on_epoch_end=lambda *_: None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    results.put(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--models", nargs="+", default=["lenet_300_100", "resnet20"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1, as a trial)")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}; {args.steps} timed steps per process")
    print(f"{'model':<16}{'procs':>6}{'s/epoch each':>14}{'model-ep/s total':>18}{'vs 1 proc':>11}")
    ctx = mp.get_context("spawn")
    for model in args.models:
        base = None
        for procs in args.procs:
            barrier, results = ctx.Barrier(procs), ctx.Queue()
            workers = [ctx.Process(target=worker, args=(model, args.steps, barrier, results, args.device,
                                                                  args.threads))
                       for _ in range(procs)]
            for w in workers:
                w.start()
            seconds = [results.get(timeout=600) for _ in workers]
            for w in workers:
                w.join()
            epoch_s = statistics.fmean(seconds) / args.steps * STEPS_PER_EPOCH[model]
            total = sum(args.steps / STEPS_PER_EPOCH[model] / s for s in seconds)
            base = base or total
            print(f"{model:<16}{procs:>6}{epoch_s:>14.3f}{total:>18.2f}{total / base:>10.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Correctness of the CUDA paths, on a GPU machine with only torch (no Ray, Optuna or W&B).

    python benchmarks/gpu_checks.py [--cpu]

For LeNet-300-100 (Adam) and ResNet-20 (SGD + momentum, augmentation, bf16) on synthetic data at 50%
density, from identical initial weights:
  graph vs eager   whole-step CUDA graph against the eager step, K = 1 and K = 4
  stack vs alone   K = 4 stacked replicates against each replicate trained alone (graphed)
  masks            pruned weights are still exactly zero after training
  pack vs alone    4 different configs (lr, prune rate, rewind point, seed) as one stacked pack through 2 IMP
                   rounds against each alone: train_loss difference and densities
Runs in fp32 without TF32 and with deterministic cuDNN algorithms, so differences are rounding only:
prints the largest absolute weight difference per check (bf16 autocast, which applies to one model only,
is off so stacked and alone compare like with like). Few steps: SGD at lr 0.1 on random labels amplifies
any rounding difference chaotically (ResNet-20 is shown after 1 and after 5 steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lth_sweep.config import build_experiment  # noqa: E402
from lth_sweep.engine import pruning  # noqa: E402
from lth_sweep.engine.data import DatasetSplits  # noqa: E402
from lth_sweep.engine.models import build_model  # noqa: E402
from lth_sweep.engine.population import Population  # noqa: E402
from lth_sweep.engine.train import EarlyStop, PhaseTrainer  # noqa: E402

WORKLOADS = {
    "lenet_300_100": ({"dataset": {"name": "mnist"}, "model": {"name": "lenet_300_100"},
                       "train": {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60}}, (784,), 6000),
    "resnet20": ({"dataset": {"name": "cifar10", "augment": True}, "model": {"name": "resnet20"},
                  "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                            "batch_size": 128}}, (3, 32, 32), 5120),
    "conv4": ({"dataset": {"name": "cifar10", "augment": False}, "model": {"name": "conv4"},
               "train": {"optimizer": "adam", "lr": 3e-4, "batch_size": 60}}, (3, 32, 32), 6000),
}


def synthetic(shape: tuple[int, ...], n: int, augment: bool, device: torch.device,
              n_eval: int = 512) -> DatasetSplits:
    """n random training examples with 10 classes; validation and test are their first `n_eval`."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    return DatasetSplits("synthetic", x, y, x[:n_eval], y[:n_eval], x[:n_eval], y[:n_eval], shape, 10, augment)


def half_masks(pop: Population, seeds: list[int]) -> pruning.Masks:
    """Random 50% masks, drawn per replicate from its own seed (so K=4 and K=1 runs get the same ones)."""
    per_seed = []
    for seed in seeds:
        one = {k: v[:1] for k, v in pruning.full_masks(pop.prunable()).items()}
        half = pruning.prune_layerwise({k: torch.ones_like(v, dtype=torch.float) for k, v in one.items()},
                                       one, {k: 0.5 for k in one})
        per_seed.append(pruning.random_masks_like(half, torch.Generator().manual_seed(100 + seed)))
    return {k: torch.cat([m[k] for m in per_seed]) for k in per_seed[0]}


def train(name: str, seeds: list[int], steps: int, graph: bool, device: torch.device,
          ) -> tuple[Population, pruning.Masks]:
    raw, shape, n = WORKLOADS[name]
    config = build_experiment({**raw, "train": {**raw["train"], "iterations": steps, "eval_every": 10 * steps},
                               "runtime": {"cuda_graph": graph, "tf32": False, "bf16": False, "deterministic": True},
                               "device": device.type})
    data = synthetic(shape, n, bool(config.dataset.augment), device)
    pop = Population.initialize(lambda: build_model(config.model, shape, 10), seeds, device)
    masks = half_masks(pop, seeds)
    pop.apply_masks(masks)
    trainer = PhaseTrainer(config, data, pop, masks, seeds)
    trainer.run(0, EarlyStop.fresh(len(seeds)), on_epoch_end=lambda *_: None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"  {name} K={len(seeds)} graph={graph}: captured={trainer.graph is not None}", flush=True)
    return pop, masks


def pack_vs_alone(name: str, steps: int, device: torch.device) -> tuple[float, bool]:
    """Four configs that differ in lr, prune rate, rewind point (rows that start late) and seed, 2 IMP rounds of
    `steps` iterations, as one stacked (graphed) pack against each alone: the largest |train_loss| difference of
    any round, and whether every round's density agrees."""
    import tempfile
    from pathlib import Path

    from lth_sweep.engine.lottery import Trial
    from lth_sweep.engine.pack import Pack

    raw, shape, n = WORKLOADS[name]
    configs = [build_experiment({**raw, "seed": k, "device": device.type,
                                 "train": {**raw["train"], "lr": raw["train"]["lr"] * (1 + k / 4), "iterations": steps,
                                           "eval_every": steps},
                                 "prune": {"rate": 0.2 + 0.05 * k, "rounds": 2}, "rewind": {"iteration": 2 * k},
                                 "runtime": {"tf32": False, "bf16": False, "deterministic": True,
                                             "pack_stacking": "stacked"}}) for k in range(4)]
    data = synthetic(shape, n, bool(configs[0].dataset.augment), device)
    with tempfile.TemporaryDirectory() as tmp:
        alone = [Trial(c, Path(tmp) / f"a{k}", data=data).run() for k, c in enumerate(configs)]
        packed = Pack([Trial(c, Path(tmp) / f"p{k}", data=data) for k, c in enumerate(configs)]).run()
    diff = max(abs(a["train_loss"] - p["train_loss"]) for ra, rp in zip(alone, packed, strict=True)
               for a, p in zip(ra, rp, strict=True))
    same_density = all(a["density"] == p["density"] for ra, rp in zip(alone, packed, strict=True)
                       for a, p in zip(ra, rp, strict=True))
    return diff, same_density


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].detach().float() - b[k].detach().float()).abs().max()) for k in a)


def main() -> None:
    cuda = torch.cuda.is_available() and "--cpu" not in sys.argv
    device = torch.device("cuda" if cuda else "cpu")
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (graph rows compare eager with eager)'}, "
          f"torch {torch.__version__}")
    rows = []
    workloads = (("lenet_300_100", 100), ("resnet20", 1), ("resnet20", 5)) if cuda else (("lenet_300_100", 30),
                                                                                         ("resnet20", 1))
    for name, steps in workloads:
        eager1, _ = train(name, [0], steps, False, device)
        graph1, _ = train(name, [0], steps, cuda, device)
        label = f"{name} x{steps}"
        rows.append((label, "graph vs eager, K=1", max_diff(graph1.params, eager1.params)))
        eager4, _ = train(name, [0, 1, 2, 3], steps, False, device)
        graph4, masks4 = train(name, [0, 1, 2, 3], steps, cuda, device)
        rows.append((label, "graph vs eager, K=4", max_diff(graph4.params, eager4.params)))
        alone = [train(name, [s], steps, cuda, device)[0] for s in range(4)]
        stacked_vs_alone = max(max_diff({k: v[s:s + 1] for k, v in graph4.params.items()}, alone[s].params)
                               for s in range(4))
        rows.append((label, "stack K=4 vs alone", stacked_vs_alone))
        leaked = max(float((graph4.params[k].detach() * (~m)).abs().max()) for k, m in masks4.items())
        rows.append((label, "pruned weights after training", leaked))
    for name, steps in (("lenet_300_100", 100), ("resnet20", 5)) if cuda else (("lenet_300_100", 20),):
        diff, same_density = pack_vs_alone(name, steps, device)
        rows.append((f"{name} x{steps} x2 rounds", "pack of 4 configs vs alone (loss)", diff))
        rows.append((f"{name} x{steps} x2 rounds", "pack: densities differ (0 = no)", float(not same_density)))
    print(f"{'model x steps':<28}{'check':<36}{'max |diff|':>12}")
    for label, check, value in rows:
        print(f"{label:<28}{check:<36}{value:>12.3e}")


if __name__ == "__main__":
    main()

"""Stacked replicates train exactly like separate models, for every model in the zoo (CPU, real torch).

K = 2 replicates trained as one stack for a few steps must end with the same weights and BatchNorm
statistics as each replicate trained alone from its own seed, with its own masks and data order.
In float64, so the comparison is of the arithmetic, not of float32 rounding: batched and single
kernels round differently, and SGD with BatchNorm on tiny random batches amplifies that ~1000x per
step (in float32 the conv nets drift to ~1e-3 after 3 steps; in float64 they agree to ~1e-15)."""

from __future__ import annotations

import pytest
import torch

from lth_sweep.config import MODELS, build_experiment
from lth_sweep.engine import pruning
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import EarlyStop, PhaseTrainer

STEPS = 3
SEEDS = [11, 12]


def tiny_data(model: str) -> tuple[DatasetSplits, str]:
    """64 random examples: 3x16x16 images for the conv nets (every zoo model takes them; VGG-16's map is 1x1
    after its four pools), 1x28x28 for the MLPs."""
    image = model not in ("mlp", "lenet_300_100")
    shape = (3, 16, 16) if image else (1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (64,), generator=gen)
    data = DatasetSplits("synthetic", x, y, x[:16], y[:16], x[:16], y[:16], shape, 10, augment=image)
    return data, "cifar10" if image else "mnist"


def half_masks(pop: Population, seeds: list[int]) -> pruning.Masks:
    """Magnitude masks at 50% per replicate: each replicate's masks depend on its own weights only."""
    full = pruning.full_masks(pop.prunable())
    return pruning.prune_layerwise(pop.prunable(), full, {name: 0.5 for name in full})


def train(model: str, seeds: list[int]) -> Population:
    data, dataset = tiny_data(model)
    config = build_experiment({
        "dataset": {"name": dataset, "augment": data.augment}, "model": {"name": model, "widths": [32, 16]},
        "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 8,
                  "iterations": STEPS, "eval_every": 1000},
    })
    pop = Population.initialize(lambda: build_model(config.model, data.input_shape, 10), seeds, torch.device("cpu"))
    masks = half_masks(pop, seeds)
    pop.apply_masks(masks)
    PhaseTrainer(config, data, pop, masks, seeds).run(0, EarlyStop.fresh(len(seeds)), on_epoch_end=lambda *_: None)
    return pop


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("model", MODELS)
def test_stacked_replicates_train_like_separate_models(model: str, float64: None) -> None:
    torch.set_num_threads(1)
    stacked = train(model, SEEDS)
    for k, seed in enumerate(SEEDS):
        alone = train(model, [seed])
        for name, tensor in {**alone.params, **alone.buffers}.items():
            mine = {**stacked.params, **stacked.buffers}[name][k:k + 1]
            assert mine.dtype == tensor.dtype
            assert torch.allclose(mine.detach(), tensor.detach(), rtol=0, atol=1e-12), \
                (model, name, float((mine.detach() - tensor.detach()).abs().max()))

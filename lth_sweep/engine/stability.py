"""Instability analysis (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis").

A phase with `stability.points` > 0 trains 2K members: the K replicates and, as members K..2K-1, a copy
of each, started from the same weights under the same masks and trained on another data order (and other
augmentation draws). Afterwards the test error is measured at `points` evenly spaced points on the line
from replicate k (alpha = 0) to its copy (alpha = 1). For models with BatchNorm the running statistics
at each point are re-estimated from `stability.bn_batches` fixed training batches (train mode, no
augmentation, the cumulative average over those batches), since interpolated weights make the ends'
statistics meaningless. Instability = max of the path - mean of its two ends.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from lth_sweep.config import ExperimentConfig
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import derived_seed, evaluate


def copy_seeds(seeds: list[int]) -> list[int]:
    """The data-order seeds of the copies, one per replicate."""
    return [derived_seed(seed, "stability") for seed in seeds]


def with_copies(pop: Population, masks: dict[str, torch.Tensor]) -> tuple[Population, dict[str, torch.Tensor]]:
    """K members -> 2K: each member followed (at index K + k) by a copy, under the same masks."""
    return pop.tiled(2), {n: m.repeat(2, *[1] * (m.dim() - 1)) for n, m in masks.items()}


def interpolate(pop: Population, alpha: float) -> Population:
    """The K points (1 - alpha) * member k + alpha * copy k, parameters and buffers alike."""
    k = pop.size // 2

    def mix(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if not t.is_floating_point():  # num_batches_tracked: taken from the members
            return t[:k].clone()
        return torch.lerp(t[:k], t[k:], alpha)

    return Population(pop.template, {n: mix(p) for n, p in pop.params.items()},
                      {n: mix(b) for n, b in pop.buffers.items()}, pop.prunable_kinds)


def batchnorm_layers(template: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in template.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_batches(config: ExperimentConfig, data: DatasetSplits) -> list[torch.Tensor]:
    """`stability.bn_batches` training batches of `train.batch_size`, fixed by the trial's seed."""
    n, b = len(data.train_x), config.train.batch_size
    count = min(config.stability.bn_batches, n // b)
    gen = torch.Generator().manual_seed(derived_seed(config.seed, "stability_bn"))
    order = torch.randperm(n, generator=gen)[: count * b].to(data.train_x.device)
    return list(data.train_x[order].split(b))


@torch.no_grad()
def recompute_batchnorm(pop: Population, batches: list[torch.Tensor]) -> None:
    """Running statistics = the average of the batch statistics over `batches` (momentum 1/i for batch i)."""
    layers = batchnorm_layers(pop.template)
    momenta = [layer.momentum for layer in layers]
    for name, buffer in pop.buffers.items():
        if name.endswith("num_batches_tracked"):
            buffer.zero_()
    try:
        for i, batch in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = 1.0 / i
            pop(batch, shared_input=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


def stability_path(config: ExperimentConfig, data: DatasetSplits, pop: Population,
                   autocast: Callable[[], AbstractContextManager]) -> list[list[float]]:
    """Per replicate, the test error at `stability.points` points from the member (first) to its copy (last)."""
    points = config.stability.points
    has_bn = bool(batchnorm_layers(pop.template))
    batches = bn_batches(config, data) if has_bn else []
    errors = []
    pop.train(True)
    for i in range(points):
        point = interpolate(pop, i / (points - 1))
        if has_bn:
            recompute_batchnorm(point, batches)
        errors.append((1 - evaluate(point, data.test_x, data.test_y, autocast)[1]).tolist())
    return [list(path) for path in zip(*errors, strict=True)]


def instability(path: list[float]) -> float:
    """Error barrier height: the path's maximum minus the mean of its two ends."""
    return max(path) - (path[0] + path[-1]) / 2

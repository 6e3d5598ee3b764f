"""Unstructured magnitude pruning on stacked replicates: masks, layerwise and global, random masks.

Every tensor here has a leading replicate dimension K: weights and masks are [K, *shape], and each
replicate is pruned on its own. Masks are boolean; a pruned weight never comes back, because only
weights that are still alive compete for survival.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import torch

Masks = dict[str, torch.Tensor]


def survivors(n_alive: int, rate: float) -> int:
    """Weights kept when pruning `rate` of `n_alive`: n_alive - round_half_up(rate * n_alive).

    The product is taken in decimal on the rate as written (0.1, not 0.1000000000000000055...), so
    15 x 0.1 = 1.5 and 25 x 0.1 = 2.5 both round up, to 2 and 3 (Python's round() would give 2 and 2)."""
    pruned = (Decimal(repr(rate)) * n_alive).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return n_alive - int(pruned)


def alive_count(*masks: torch.Tensor) -> int:
    """Survivors in `masks` (each [K, ...]) together, the same in every replicate (asserted: the pruning
    that follows keeps the same number per replicate, so replicate 0 speaks for all)."""
    counts = sum(mask.flatten(1).sum(1) for mask in masks)
    if not bool((counts == counts[0]).all()):
        raise AssertionError(f"replicates have different alive counts {counts.tolist()}; every replicate must "
                             "keep the same number of weights")
    return int(counts[0])


def full_masks(weights: dict[str, torch.Tensor]) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def density(masks: Masks) -> float:
    """Fraction of prunable weights still alive (the same in every replicate, asserted)."""
    alive = alive_count(*masks.values())
    total = sum(m[0].numel() for m in masks.values())
    return alive / total


def density_by_kind(masks: Masks, kinds: dict[str, str]) -> dict[str, float]:
    """Mean density per tensor kind (conv, fc, output) over all replicates."""
    alive: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, mask in masks.items():
        kind = kinds[name]
        alive[kind] = alive.get(kind, 0) + int(mask.sum())
        total[kind] = total.get(kind, 0) + mask.numel()
    return {kind: alive[kind] / total[kind] for kind in alive}


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean [K, n]: the n_keep largest scores of each row."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if n_keep > 0:
        keep.scatter_(1, torch.topk(scores, n_keep, dim=1, sorted=False).indices, True)
    return keep


def _alive_scores(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|w| for alive weights, -1 for pruned ones, flattened per replicate."""
    return torch.where(mask, weight.detach().abs(), -1.0).flatten(1).float()


def prune_layerwise(weights: dict[str, torch.Tensor], masks: Masks, rates: dict[str, float]) -> Masks:
    """Each tensor loses `rates[name]` of its surviving weights, smallest magnitudes first."""
    new_masks: Masks = {}
    for name, mask in masks.items():
        rate = rates.get(name, 0.0)
        if rate == 0.0:
            new_masks[name] = mask.clone()
            continue
        n_alive = alive_count(mask)
        n_keep = survivors(n_alive, rate)
        new_masks[name] = _keep_top(_alive_scores(weights[name], mask), n_keep).view_as(mask)
    return new_masks


def prune_global(weights: dict[str, torch.Tensor], masks: Masks, rate: float,
                 separate_rates: dict[str, float] | None = None) -> Masks:
    """One magnitude threshold per replicate across all tensors, except those in `separate_rates`,
    which are pruned layerwise at their own rate (0 = not pruned)."""
    separate_rates = separate_rates or {}
    pooled = [name for name in masks if name not in separate_rates]
    new_masks = prune_layerwise(weights, {n: masks[n] for n in separate_rates}, separate_rates)
    if not pooled:
        return new_masks
    scores = torch.cat([_alive_scores(weights[n], masks[n]) for n in pooled], dim=1)
    n_alive = alive_count(*(masks[n] for n in pooled))
    keep = _keep_top(scores, survivors(n_alive, rate))
    for name, part in zip(pooled, keep.split([masks[n][0].numel() for n in pooled], dim=1), strict=True):
        new_masks[name] = part.reshape(masks[name].shape)
    return {name: new_masks[name] for name in masks}


def random_masks_like(masks: Masks, generator: torch.Generator) -> Masks:
    """Random masks with the same number of survivors per tensor and replicate (the random-pruning control)."""
    random_masks: Masks = {}
    for name, mask in masks.items():
        flat = mask.flatten(1)
        counts = flat.sum(dim=1, keepdim=True).cpu()
        order = torch.rand(flat.shape, generator=generator).argsort(dim=1)
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
        random_masks[name] = (ranks < counts).view(mask.shape).to(mask.device)
    return random_masks


def random_masks_per_replicate(masks: Masks, generators: list[torch.Generator]) -> Masks:
    """`random_masks_like` with replicate k drawn from generators[k] alone (so a stacked run and K
    separate runs draw the same masks)."""
    per_replicate = [random_masks_like({n: m[k:k + 1] for n, m in masks.items()}, gen)
                     for k, gen in enumerate(generators)]
    return {name: torch.cat([masks_k[name] for masks_k in per_replicate]) for name in masks}

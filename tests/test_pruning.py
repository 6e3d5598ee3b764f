"""Magnitude pruning on stacked replicates: exact survivor counts, layerwise and global, random masks."""

from __future__ import annotations

from decimal import Decimal

import pytest
import torch

from lth_sweep.engine.pruning import (
    density,
    density_by_kind,
    full_masks,
    prune_global,
    prune_layerwise,
    random_masks_like,
    survivors,
)

T, F = True, False


def tensors(**rows: list) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, dtype=torch.float32) for name, value in rows.items()}


def bool_masks(**rows: list) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, dtype=torch.bool) for name, value in rows.items()}


def alive_counts(mask: torch.Tensor) -> list[int]:
    """Survivors of each replicate."""
    return mask.flatten(1).sum(1).tolist()


def assert_masks_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == torch.bool and got[name].shape == expected[name].shape, name
        assert torch.equal(got[name], expected[name]), f"{name}: {got[name].tolist()} != {expected[name].tolist()}"


# ---------------------------------------------------------------------------------------- survivors


@pytest.mark.parametrize("n, rate, kept", [(10, 0.2, 8), (100, 0.2, 80), (1280, 0.2, 1024), (320, 0.1, 288),
                                           (7, 0.1, 6), (3, 0.1, 3), (9, 0.3, 6), (1, 0.2, 1), (0, 0.5, 0),
                                           (41, 0.2, 33), (288, 0.1, 259),
                                           (15, 0.1, 13), (25, 0.1, 22), (7, 0.5, 3), (10, 0.15, 8)])
def test_survivors(n: int, rate: float, kept: int) -> None:
    assert survivors(n, rate) == kept


# ---------------------------------------------------------------------------------------- layerwise

WEIGHTS = tensors(
    a=[[[0.5, -3.0, 0.1], [2.0, -0.2, 1.5]],  # replicate 0
       [[-0.3, 0.05, 4.0], [0.6, -0.7, 0.01]]],  # replicate 1
    b=[[1.0, -2.0, 3.0, -4.0],
       [0.1, 0.2, -0.05, 9.0]],
)


def test_layerwise_keeps_the_largest_magnitudes_per_replicate() -> None:
    got = prune_layerwise(WEIGHTS, full_masks(WEIGHTS), {"a": 0.5, "b": 0.25})
    assert_masks_equal(got, bool_masks(
        a=[[[F, T, F], [T, F, T]],
           [[F, F, T], [T, T, F]]],
        b=[[F, T, T, T],
           [T, T, F, T]],
    ))


def test_layerwise_replicates_are_independent() -> None:
    base = prune_layerwise(WEIGHTS, full_masks(WEIGHTS), {"a": 0.5, "b": 0.25})
    changed = {name: w.clone() for name, w in WEIGHTS.items()}
    changed["a"][1] = torch.arange(6.0).view(2, 3)  # replicate 1 only
    got = prune_layerwise(changed, full_masks(changed), {"a": 0.5, "b": 0.25})
    assert torch.equal(got["a"][0], base["a"][0])
    assert got["a"][1].tolist() == [[F, F, F], [T, T, T]]


def test_only_alive_weights_compete() -> None:
    """-3.0 and 4.0 (the largest magnitudes) were pruned before: they stay pruned."""
    masks = bool_masks(a=[[[T, F, T], [T, T, T]],
                          [[T, T, F], [T, T, T]]])
    got = prune_layerwise({"a": WEIGHTS["a"]}, masks, {"a": 0.4})  # 5 alive -> 3 kept
    assert_masks_equal(got, bool_masks(a=[[[T, F, F], [T, F, T]],
                                          [[T, F, F], [T, T, F]]]))


def test_rate_zero_or_absent_leaves_the_mask_alone() -> None:
    masks = bool_masks(a=[[[T, F, T], [T, T, T]], [[T, T, F], [T, T, T]]], b=[[T, T, F, T], [F, T, T, T]])
    got = prune_layerwise(WEIGHTS, masks, {"a": 0.0})
    assert_masks_equal(got, masks)
    got["a"][0, 0, 0] = False
    assert masks["a"][0, 0, 0], "the returned masks must be copies"


def test_input_masks_not_modified() -> None:
    masks = full_masks(WEIGHTS)
    prune_layerwise(WEIGHTS, masks, {"a": 0.5, "b": 0.5})
    assert all(bool(m.all()) for m in masks.values())


def test_pruning_handles_4d_conv_weights() -> None:
    torch.manual_seed(0)
    w = {"conv": torch.randn(2, 4, 3, 3, 3)}
    got = prune_layerwise(w, full_masks(w), {"conv": 0.1})
    assert got["conv"].shape == (2, 4, 3, 3, 3) and alive_counts(got["conv"]) == [97, 97]  # 108 - 11
    for k in range(2):
        kept, dropped = w["conv"][k].abs()[got["conv"][k]], w["conv"][k].abs()[~got["conv"][k]]
        assert kept.min() > dropped.max()


# ------------------------------------------------------------------------------------------- global

GLOBAL_WEIGHTS = tensors(
    small=[[0.1, -0.2, 0.3, -0.4], [5.0, -6.0, 7.0, -8.0]],
    big=[[1.0, -2.0, 3.0, -4.0], [1.0, -2.0, 3.0, -4.0]],
)


def test_global_uses_one_threshold_per_replicate_across_tensors() -> None:
    got = prune_global(GLOBAL_WEIGHTS, full_masks(GLOBAL_WEIGHTS), 0.5)
    assert_masks_equal(got, bool_masks(small=[[F, F, F, F], [T, T, T, T]],
                                       big=[[T, T, T, T], [F, F, F, F]]))


def test_layerwise_differs_from_global_on_the_same_weights() -> None:
    got = prune_layerwise(GLOBAL_WEIGHTS, full_masks(GLOBAL_WEIGHTS), {"small": 0.5, "big": 0.5})
    assert_masks_equal(got, bool_masks(small=[[F, F, T, T], [F, F, T, T]],
                                       big=[[F, F, T, T], [F, F, T, T]]))


def test_global_counts_only_alive_weights() -> None:
    masks = bool_masks(small=[[T, T, T, T], [T, T, T, F]], big=[[T, T, T, F], [T, T, T, T]])
    got = prune_global(GLOBAL_WEIGHTS, masks, 0.4)  # 7 alive -> 4 kept (7 - round(2.8))
    assert_masks_equal(got, bool_masks(small=[[F, F, F, T], [T, T, T, F]],
                                       big=[[T, T, T, F], [F, F, F, T]]))


def test_global_separate_rates_prune_on_their_own() -> None:
    weights = {**GLOBAL_WEIGHTS, "out": torch.tensor([[0.01, -0.02, 0.03, -0.04], [0.04, 0.03, 0.02, 0.01]])}
    got = prune_global(weights, full_masks(weights), 0.5, {"out": 0.5})
    assert_masks_equal(got, bool_masks(small=[[F, F, F, F], [T, T, T, T]],
                                       big=[[T, T, T, T], [F, F, F, F]],
                                       out=[[F, F, T, T], [T, T, F, F]]))
    pooled = prune_global(weights, full_masks(weights), 0.5)  # without the exception, out would be wiped
    assert alive_counts(pooled["out"]) == [0, 0]


def test_global_separate_rate_zero_means_untouched() -> None:
    weights = {**GLOBAL_WEIGHTS, "out": torch.tensor([[0.01, -0.02, 0.03, -0.04], [0.04, 0.03, 0.02, 0.01]])}
    masks = full_masks(weights)
    masks["out"][0, 1] = False
    got = prune_global(weights, masks, 0.5, {"out": 0.0})
    assert torch.equal(got["out"], masks["out"])
    assert alive_counts(got["small"]) == [0, 4] and alive_counts(got["big"]) == [4, 0]
    assert list(got) == ["small", "big", "out"]


# ------------------------------------------------------------------------------------ many rounds

SHAPES = {"fc1.weight": (32, 40), "fc2.weight": (16, 32), "output.weight": (10, 16)}
KINDS = {"fc1.weight": "fc", "fc2.weight": "fc", "output.weight": "output"}
RATES = {"fc": 0.2, "output": 0.1}


def random_weights(k: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(k, *shape, generator=gen) for name, shape in SHAPES.items()}


def expected_alive(n: int, rate: float, rounds: int) -> int:
    """The survivor recurrence with the pruned count rounded half up."""
    for _ in range(rounds):
        n = n - int(Decimal(str(rate)) * n + Decimal("0.5"))
    return n


def test_layerwise_rounds_follow_the_integer_recurrence_and_never_revive() -> None:
    k = 2
    masks = full_masks(random_weights(k, 0))
    rates = {name: RATES[kind] for name, kind in KINDS.items()}
    for r in range(1, 9):
        weights = random_weights(k, r)  # "training" moves every weight, pruned ones included
        for mask, w in zip(masks.values(), weights.values(), strict=True):
            w[~mask] = 1e6  # pruned positions made huge: they still must not come back
        new = prune_layerwise(weights, masks, rates)
        for name, shape in SHAPES.items():
            n = shape[0] * shape[1]
            assert alive_counts(new[name]) == [expected_alive(n, rates[name], r)] * k, (name, r)
            assert not (new[name] & ~masks[name]).any(), f"{name} revived a pruned weight in round {r}"
            for rep in range(k):
                kept = weights[name][rep][new[name][rep]].abs()
                lost = weights[name][rep][masks[name][rep] & ~new[name][rep]].abs()
                assert kept.min() >= lost.max()
        masks = new
        by_kind = density_by_kind(masks, KINDS)
        assert by_kind["fc"] == pytest.approx((1 - 0.2) ** r, abs=0.01)
        assert by_kind["output"] == pytest.approx((1 - 0.1) ** r, abs=0.02)
        fc_alive = sum(expected_alive(SHAPES[n][0] * SHAPES[n][1], 0.2, r) for n in ("fc1.weight", "fc2.weight"))
        assert by_kind["fc"] == fc_alive / (32 * 40 + 16 * 32)


def test_global_rounds_follow_the_integer_recurrence() -> None:
    k = 3
    masks = full_masks(random_weights(k, 0))
    pooled = ("fc1.weight", "fc2.weight")
    n_pooled = 32 * 40 + 16 * 32
    for r in range(1, 7):
        weights = random_weights(k, 100 + r)
        for mask, w in zip(masks.values(), weights.values(), strict=True):
            w[~mask] = 1e6
        new = prune_global(weights, masks, 0.2, {"output.weight": 0.1})
        for rep in range(k):
            assert sum(int(new[n][rep].sum()) for n in pooled) == expected_alive(n_pooled, 0.2, r)
            assert int(new["output.weight"][rep].sum()) == expected_alive(160, 0.1, r)
            scores = torch.cat([weights[n][rep].flatten() for n in pooled])
            keep = torch.cat([new[n][rep].flatten() for n in pooled])
            lost = torch.cat([(masks[n][rep] & ~new[n][rep]).flatten() for n in pooled])
            assert scores.abs()[keep].min() >= scores.abs()[lost].max()
        for name in SHAPES:
            assert not (new[name] & ~masks[name]).any()
        masks = new
        assert density(masks) == pytest.approx(
            (expected_alive(n_pooled, 0.2, r) + expected_alive(160, 0.1, r)) / (n_pooled + 160), abs=1e-12)


def test_density_uses_all_prunable_weights() -> None:
    masks = bool_masks(a=[[T, F, F, F], [T, F, F, F]], b=[[T, T, T, T, T, T], [T, T, T, T, T, T]])
    assert density(masks) == 7 / 10
    assert density_by_kind(masks, {"a": "fc", "b": "output"}) == {"fc": 0.25, "output": 1.0}
    assert density(full_masks(WEIGHTS)) == 1.0


# ------------------------------------------------------------------------------------- random masks


def pruned_masks() -> dict[str, torch.Tensor]:
    weights = random_weights(3, 7)
    masks = full_masks(weights)
    for _ in range(3):
        masks = prune_layerwise(weights, masks, {n: RATES[k] for n, k in KINDS.items()})
        weights = random_weights(3, int(masks["fc1.weight"].sum()))
    return masks


def test_random_masks_keep_counts_per_tensor_and_replicate() -> None:
    masks = pruned_masks()
    rand = random_masks_like(masks, torch.Generator().manual_seed(0))
    assert list(rand) == list(masks)
    for name, mask in masks.items():
        assert rand[name].dtype == torch.bool and rand[name].shape == mask.shape
        assert alive_counts(rand[name]) == alive_counts(mask)
        assert not torch.equal(rand[name], mask)
    assert not torch.equal(rand["fc1.weight"][0], rand["fc1.weight"][1]), "replicates drawn independently"


def test_random_masks_uniform_not_biased_to_the_old_mask() -> None:
    masks = pruned_masks()
    rand = random_masks_like(masks, torch.Generator().manual_seed(1))
    overlap = (rand["fc1.weight"] & masks["fc1.weight"]).sum().item() / masks["fc1.weight"].sum().item()
    density_fc1 = masks["fc1.weight"].float().mean().item()  # a uniform draw overlaps ~ density
    assert overlap == pytest.approx(density_fc1, abs=0.06)


def test_random_masks_deterministic_for_a_seeded_generator() -> None:
    masks = pruned_masks()
    one = random_masks_like(masks, torch.Generator().manual_seed(42))
    two = random_masks_like(masks, torch.Generator().manual_seed(42))
    other = random_masks_like(masks, torch.Generator().manual_seed(43))
    assert all(torch.equal(one[n], two[n]) for n in masks)
    assert any(not torch.equal(one[n], other[n]) for n in masks)

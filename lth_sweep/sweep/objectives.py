"""Sparsity-aware sweep objectives over one trial's round records, and the Pareto front.

When the prune rate is searched, round k is a different density in each trial, so no objective
here compares rounds by index: each is a function of (density, val_acc) pairs.
"""

from __future__ import annotations

import math
from typing import Any

from lth_sweep.sweep.schema import ObjectiveConfig

BEST_BY_VAL_KEYS = ("round", "density", "val_acc", "test_acc", "test_acc_at_early_stop")


def best_val_round(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the best val_acc (the sparser one on a tie)."""
    return max(records, key=lambda r: (r["val_acc"], -r["density"]))


def best_by_validation(records: list[dict[str, Any]]) -> dict[str, float]:
    """The round with the best val_acc so far (the sparser one on a tie), as best_by_val_* values: the
    honest way to quote one test number for a trial (test accuracy itself is never maximized over rounds)."""
    best = best_val_round(records)
    return {f"best_by_val_{key}": best[key] for key in BEST_BY_VAL_KEYS}


def dense_did_not_learn(records: list[dict[str, Any]], min_dense_val_acc: float) -> bool:
    """The dense round is below `min_dense_val_acc`: every sparser round at chance would 'match' it."""
    return records[0]["val_acc"] < min_dense_val_acc


def matching_rounds(records: list[dict[str, Any]], tolerance: float, min_dense_val_acc: float = 0.0,
                    bound: float | None = None) -> list[dict[str, Any]]:
    """The rounds whose val_acc is within `tolerance` of the same trial's dense val_acc (and, given `bound`, whose
    instability is <= it); none when the dense network did not learn."""
    if dense_did_not_learn(records, min_dense_val_acc):
        return []
    dense = records[0]["val_acc"]
    return [r for r in records if r["val_acc"] >= dense - tolerance
            and (bound is None or r.get("instability", math.inf) <= bound)]


def matching_density(records: list[dict[str, Any]], tolerance: float, min_dense_val_acc: float = 0.0) -> float:
    """Smallest density whose val_acc is within `tolerance` of the same trial's dense val_acc; 1.0 (no sparsity
    gained) when the dense network did not learn."""
    return min((r["density"] for r in matching_rounds(records, tolerance, min_dense_val_acc)), default=1.0)


def stable_matching_density(records: list[dict[str, Any]], tolerance: float, bound: float,
                            min_dense_val_acc: float = 0.0) -> float:
    """Smallest density that matches (val_acc within `tolerance` of dense) and is stable (instability <=
    `bound`); 1.0 (the dense network, no sparsity gained) while no round qualifies or when the dense network
    did not learn."""
    return min((r["density"] for r in matching_rounds(records, tolerance, min_dense_val_acc, bound)), default=1.0)


def pruned(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rounds with weights pruned: the dense network matching itself is no winning ticket."""
    return [r for r in records if r["density"] < 1.0]


def winning_round(records: list[dict[str, Any]], objective: ObjectiveConfig) -> dict[str, Any] | None:
    """The round whose ticket the objective scores: the sparsest pruned round that matches (and is stable, for
    stable_matching_density), or for best_val_acc the round of the best val_acc (the sparser on a tie); None when
    no round qualifies (the dense network did not learn, no pruned round matches, or none is stable)."""
    if objective.name == "best_val_acc":
        return best_val_round(records)
    bound = objective.instability_bound if objective.name == "stable_matching_density" else None
    rounds = pruned(matching_rounds(records, objective.tolerance, objective.min_dense_val_acc, bound))
    return min(rounds, key=lambda r: (r["density"], r["round"]), default=None)


def winning_words(objective: ObjectiveConfig) -> str:
    """How `winning_round` chose, in words."""
    if objective.name == "best_val_acc":
        return "the round of the best val_acc, the sweep's objective"
    if objective.name == "stable_matching_density":
        return "the sparsest within tolerance of the dense val_acc and stable"
    return "the sparsest within tolerance of the dense val_acc"


def no_winning_round(records: list[dict[str, Any]], objective: ObjectiveConfig) -> str:
    """Why `winning_round` found none, in words."""
    if not records:
        return "none of its rounds can be read yet"
    if dense_did_not_learn(records, objective.min_dense_val_acc):
        return (f"its dense network did not learn (val_acc {records[0]['val_acc']:.4g} < objective.min_dense_val_acc "
                f"{objective.min_dense_val_acc:g})")
    if not pruned(matching_rounds(records, objective.tolerance, objective.min_dense_val_acc)):
        return (f"no pruned round is within objective.tolerance {objective.tolerance:g} of its dense val_acc "
                f"{records[0]['val_acc']:.4g}")
    return f"no pruned round is both matching and stable (instability <= objective.instability_bound " \
           f"{objective.instability_bound:g})"


def val_acc_at_density(records: list[dict[str, Any]], target: float, final: bool) -> float:
    """val_acc at `target` density, interpolated linearly in log-density between the rounds around it.

    Before the trial reaches the target the running value is its latest val_acc; a trial that ends
    without reaching it scores 0 (its schedule cannot say anything about that density)."""
    for denser, sparser in zip(records, records[1:], strict=False):
        if sparser["density"] <= target <= denser["density"]:
            span = math.log(denser["density"]) - math.log(sparser["density"])
            weight = 0.0 if span == 0 else (math.log(denser["density"]) - math.log(target)) / span
            return denser["val_acc"] + weight * (sparser["val_acc"] - denser["val_acc"])
    if records[0]["density"] <= target:
        return records[0]["val_acc"]
    return 0.0 if final else records[-1]["val_acc"]


def objective_value(records: list[dict[str, Any]], objective: ObjectiveConfig, final: bool = False) -> float:
    """The running value of a single objective after the rounds in `records`."""
    if objective.name == "matching_density":
        return matching_density(records, objective.tolerance, objective.min_dense_val_acc)
    if objective.name == "stable_matching_density":
        return stable_matching_density(records, objective.tolerance, objective.instability_bound,
                                       objective.min_dense_val_acc)
    if objective.name == "best_val_acc":
        return max(r["val_acc"] for r in records)
    if objective.name == "val_acc_at_density":
        return val_acc_at_density(records, objective.target_density, final)
    return records[-1]["val_acc"]  # pareto: (density, val_acc) are reported as they are


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points not dominated in (lower density, higher val_acc), sorted by density."""
    front = []
    for p in sorted(points, key=lambda q: (q["density"], -q["val_acc"])):
        if not front or p["val_acc"] > front[-1]["val_acc"]:
            front.append(p)
    return front

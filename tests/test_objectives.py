"""Sparsity-aware sweep objectives and the Pareto front, on hand-made round records."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lth_sweep.sweep.objectives import (
    matching_density,
    no_winning_round,
    objective_value,
    pareto_front,
    val_acc_at_density,
    winning_round,
)
from lth_sweep.sweep.schema import ObjectiveConfig, objective_metrics


def rounds(*points: tuple[float, float]) -> list[dict[str, Any]]:
    """Round records from (density, val_acc) pairs, round 0 first."""
    return [{"round": i, "density": d, "val_acc": a, "test_acc": a - 0.01} for i, (d, a) in enumerate(points)]


# A trial pruned 20% per round: matches the dense 0.90 (within 0.01) down to density 0.512, not at 0.4096.
TRIAL = rounds((1.0, 0.90), (0.8, 0.91), (0.64, 0.895), (0.512, 0.8901), (0.4096, 0.85))


# ------------------------------------------------------------------------------------ matching_density


def test_matching_density_is_the_sparsest_round_within_tolerance() -> None:
    assert matching_density(TRIAL, 0.01) == 0.512
    assert matching_density(TRIAL, 0.05) == 0.4096
    assert matching_density(TRIAL, 0.0) == 0.8  # tolerance 0: only rounds at least as good as dense (0.91)


def test_matching_density_of_the_dense_round_alone_is_1() -> None:
    assert matching_density(rounds((1.0, 0.5)), 0.01) == 1.0


def test_matching_density_when_no_pruned_round_matches() -> None:
    assert matching_density(rounds((1.0, 0.9), (0.8, 0.7), (0.64, 0.6)), 0.01) == 1.0


def test_matching_density_takes_the_sparsest_matching_round_even_after_a_miss() -> None:
    """A noisy miss in between does not stop a later (sparser) round from counting."""
    assert matching_density(rounds((1.0, 0.9), (0.8, 0.85), (0.64, 0.9)), 0.01) == 0.64


def test_matching_density_boundary_is_inclusive() -> None:
    assert matching_density(rounds((1.0, 0.5), (0.8, 0.25)), 0.25) == 0.8


def test_matching_density_never_increases_as_rounds_come_in() -> None:
    running = [matching_density(TRIAL[: k + 1], 0.01) for k in range(len(TRIAL))]
    assert running == sorted(running, reverse=True)
    assert running == [1.0, 0.8, 0.64, 0.512, 0.512]


@pytest.mark.parametrize("name", ["matching_density", "stable_matching_density"])
def test_a_trial_whose_dense_network_did_not_learn_scores_1(name: str) -> None:
    """At chance (10 classes) every pruned round 'matches' the dense one; without the guard the sparsest of
    them would be the sweep's best config. Just above the bound the trial is judged as usual."""
    at_chance = [{**r, "instability": 0.0} for r in rounds((1.0, 0.10), (0.5, 0.10), (0.25, 0.095))]
    learned = [{**r, "instability": 0.0} for r in rounds((1.0, 0.16), (0.5, 0.16), (0.25, 0.155))]
    objective = ObjectiveConfig(name=name)
    assert objective.min_dense_val_acc == 0.15
    assert objective_value(at_chance, objective) == 1.0
    assert objective_value(learned, objective) == 0.25
    assert objective_value(at_chance, ObjectiveConfig(name=name, min_dense_val_acc=0.0)) == 0.25  # guard off


# ------------------------------------------------------------------------------------ winning_round


def test_the_winning_round_is_the_one_each_objective_scores() -> None:
    """The round `ticket export` takes by default: its density is the objective's value, for every objective
    that names a round; the others take the sparsest matching round."""
    stability = [0.0, 0.01, 0.05, 0.015, 0.0]  # round 3 is the sparsest matching round that is stable (<= 0.02)
    trial = [{**r, "instability": e} for r, e in zip(TRIAL, stability, strict=True)]
    for name in ("matching_density", "stable_matching_density"):
        objective = ObjectiveConfig(name=name, tolerance=0.01)
        assert winning_round(trial, objective)["density"] == objective_value(trial, objective)
    assert winning_round(trial, ObjectiveConfig(name="matching_density"))["round"] == 3
    strict = ObjectiveConfig(name="stable_matching_density", instability_bound=0.012)
    assert winning_round(trial, strict)["round"] == 1
    assert winning_round(trial, ObjectiveConfig(name="best_val_acc"))["round"] == 1  # val_acc 0.91
    for name in ("val_acc_at_density", "pareto"):
        assert winning_round(trial, ObjectiveConfig(name=name))["round"] == 3


def test_no_winning_round_when_the_dense_network_did_not_learn_or_none_is_stable() -> None:
    at_chance = [{**r, "instability": 0.0} for r in rounds((1.0, 0.10), (0.5, 0.10))]
    unstable = [{**r, "instability": 0.3} for r in TRIAL]
    assert winning_round(at_chance, ObjectiveConfig(name="matching_density")) is None
    assert winning_round(at_chance, ObjectiveConfig(name="stable_matching_density")) is None
    assert winning_round(unstable, ObjectiveConfig(name="stable_matching_density")) is None
    assert winning_round(unstable, ObjectiveConfig(name="matching_density"))["round"] == 3


@pytest.mark.parametrize("name", ["matching_density", "stable_matching_density"])
def test_the_dense_network_matching_itself_is_no_winning_ticket(name: str) -> None:
    """Every pruned round is below the tolerance: only round 0 'matches' (itself). Before, `ticket export` took
    the dense network as the winning ticket, with exit 0; the objective says 1.0, no sparsity gained."""
    lost = [{**r, "instability": 0.0} for r in rounds((1.0, 0.90), (0.5, 0.85), (0.25, 0.60))]
    objective = ObjectiveConfig(name=name, tolerance=0.01)
    assert objective_value(lost, objective) == 1.0
    assert winning_round(lost, objective) is None
    assert no_winning_round(lost, objective).startswith("no pruned round is within objective.tolerance 0.01")
    best = winning_round(rounds((1.0, 0.90), (0.5, 0.85)), ObjectiveConfig(name="best_val_acc"))
    assert best["round"] == 0, "best_val_acc scores the best round, and the dense one can be it"


# ------------------------------------------------------------------------------------ val_acc_at_density


def test_val_acc_at_density_interpolates_in_log_density() -> None:
    records = rounds((1.0, 0.9), (0.8, 0.88), (0.64, 0.80))
    target = 0.7
    weight = (math.log(0.8) - math.log(target)) / (math.log(0.8) - math.log(0.64))
    expected = 0.88 + weight * (0.80 - 0.88)
    assert val_acc_at_density(records, target, final=True) == pytest.approx(expected)
    assert val_acc_at_density(records, target, final=False) == pytest.approx(expected)
    # In log-density, not linearly in density: the two differ here.
    linear = 0.88 + (0.8 - target) / (0.8 - 0.64) * (0.80 - 0.88)
    assert abs(expected - linear) > 1e-4


def test_val_acc_at_density_on_a_round_is_that_rounds_val_acc() -> None:
    records = rounds((1.0, 0.9), (0.8, 0.88), (0.64, 0.80))
    assert val_acc_at_density(records, 0.8, final=True) == pytest.approx(0.88)
    assert val_acc_at_density(records, 0.64, final=True) == pytest.approx(0.80)
    assert val_acc_at_density(records, 1.0, final=True) == pytest.approx(0.9)


def test_val_acc_at_density_not_reached_scores_0_when_final() -> None:
    records = rounds((1.0, 0.9), (0.8, 0.88), (0.64, 0.80))
    assert val_acc_at_density(records, 0.1, final=True) == 0.0


def test_val_acc_at_density_not_reached_yet_is_the_latest_val_acc() -> None:
    records = rounds((1.0, 0.9), (0.8, 0.88), (0.64, 0.80))
    assert val_acc_at_density(records, 0.1, final=False) == 0.80
    assert val_acc_at_density(records[:1], 0.1, final=False) == 0.9
    assert val_acc_at_density(records[:1], 0.1, final=True) == 0.0


def test_val_acc_at_density_with_two_rounds_at_the_same_density() -> None:
    """A rate so small that a round's mask did not change: no division by zero."""
    records = rounds((1.0, 0.9), (0.5, 0.85), (0.5, 0.80))
    assert val_acc_at_density(records, 0.5, final=True) in (0.85, 0.80)


# ------------------------------------------------------------------------------------ objective_value


def test_objective_value_dispatches_on_the_name() -> None:
    assert objective_value(TRIAL, ObjectiveConfig(name="matching_density", tolerance=0.01)) == 0.512
    assert objective_value(TRIAL, ObjectiveConfig(name="best_val_acc")) == 0.91
    at = ObjectiveConfig(name="val_acc_at_density", target_density=0.3)
    assert objective_value(TRIAL, at, final=True) == 0.0
    assert objective_value(TRIAL, at, final=False) == 0.85
    assert objective_value(TRIAL, ObjectiveConfig(name="pareto")) == 0.85


def test_best_val_acc_is_the_best_of_any_round() -> None:
    assert objective_value(rounds((1.0, 0.7), (0.8, 0.75), (0.64, 0.6)), ObjectiveConfig(name="best_val_acc")) == 0.75


def test_objective_metrics_and_modes() -> None:
    assert objective_metrics(ObjectiveConfig(name="matching_density")) == (["objective"], ["min"])
    assert objective_metrics(ObjectiveConfig(name="best_val_acc")) == (["objective"], ["max"])
    assert objective_metrics(ObjectiveConfig(name="val_acc_at_density")) == (["objective"], ["max"])
    assert objective_metrics(ObjectiveConfig(name="pareto")) == (["density", "val_acc"], ["min", "max"])


# ------------------------------------------------------------------------------------ pareto_front


def dominated(p: dict[str, Any], q: dict[str, Any]) -> bool:
    """q dominates p: no denser and no less accurate, better in one."""
    return (q["density"] <= p["density"] and q["val_acc"] >= p["val_acc"]
            and (q["density"] < p["density"] or q["val_acc"] > p["val_acc"]))


def test_pareto_front_keeps_exactly_the_non_dominated_points() -> None:
    points = [
        {"trial_id": "a", "density": 1.0, "val_acc": 0.90},
        {"trial_id": "a", "density": 0.8, "val_acc": 0.91},
        {"trial_id": "a", "density": 0.64, "val_acc": 0.89},
        {"trial_id": "b", "density": 0.7, "val_acc": 0.92},
        {"trial_id": "b", "density": 0.49, "val_acc": 0.85},
        {"trial_id": "c", "density": 0.5, "val_acc": 0.80},
        {"trial_id": "c", "density": 0.25, "val_acc": 0.70},
    ]
    front = pareto_front(points)
    expected = [p for p in points if not any(dominated(p, q) for q in points)]
    assert sorted(front, key=lambda p: p["density"]) == front
    assert sorted(map(id, front)) == sorted(map(id, expected))
    assert [(p["trial_id"], p["density"]) for p in front] == [("c", 0.25), ("b", 0.49), ("a", 0.64), ("b", 0.7)]


def test_pareto_front_of_nothing_and_of_one_point() -> None:
    assert pareto_front([]) == []
    point = {"density": 0.5, "val_acc": 0.5}
    assert pareto_front([point]) == [point]


def test_pareto_front_ties() -> None:
    """At equal density the more accurate point wins; an exact duplicate appears once."""
    points = [{"density": 0.5, "val_acc": 0.8}, {"density": 0.5, "val_acc": 0.9}, {"density": 0.5, "val_acc": 0.9},
              {"density": 0.4, "val_acc": 0.9}]
    assert pareto_front(points) == [{"density": 0.4, "val_acc": 0.9}]
    points = [{"density": 0.5, "val_acc": 0.8}, {"density": 0.5, "val_acc": 0.9}]
    assert pareto_front(points) == [{"density": 0.5, "val_acc": 0.9}]

"""The IMP engine on the tiny MNIST-1D experiment (CPU): masking, rewinding, records, resume, controls,
replicates, and one end-to-end run of the shipped MNIST-1D file."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import torch

from lth_sweep.checkpoint import load_torch
from lth_sweep.config import ExperimentConfig
from lth_sweep.engine import pruning
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.lottery import PER_REPLICATE_METRICS, Trial, masks_of_round
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import EarlyStop, Evaluation, PhaseTrainer, derived_seed, learning_rate
from lth_sweep.errors import UserError

CPU = torch.device("cpu")
MakeConfig = Callable[..., ExperimentConfig]
State = dict[str, torch.Tensor]

REQUIRED_FIELDS = ("round", "density", "val_acc", "val_loss_min", "early_stop_iter", "test_acc",
                   "test_acc_at_early_stop", "train_loss", "seconds", "samples_per_s")
TOTAL = 105  # iterations per round of the tiny experiment (3 epochs x 35 batches)
EVAL_POINTS = {*range(10, TOTAL, 10), TOTAL}


def run_trial(config: ExperimentConfig, out: Path, data: DatasetSplits, **callbacks: Any) -> list[dict[str, Any]]:
    return Trial(config, out, data=data, **callbacks).run()


def read_rounds(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def build(config: ExperimentConfig, data: DatasetSplits) -> Callable[[], torch.nn.Module]:
    return lambda: build_model(config.model, data.input_shape, data.num_classes)


def prunable_sizes(config: ExperimentConfig) -> dict[str, tuple[str, int]]:
    """name -> (kind, number of weights), from the model itself."""
    model = build_model(config.model, (40,), 10)
    params = dict(model.named_parameters())
    return {name: (kind, params[name].numel()) for name, kind in model.prunable_kinds().items()}


def alive_after(n: int, rate: float, rounds: int) -> int:
    """n after `rounds` prunings at `rate`, the pruned count rounded half up (as the README says)."""
    for _ in range(rounds):
        n -= int(Decimal(str(rate)) * n + Decimal("0.5"))
    return n


def expected_density(config: ExperimentConfig, round_index: int) -> float:
    rates = {"fc": config.prune.rate, "conv": config.conv_rate(), "output": config.output_rate()}
    sizes = prunable_sizes(config)
    alive = sum(alive_after(n, rates[kind], round_index) for kind, n in sizes.values())
    return alive / sum(n for _, n in sizes.values())


def train_manually(config: ExperimentConfig, data: DatasetSplits, iterations: int,
                   masks: dict[str, torch.Tensor] | None = None) -> Population:
    """A population trained for `iterations` steps from the config's seeds, outside Trial."""
    short = config.model_copy(update={"train": config.train.model_copy(update={"epochs": None,
                                                                               "iterations": iterations})})
    seeds = [config.seed + k for k in range(config.replicates)]
    pop = Population.initialize(build(config, data), seeds, CPU)
    masks = masks if masks is not None else pruning.full_masks(pop.prunable())
    trainer = PhaseTrainer(short, data, pop, masks, seeds)
    trainer.run(0, EarlyStop.fresh(pop.size), lambda _next, _stop: None)
    return pop


def assert_states_equal(got: State, expected: State) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


class StateSpy:
    """An on_eval callback that keeps copies of state.pt taken mid-phase (after an epoch checkpoint)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.states: list[dict[str, Any]] = []
        self.evals: list[tuple[int, str, int]] = []

    def __call__(self, round_index: int, phase: str, evaluation: Evaluation) -> None:
        self.evals.append((round_index, phase, evaluation.iteration))
        state = load_torch(self.out / "state.pt")
        if state["iteration"] is not None and state["round"] == round_index and state["phase"] == phase:
            self.states.append(state)

    def iterations(self, round_index: int, phase: str = "ticket") -> list[int]:
        return [it for r, p, it in self.evals if r == round_index and p == phase]



@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Any:
    """Like the tiny config's runtime.threads: steady timings on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- (a) masks hold in training


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_phase_trainer_keeps_pruned_weights_exactly_zero(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                         optimizer: str) -> None:
    changes = {"train.optimizer": "sgd", "train.lr": 0.05, "train.momentum": 0.9} if optimizer == "sgd" else {}
    config = make_config({**changes, "train.weight_decay": 1e-3, "replicates": 2, "train.epochs": 1})
    pop = Population.initialize(build(config, mnist1d), [0, 1], CPU)
    start = {n: p.detach().clone() for n, p in pop.params.items()}
    gen = torch.Generator().manual_seed(4)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in pop.prunable().items()}
    trainer = PhaseTrainer(config, mnist1d, pop, masks, [0, 1])  # weights are NOT pre-masked here
    trainer.run(0, EarlyStop.fresh(2), lambda _next, _stop: None, )
    for name, mask in masks.items():
        w = pop.params[name].detach()
        assert (w[~mask] == 0).all(), f"{name}: pruned weights moved off zero"
        alive_changed = (w[mask] != start[name][mask]).float().mean().item()
        assert alive_changed > 0.9, f"{name}: surviving weights should train ({alive_changed:.2f} moved)"
    assert not torch.equal(pop.params["fc1.bias"].detach(), start["fc1.bias"]), "biases are not masked"


def test_trial_keeps_pruned_weights_zero_mid_round(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                   tmp_path: Path) -> None:
    config = make_config({"prune.rounds": 3})
    spy = StateSpy(tmp_path)
    run_trial(config, tmp_path, mnist1d, on_eval=spy)
    mid_round = [s for s in spy.states if s["round"] >= 1]
    assert {s["round"] for s in mid_round} == {1, 2} and {s["iteration"] for s in mid_round} == {35, 70}
    for state in mid_round:
        assert state["phase_masks"].keys() == state["masks"].keys() == {"fc1.weight", "output.weight"}
        for name, mask in state["phase_masks"].items():
            assert torch.equal(mask, state["masks"][name])
            weight = state["params"][name]
            assert 0 < mask.sum() < mask.numel()
            assert (weight[~mask] == 0).all(), f"round {state['round']}: {name} has nonzero pruned weights"
            assert (weight[mask] != 0).all()


# ---------------------------------------------------------------------------------- (b) rewinding

REWIND = 15


@pytest.fixture(scope="module")
def rewound_trial(tmp_path_factory: pytest.TempPathFactory, make_config: MakeConfig,
                  mnist1d: DatasetSplits) -> tuple[ExperimentConfig, Path, StateSpy]:
    config = make_config({"prune.rounds": 2, "rewind.iteration": REWIND})
    out = tmp_path_factory.mktemp("rewind")
    spy = StateSpy(out)
    run_trial(config, out, mnist1d, on_eval=spy)
    return config, out, spy


def test_rewind_snapshot_is_the_weights_after_k_steps(rewound_trial: tuple[ExperimentConfig, Path, StateSpy],
                                                      mnist1d: DatasetSplits) -> None:
    config, out, _ = rewound_trial
    snapshot = load_torch(out / "rewind.pt")
    after_k = train_manually(config, mnist1d, REWIND).snapshot()
    assert_states_equal(snapshot, after_k)
    init = Population.initialize(build(config, mnist1d), [config.seed], CPU).snapshot()
    assert not torch.equal(snapshot["fc1.weight"], init["fc1.weight"])
    after_k_plus_1 = train_manually(config, mnist1d, REWIND + 1).snapshot()
    assert not torch.equal(snapshot["fc1.weight"], after_k_plus_1["fc1.weight"])


def test_masks_prune_the_trained_round_0_weights(rewound_trial: tuple[ExperimentConfig, Path, StateSpy],
                                                 mnist1d: DatasetSplits) -> None:
    config, out, _ = rewound_trial
    trained = train_manually(config, mnist1d, TOTAL)
    expected = pruning.prune_layerwise(trained.prunable(), pruning.full_masks(trained.prunable()),
                                       {"fc1.weight": 0.2, "output.weight": 0.1})
    assert_states_equal(masks_of_round(load_torch(out / "state.pt")["pruned_at"], 1), expected)


def test_round_1_starts_from_snapshot_times_mask(rewound_trial: tuple[ExperimentConfig, Path, StateSpy],
                                                 mnist1d: DatasetSplits) -> None:
    config, out, _ = rewound_trial
    state = load_torch(out / "state.pt")
    assert state["round"] == 2 and state["iteration"] is None
    # the state as round 1 found it: masks from round 0, nothing of round 1 yet
    state.update(round=1, masks=masks_of_round(state["pruned_at"], 1))
    snapshot = load_torch(out / "rewind.pt")
    pop, masks = Trial(config, out, data=mnist1d).start_population(state, "ticket")
    assert_states_equal(masks, state["masks"])
    for name, value in snapshot.items():
        expected = value * masks[name] if name in masks else value
        assert torch.equal(pop.params[name].detach(), expected), name
    assert pruning.density(masks) < 1


def test_later_rounds_resume_the_schedule_at_the_rewind_point(
        rewound_trial: tuple[ExperimentConfig, Path, StateSpy]) -> None:
    _, _, spy = rewound_trial
    assert spy.iterations(0) == sorted(EVAL_POINTS)
    assert spy.iterations(1) == sorted(it for it in EVAL_POINTS if it > REWIND)  # 20, 30, ..., 100, 105
    records = read_rounds(rewound_trial[1])
    assert records[1]["early_stop_iter"] in set(spy.iterations(1))


# -------------------------------------------------------------------------------------- (c) records


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory: pytest.TempPathFactory, make_config: MakeConfig,
                 mnist1d: DatasetSplits) -> tuple[ExperimentConfig, Path, list[dict[str, Any]]]:
    config = make_config()
    out = tmp_path_factory.mktemp("three_rounds")
    returned = run_trial(config, out, mnist1d)
    return config, out, returned


def test_rounds_jsonl_has_one_complete_record_per_round(
        three_rounds: tuple[ExperimentConfig, Path, list[dict[str, Any]]]) -> None:
    config, out, returned = three_rounds
    lines = (out / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(lines) == 3 and [r["round"] for r in records] == [0, 1, 2]
    assert records == returned == load_torch(out / "state.pt")["records"]
    for r in records:
        missing = [f for f in REQUIRED_FIELDS if f not in r]
        assert not missing, f"round {r['round']} lacks {missing}"
        assert isinstance(r["round"], int) and isinstance(r["early_stop_iter"], int)
        assert 0 <= r["val_acc"] <= 1
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["test_acc_at_early_stop"] <= 1
        assert r["early_stop_iter"] in EVAL_POINTS
        assert 0 < r["val_loss_min"] <= r["val_loss"] and r["train_loss"] > 0
        assert r["seconds"] > 0 and r["samples_per_s"] > 0
        assert not any(k.startswith("control") for k in r) and "per_replicate" not in r
        assert r["replicates"] == 1 and r["seeds"] == [config.seed]


def test_density_follows_the_recurrence(three_rounds: tuple[ExperimentConfig, Path, list[dict[str, Any]]]) -> None:
    config, out, _ = three_rounds
    records = read_rounds(out)
    assert records[0]["density"] == 1.0
    for r in records:
        assert r["density"] == pytest.approx(expected_density(config, r["round"]), abs=1e-12)
    assert records[1]["density"] == pytest.approx((1024 + 288) / 1600)  # fc1 40x32 at 20%, output 32x10 at 10%
    assert records[2]["density_by_kind"] == pytest.approx({"fc": 819 / 1280, "output": 259 / 320})
    densities = [r["density"] for r in records]
    assert all(a > b for a, b in zip(densities[:-1], densities[1:], strict=True)), densities


def test_records_learn_above_chance(three_rounds: tuple[ExperimentConfig, Path, list[dict[str, Any]]]) -> None:
    records = read_rounds(three_rounds[1])
    assert all(r["test_acc"] > 0.15 and r["val_acc"] > 0.15 for r in records)


# ------------------------------------------------------------------------------------ (d) rerun


def test_rerun_of_a_finished_trial_recomputes_nothing(
        three_rounds: tuple[ExperimentConfig, Path, list[dict[str, Any]]]) -> None:
    config, out, returned = three_rounds
    state_bytes = (out / "state.pt").read_bytes()
    rewind_bytes = (out / "rewind.pt").read_bytes()
    jsonl = (out / "rounds.jsonl").read_text()
    (out / "rounds.jsonl").unlink()  # derived from state.pt: rewritten, not recomputed
    called: list[str] = []
    trial = Trial(config, out, on_round=lambda _r: called.append("round"),
                  on_eval=lambda *_a: called.append("eval"))  # no data given: it must not need any
    again = trial.run()
    assert again == returned and called == []
    assert (out / "rounds.jsonl").read_text() == jsonl
    assert (out / "state.pt").read_bytes() == state_bytes and (out / "rewind.pt").read_bytes() == rewind_bytes


class Stop(Exception):
    pass


def test_resume_in_process_after_an_interruption(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                 tmp_path: Path) -> None:
    """Interrupted late in round 1 (by an exception from the eval callback), after the round's best validation
    loss: the rerun continues from the last epoch checkpoint, early-stop tracking and optimizer included,
    and gives the records of a straight run."""
    config = make_config({"model.widths": [128], "train.lr": 0.01, "train.epochs": 8, "prune.rounds": 2,
                          "rewind.iteration": 20})
    straight = run_trial(config, tmp_path / "a", mnist1d)
    stop_at = 250  # after the checkpoint at iteration 245 (7 epochs of 35)
    assert straight[1]["early_stop_iter"] < 245, "the test needs the round's best iteration before the checkpoint"

    def interrupt(round_index: int, phase: str, evaluation: Evaluation) -> None:
        if round_index == 1 and evaluation.iteration == stop_at:
            raise Stop

    with pytest.raises(Stop):
        run_trial(config, tmp_path / "b", mnist1d, on_eval=interrupt)
    saved = load_torch(tmp_path / "b" / "state.pt")
    assert (saved["round"], saved["phase"], saved["iteration"]) == (1, "ticket", 245)
    assert len(read_rounds(tmp_path / "b")) == 1
    resumed_rounds: list[int] = []
    resumed = run_trial(config, tmp_path / "b", mnist1d, on_round=lambda r: resumed_rounds.append(r["round"]))
    assert resumed_rounds == [1]
    drop = ("seconds", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in drop} for r in straight]


def test_other_experiment_in_the_same_directory_is_refused(
        three_rounds: tuple[ExperimentConfig, Path, list[dict[str, Any]]]) -> None:
    config, out, _ = three_rounds
    other = config.model_copy(update={"seed": 1})
    with pytest.raises(UserError) as info:
        Trial(other, out)
    assert info.value.key == "--out"
    same_science = config.model_copy(update={"device": "auto"})
    Trial(same_science, out)  # device is not part of the experiment's identity


# ------------------------------------------------------------------------------------ (e) controls


@pytest.mark.parametrize("control", ["reinit", "random_mask"])
def test_controls_report_in_pruned_rounds_only(make_config: MakeConfig, mnist1d: DatasetSplits, tmp_path: Path,
                                               control: str) -> None:
    config = make_config({"control": control, "prune.rounds": 2})
    spy = StateSpy(tmp_path)
    records = run_trial(config, tmp_path, mnist1d, on_eval=spy)
    assert "control_val_acc" not in records[0] and "control_test_acc" not in records[0]
    assert "control" not in records[0]
    r1 = records[1]
    assert r1["control"] == control
    for key in ("control_val_acc", "control_test_acc", "control_val_loss_min", "control_early_stop_iter"):
        assert key in r1, key
    assert 0 <= r1["control_val_acc"] <= 1 and 0 <= r1["control_test_acc"] <= 1
    assert r1["control_val_loss"] != r1["val_loss"], "the control must be a separate training run"
    assert spy.iterations(1, "control") == sorted(EVAL_POINTS)
    control_states = [s for s in spy.states if s["phase"] == "control"]
    assert control_states, "an epoch checkpoint of the control phase was expected"
    for state in control_states:
        for name, mask in state["phase_masks"].items():
            ticket_mask = state["masks"][name]
            assert mask.sum(dim=tuple(range(1, mask.dim()))).tolist() == \
                   ticket_mask.sum(dim=tuple(range(1, mask.dim()))).tolist()
            assert torch.equal(mask, ticket_mask) == (control == "reinit"), name
            assert (state["params"][name][~mask] == 0).all()


def test_reinit_control_starts_from_fresh_weights(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                  tmp_path: Path) -> None:
    config = make_config({"control": "reinit", "prune.rounds": 2})
    run_trial(config, tmp_path, mnist1d)
    state = load_torch(tmp_path / "state.pt")
    state["round"] = 1
    trial = Trial(config, tmp_path, data=mnist1d)
    ticket, masks = trial.start_population(state, "ticket")
    control, control_masks = trial.start_population(state, "control")
    assert_states_equal(control_masks, masks)
    fresh = Population.initialize(build(config, mnist1d), [derived_seed(config.seed, "reinit", 1)], CPU)
    for name in ticket.params:
        expected = fresh.params[name].detach() * masks[name] if name in masks else fresh.params[name].detach()
        assert torch.equal(control.params[name].detach(), expected), name
        assert not torch.equal(control.params[name], ticket.params[name]) or name.endswith("bias")


# ---------------------------------------------------------------------------------- (f) replicates

SEED = 5
REPLICATE_CONFIG = {"prune.rounds": 2, "train.epochs": 2, "seed": SEED}


@pytest.fixture(scope="module")
def stacked_and_single(tmp_path_factory: pytest.TempPathFactory, make_config: MakeConfig, mnist1d: DatasetSplits
                       ) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    stacked = run_trial(make_config({**REPLICATE_CONFIG, "replicates": 3}), tmp_path_factory.mktemp("stacked"),
                        mnist1d)
    singles = [run_trial(make_config({**REPLICATE_CONFIG, "seed": SEED + k}), tmp_path_factory.mktemp(f"single{k}"),
                         mnist1d) for k in range(3)]
    return stacked, singles


TOLERANCE = {"val_acc": 2 / 500, "test_acc": 2 / 1000, "test_acc_at_early_stop": 2 / 1000,
             "val_loss": 1e-3, "val_loss_min": 1e-3, "train_loss": 1e-3, "early_stop_iter": 0}


def test_replicates_match_separate_seeds(
        stacked_and_single: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]) -> None:
    stacked, singles = stacked_and_single
    assert set(TOLERANCE) == set(PER_REPLICATE_METRICS)
    assert len(stacked) == 2
    for r, record in enumerate(stacked):
        assert record["replicates"] == 3 and record["seeds"] == [SEED, SEED + 1, SEED + 2]
        for k, single in enumerate(singles):
            assert record["density"] == single[r]["density"]
            for metric, tol in TOLERANCE.items():
                got, want = record["per_replicate"][metric][k], single[r][metric]
                assert abs(got - want) <= tol, f"round {r} replicate {k} {metric}: {got} vs {want}"


def test_replicates_differ_from_each_other(
        stacked_and_single: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]) -> None:
    stacked, _ = stacked_and_single
    losses = stacked[0]["per_replicate"]["val_loss"]
    assert len(set(losses)) == 3, "each replicate must have its own seed"


def test_replicate_record_has_mean_and_std(
        stacked_and_single: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]) -> None:
    stacked, _ = stacked_and_single
    for record in stacked:
        for metric in PER_REPLICATE_METRICS:
            values = record["per_replicate"][metric]
            assert len(values) == 3
            assert record[metric] == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-12)
            assert record[f"{metric}_std"] == pytest.approx(statistics.pstdev(values), rel=1e-9, abs=1e-12)
        assert record["val_loss_std"] > 0


def test_replicate_reinit_control_matches_separate_seeds(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                         tmp_path: Path) -> None:
    base = {"prune.rounds": 2, "train.epochs": 1, "control": "reinit", "seed": SEED}
    stacked = run_trial(make_config({**base, "replicates": 2}), tmp_path / "stacked", mnist1d)[1]
    singles = [run_trial(make_config({**base, "seed": SEED + k}), tmp_path / f"s{k}", mnist1d)[1] for k in range(2)]
    for metric in ("control_val_loss", "control_val_loss_min", "control_train_loss"):
        assert stacked[metric] == pytest.approx(statistics.fmean(s[metric] for s in singles), abs=1e-4), metric


@pytest.mark.parametrize("control", [
    "reinit",
    "random_mask",
])
def test_replicate_control_start_matches_separate_seeds(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                        tmp_path: Path, control: str) -> None:
    """Replicate k of a stacked run starts its round-1 control from the same masks and weights as a
    replicates: 1 run with seed s+k."""
    base = {"prune.rounds": 2, "train.epochs": 1, "control": control, "seed": SEED}
    stacked_config = make_config({**base, "replicates": 2})
    run_trial(stacked_config, tmp_path / "stacked", mnist1d)
    stacked_state = load_torch(tmp_path / "stacked" / "state.pt")
    stacked_state["round"] = 1
    stacked_pop, stacked_masks = Trial(stacked_config, tmp_path / "stacked", data=mnist1d).start_population(
        stacked_state, "control")
    for k in range(2):
        single_config = make_config({**base, "seed": SEED + k})
        run_trial(single_config, tmp_path / f"s{k}", mnist1d)
        state = load_torch(tmp_path / f"s{k}" / "state.pt")
        for name, mask in state["masks"].items():  # the ticket masks agree (replicates are independent) ...
            assert torch.equal(stacked_state["masks"][name][k], mask[0]), name
        state["round"] = 1
        pop, masks = Trial(single_config, tmp_path / f"s{k}", data=mnist1d).start_population(state, "control")
        for name, mask in masks.items():  # ... and so must the control's
            assert torch.equal(stacked_masks[name][k], mask[0]), f"replicate {k}: control mask of {name}"
        for name, param in pop.params.items():
            assert torch.equal(stacked_pop.params[name][k], param[0]), f"replicate {k}: control start of {name}"


# ------------------------------------------------------------------------------------ other behaviour


def test_global_strategy_densities(make_config: MakeConfig, mnist1d: DatasetSplits, tmp_path: Path) -> None:
    config = make_config({"model.widths": [32, 16], "prune.strategy": "global", "prune.rate": 0.3,
                          "prune.rounds": 3, "train.epochs": 1})
    records = run_trial(config, tmp_path, mnist1d)
    pooled = 40 * 32 + 32 * 16
    for r in records:
        alive_fc = alive_after(pooled, 0.3, r["round"])
        alive_out = alive_after(160, 0.15, r["round"])
        assert r["density"] == pytest.approx((alive_fc + alive_out) / (pooled + 160), abs=1e-12)
        assert r["density_by_kind"]["output"] == pytest.approx(alive_out / 160, abs=1e-12)
    masks = load_torch(tmp_path / "state.pt")["masks"]
    fc1 = masks["fc1.weight"].float().mean().item()
    fc2 = masks["fc2.weight"].float().mean().item()
    assert fc1 != pytest.approx(fc2, abs=1e-3), "one global threshold should prune the two layers unevenly"


def test_no_validation_set_stops_at_the_end(make_config: MakeConfig, data_root: Path, tmp_path: Path) -> None:
    config = make_config({"dataset.val_size": 0, "prune.rounds": 1, "train.epochs": 1})
    record = Trial(config, tmp_path).run()[0]
    assert record["early_stop_iter"] == 4000 // 100
    assert record["test_acc_at_early_stop"] == record["test_acc"]
    assert math.isnan(record["val_loss_min"])


def test_output_rate_zero_leaves_the_output_layer_dense(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                        tmp_path: Path) -> None:
    config = make_config({"prune.output_rate": 0.0, "prune.rounds": 2, "train.epochs": 1})
    records = run_trial(config, tmp_path, mnist1d)
    assert records[1]["density_by_kind"] == {"fc": 1024 / 1280, "output": 1.0}


def test_learning_rate_schedule(make_config: MakeConfig) -> None:
    config = make_config({"train.lr": 0.1, "train.schedule": {"name": "step", "milestones": [50, 80],
                                                              "gamma": 0.1, "warmup": 10}})
    lrs = [learning_rate(config, it) for it in range(TOTAL)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and lrs[49] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.01) and lrs[79] == pytest.approx(0.01) and lrs[80] == pytest.approx(0.001)
    assert all(learning_rate(make_config(), it) == 0.002 for it in range(TOTAL))


def test_derived_seed_is_stable() -> None:
    assert derived_seed(0, "data", 1) == 3146464446346841162
    assert derived_seed(5, "reinit", 2) == 1218542664530914340
    assert 0 <= derived_seed(2**40, "x") < 2**63


def test_data_order_depends_on_seed_and_epoch_only(make_config: MakeConfig, mnist1d: DatasetSplits) -> None:
    config = make_config()
    pops = [Population.initialize(build(config, mnist1d), seeds, CPU) for seeds in ([0], [0, 1])]
    one, two = (PhaseTrainer(config, mnist1d, p, pruning.full_masks(p.prunable()), [0, 1][: p.size])
                for p in pops)
    order_one, order_two = one.epoch_order(2)[0], two.epoch_order(2)[0]
    assert order_one.shape == (35, 1, 100) and order_two.shape == (35, 2, 100)
    assert torch.equal(order_one[:, 0], order_two[:, 0])
    assert not torch.equal(order_two[:, 0], order_two[:, 1]) and not torch.equal(order_one, one.epoch_order(3)[0])
    assert sorted(order_one.flatten().tolist()) == sorted(set(order_one.flatten().tolist()))  # no repeats


# ------------------------------------------------------------------------------ (g) the shipped file


@pytest.mark.slow
def test_shipped_mnist1d_experiment_learns(run_cli: Callable[..., Any], data_root: Path, tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[1] / "sweeps" / "experiments" / "mnist1d_mlp.yaml"
    out = tmp_path / "out"
    result = run_cli("run", shipped, "--set", "prune.rounds=2", "--set", f"dataset.root={data_root}",
                     "--set", "device=cpu", "--set", "runtime.threads=1", "--out", out)
    assert result.returncode == 0, result.stderr
    records = read_rounds(out)
    assert [r["round"] for r in records] == [0, 1]
    assert records[1]["density"] == pytest.approx((alive_after(40 * 256 + 256 * 256, 0.3, 1) + 2176)
                                                  / (40 * 256 + 256 * 256 + 2560), abs=1e-12)
    for r in records:
        assert r["test_acc"] > 0.4 and r["val_acc"] > 0.4, r

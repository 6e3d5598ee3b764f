"""Packs: K different configs trained as one population give each member exactly the rounds it has alone.

For every model in the zoo, three configs that differ in learning rate, warmup/step schedule, momentum,
weight decay, prune rate and strategy, rewind point (so two members start rounds >= 1 late), seed and control
run (a) each alone, as a trial, and (b) together, as one pack; every round's record, the rewind points and the
final weights must agree. In float64 on the CPU, as the replicate tests do: batched and single kernels round
differently, so the comparison is of the arithmetic (1e-9 relative), not of float32 rounding.
Then: a pack killed mid-phase continues as the same pack, or member by member alone, with the same results.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from test_replicates import tiny_data

from lth_sweep.config import MODELS, ExperimentConfig, RewindConfig, build_experiment
from lth_sweep.engine import lottery
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.lottery import Trial
from lth_sweep.engine.pack import Pack, pack_key, split_packs
from lth_sweep.engine.train import Evaluation

ITERATIONS = 4  # per round; 6 steps per epoch
MEMBERS = [  # what differs between the members of the pack
    {"seed": 3, "train": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}, "rewind": {"iteration": 0},
     "prune": {"rate": 0.5}, "control": "none"},
    {"seed": 7, "train": {"lr": 0.02, "momentum": 0.0, "weight_decay": 0.0,
                          "schedule": {"name": "step", "milestones": [3], "gamma": 0.5}},
     "rewind": {"iteration": 1}, "prune": {"rate": 0.3, "strategy": "global"}, "control": "reinit"},
    {"seed": 11, "train": {"lr": 0.08, "momentum": 0.5, "weight_decay": 1e-3, "schedule": {"warmup": 2}},
     "rewind": {"iteration": 2}, "prune": {"rate": 0.6, "output_rate": 0.0}, "control": "random_mask"},
]
COMPARED = ("density", "val_acc", "val_loss", "val_loss_min", "early_stop_iter", "test_acc",
            "test_acc_at_early_stop", "train_loss", "control_val_acc", "control_test_acc", "control_train_loss",
            "control_early_stop_iter", "instability", "stability_path")


@pytest.fixture
def float64() -> Any:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(previous)


def merged(*trees: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged left to right."""
    out: dict[str, Any] = {}
    for tree in trees:
        for key, value in tree.items():
            out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def member_configs(model: str, data: DatasetSplits, dataset: str, members: list[dict[str, Any]] = MEMBERS,
                   **shared: Any) -> list[ExperimentConfig]:
    base = {"device": "cpu", "runtime": {"pack_stacking": "stacked"},  # stacked on the CPU too: what is tested
            "dataset": {"name": dataset, "augment": data.augment},
            "model": {"name": model, "widths": [32, 16]},
            "train": {"optimizer": "sgd", "batch_size": 4, "iterations": ITERATIONS, "eval_every": 2},
            "prune": {"rounds": 2}}
    return [build_experiment(merged(base, shared, member)) for member in members]


def small_data(model: str) -> tuple[DatasetSplits, str]:
    """24 training examples (6 batches of 4), 8 for validation and test."""
    data, dataset = tiny_data(model)
    x = data.train_x[:24]
    return replace(data, train_x=x, train_y=data.train_y[:24], val_x=x[:8], val_y=data.train_y[:8],
                   test_x=x[8:16], test_y=data.train_y[8:16], input_shape=tuple(x.shape[1:])), dataset


def close(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def assert_same_rounds(alone: list[dict[str, Any]], packed: list[dict[str, Any]], what: str) -> None:
    assert len(alone) == len(packed), what
    for mine, theirs in zip(packed, alone, strict=True):
        assert set(mine) == set(theirs), what
        for key in COMPARED:
            if key in theirs:
                assert close(mine[key], theirs[key]), (what, mine["round"], key, mine[key], theirs[key])


def assert_same_files(alone: Path, packed: Path, what: str) -> None:
    for name in ("rewind.pt", "state.pt"):
        a, b = torch.load(alone / name, weights_only=False), torch.load(packed / name, weights_only=False)
        if name == "state.pt":
            assert torch.equal(a["pruned_at"][next(iter(a["pruned_at"]))], b["pruned_at"][next(iter(b["pruned_at"]))])
            a, b = a["masks"], b["masks"]
        for key, tensor in a.items():
            if tensor.is_floating_point():
                torch.testing.assert_close(b[key], tensor, rtol=1e-9, atol=1e-12, msg=f"{what} {name} {key}")
            else:
                assert torch.equal(b[key], tensor), (what, name, key)


def run_alone(configs: list[ExperimentConfig], data: DatasetSplits, root: Path) -> list[list[dict[str, Any]]]:
    return [Trial(c, root / f"alone{k}", data=data).run() for k, c in enumerate(configs)]


def pack_of(configs: list[ExperimentConfig], data: DatasetSplits, root: Path, **callbacks: Any) -> Pack:
    return Pack([Trial(c, root / f"packed{k}", data=data, **callbacks) for k, c in enumerate(configs)])


@pytest.mark.parametrize("model", MODELS)
def test_pack_of_different_configs_trains_each_like_alone(model: str, float64: None, tmp_path: Path) -> None:
    data, dataset = small_data(model)
    # VGG-16 (15M weights, float64): the two members with controls and late starts, one evaluation per phase,
    # to keep the test short
    short = {"members": MEMBERS[1:], "train": {"eval_every": ITERATIONS}} if model == "vgg16" else {}
    configs = member_configs(model, data, dataset, **short)
    assert len({pack_key(c) for c in configs}) == 1
    alone = run_alone(configs, data, tmp_path)
    packed = pack_of(configs, data, tmp_path).run()
    for k in range(len(configs)):
        assert_same_rounds(alone[k], packed[k], f"{model} member {k}")
        assert_same_files(tmp_path / f"alone{k}", tmp_path / f"packed{k}", f"{model} member {k}")
    assert [r.get("control") for r in packed[-1]] == [None, "random_mask"]


@pytest.mark.parametrize("variant", ["adam", "stability", "replicates", "sequential"])
def test_pack_variants_train_each_like_alone(variant: str, float64: None, tmp_path: Path) -> None:
    """Adam (per-row step counts: members start late), stability copies forking at each member's own rewind
    point, members with replicates, and a pack whose members train one after another (a CPU's default)."""
    data, dataset = small_data("mlp")
    shared = {"adam": {"train": {"optimizer": "adam"}}, "stability": {"stability": {"points": 3}},
              "replicates": {"replicates": 2}, "sequential": {"runtime": {"pack_stacking": "sequential"}}}[variant]
    configs = member_configs("mlp", data, dataset, **shared, prune={"rounds": 3})
    alone = run_alone(configs, data, tmp_path)
    packed = pack_of(configs, data, tmp_path).run()
    for k in range(len(configs)):
        assert_same_rounds(alone[k], packed[k], f"{variant} member {k}")
        assert_same_files(tmp_path / f"alone{k}", tmp_path / f"packed{k}", f"{variant} member {k}")


class Interrupt(Exception):
    pass


def interrupt_at(round_index: int, iteration: int):
    def on_eval(r: int, phase: str, evaluation: Evaluation) -> None:
        if r == round_index and phase == "ticket" and evaluation.iteration == iteration:
            raise Interrupt
    return on_eval


@pytest.mark.parametrize("continue_as", ["pack", "alone", "one alone, then the pack"])
def test_killed_pack_continues_packed_or_alone(continue_as: str, float64: None, tmp_path: Path) -> None:
    """Mid-phase saves are per member: interrupted in round 1 past an epoch end, two members are saved at
    iteration 6 and the third, rewound to iteration 7, has not started its phase; the pack (where it joins the
    two as a row that starts late) or each member alone continues."""
    data, dataset = small_data("mlp")
    configs = member_configs("mlp", data, dataset, train={"iterations": 10}, prune={"rounds": 3})
    configs[2] = configs[2].model_copy(update={"rewind": RewindConfig(iteration=7)})
    alone = run_alone(configs, data, tmp_path)
    with pytest.raises(Interrupt):
        pack_of(configs, data, tmp_path, on_eval=interrupt_at(1, 8)).run()
    states = [torch.load(tmp_path / f"packed{k}" / "state.pt", weights_only=False) for k in range(3)]
    assert [(s["round"], s["phase"], s["iteration"]) for s in states] == [(1, "ticket", 6)] * 2 + [(1, "ticket", None)]
    if continue_as == "pack":
        packed = pack_of(configs, data, tmp_path).run()
    elif continue_as == "alone":
        packed = [Trial(c, tmp_path / f"packed{k}", data=data).run() for k, c in enumerate(configs)]
    else:
        Trial(configs[1], tmp_path / "packed1", data=data).run()
        packed = pack_of(configs, data, tmp_path).run()
    for k in range(len(configs)):
        assert_same_rounds(alone[k], packed[k], f"{continue_as} member {k}")
        assert_same_files(tmp_path / f"alone{k}", tmp_path / f"packed{k}", f"{continue_as} member {k}")


def test_a_finished_pack_returns_its_records_without_loading_the_dataset(float64: None, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed sweep reopens finished packs: they only read their folders (a CIFAR load is seconds)."""
    data, dataset = small_data("mlp")
    configs = member_configs("mlp", data, dataset)
    records = pack_of(configs, data, tmp_path).run()

    def no_load(*args: Any) -> None:
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr(lottery, "load_dataset", no_load)
    again = Pack([Trial(c, tmp_path / f"packed{k}") for k, c in enumerate(configs)]).run()
    assert again == records
    with pytest.raises(AssertionError, match="dataset was loaded"):  # one that has rounds to go loads it
        Pack([Trial(c, tmp_path / f"more{k}") for k, c in enumerate(configs)]).run()


def test_configs_that_change_shapes_or_steps_go_to_separate_packs() -> None:
    base = {"device": "cpu", "train": {"batch_size": 8, "iterations": 6}}
    raws = [base, {**base, "seed": 4, "train": {**base["train"], "lr": 0.1}},
            {**base, "model": {"widths": [8]}}, {**base, "train": {**base["train"], "iterations": 7}},
            {**base, "prune": {"rate": 0.4}}]
    configs = [build_experiment(raw) for raw in raws]
    assert split_packs(configs, size=8) == [[0, 1, 4], [2], [3]]
    assert split_packs(configs, size=2) == [[0, 1], [4], [2], [3]]
    with pytest.raises(ValueError, match="must agree"):
        Pack([Trial(configs[0], "/nonexistent/a"), Trial(configs[2], "/nonexistent/b")])


def test_adam_members_resumed_together_keep_their_own_step_counts(float64: None, tmp_path: Path) -> None:
    """Two Adam members with the same settings but for the seed and rewind point, saved at the same iteration of
    round 1: their phases began at different iterations, so their Adam step counts differ, and they continue
    as a pack exactly as each alone."""
    data, dataset = small_data("mlp")
    members = [{"seed": 3, "rewind": {"iteration": 0}}, {"seed": 7, "rewind": {"iteration": 1}}]
    configs = member_configs("mlp", data, dataset, members=members, train={"optimizer": "adam", "iterations": 10},
                             prune={"rounds": 3})
    alone = run_alone(configs, data, tmp_path)
    with pytest.raises(Interrupt):
        pack_of(configs, data, tmp_path, on_eval=interrupt_at(1, 8)).run()
    states = [torch.load(tmp_path / f"packed{k}" / "state.pt", weights_only=False) for k in range(2)]
    assert [s["optimizer"]["steps"][0].tolist() for s in states] == [[6.0], [5.0]]
    packed = pack_of(configs, data, tmp_path).run()
    for k in range(2):
        assert_same_rounds(alone[k], packed[k], f"adam member {k}")
        assert_same_files(tmp_path / f"alone{k}", tmp_path / f"packed{k}", f"adam member {k}")


@pytest.mark.parametrize("stacking", ["sequential", "stacked"])
def test_after_group_sees_each_members_round_as_soon_as_it_is_done(stacking: str, float64: None,
                                                                   tmp_path: Path) -> None:
    """The sweep reports in `after_group`: members trained one after another (a CPU's default) are seen there
    after each member's phase, so a finished round is never held back by the rest of its group; a stacked
    group's members finish together, and are seen once per group phase."""
    data, dataset = small_data("mlp")
    members = [{**member, "control": "none"} for member in MEMBERS]
    configs = member_configs("mlp", data, dataset, members=members, runtime={"pack_stacking": stacking})
    rounds: list[int] = [0] * len(configs)

    def on_round(k: int) -> Any:
        def count(record: dict[str, Any]) -> None:
            rounds[k] += 1
        return count

    seen: list[tuple[int, ...]] = []
    trials = [Trial(c, tmp_path / f"packed{k}", data=data, on_round=on_round(k)) for k, c in enumerate(configs)]
    Pack(trials, after_group=lambda: seen.append(tuple(rounds))).run()
    if stacking == "sequential":
        assert seen == [(1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]
    else:
        assert seen == [(1, 1, 1), (2, 2, 2)]

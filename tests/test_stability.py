"""Instability analysis (`stability.points`): the copy is the ticket until the fork and then sees another data
order; the path's ends are the two networks; every model of the zoo records a path, with replicates and a
control (CPU, tiny synthetic inputs); a stability run killed with SIGKILL resumes to the same records."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_resume import comparable, kill_when, read_state, rounds_written

from lth_sweep.config import MODELS, ExperimentConfig, ModelConfig, build_experiment
from lth_sweep.engine import pruning, stability
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.lottery import Trial
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import EarlyStop, PhaseTrainer
from lth_sweep.errors import UserError
from lth_sweep.sweep.objectives import objective_value, stable_matching_density
from lth_sweep.sweep.schema import ObjectiveConfig, load_sweep, objective_metrics

CPU = torch.device("cpu")
MakeConfig = Callable[..., ExperimentConfig]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_points_must_be_zero_or_at_least_three(make_config: MakeConfig) -> None:
    for points in (1, 2):
        with pytest.raises(UserError) as err:
            make_config({"stability.points": points})
        assert err.value.key == "stability.points"
    assert make_config({"stability.points": 3}).stability.points == 3


def test_off_leaves_the_config_hash_alone(make_config: MakeConfig) -> None:
    assert "stability" not in make_config().science_dict()
    assert make_config({"stability.points": 5}).config_hash() != make_config().config_hash()


def trainer_with_copies(config: ExperimentConfig, data: DatasetSplits, fork_at: int) -> PhaseTrainer:
    pop = Population.initialize(lambda: build_model(config.model, data.input_shape, 10), [0], CPU)
    pop, masks = stability.with_copies(pop, pruning.full_masks(pop.prunable()))
    return PhaseTrainer(config, data, pop, masks, [0], stability.copy_seeds([0]), fork_at=fork_at)


def test_the_copy_sees_its_members_batches_until_the_fork_and_its_own_after(make_config: MakeConfig,
                                                                            mnist1d: DatasetSplits) -> None:
    trainer = trainer_with_copies(make_config(), mnist1d, fork_at=50)  # 35 steps per epoch: fork in epoch 1
    idx0, idx1 = trainer.epoch_order(0)[0], trainer.epoch_order(1)[0]
    assert torch.equal(idx0[:, 0], idx0[:, 1])
    assert torch.equal(idx1[:15, 0], idx1[:15, 1])  # iterations 35..49
    assert not torch.equal(idx1[15:, 0], idx1[15:, 1])
    assert (idx1[15:, 0] != idx1[15:, 1]).float().mean() > 0.9


def test_the_copy_is_the_ticket_until_the_fork(make_config: MakeConfig, mnist1d: DatasetSplits) -> None:
    """Equal up to float32 rounding at the fork (the batched kernels round the two members' sums alike but for
    an ulp or so: ~3e-8 after 50 steps), then apart by orders of magnitude more (~1e-2 after 10 more steps)."""
    at_fork = trainer_with_copies(make_config({"train.iterations": 50, "train.epochs": None}), mnist1d, fork_at=50)
    at_fork.run(0, EarlyStop.fresh(2), lambda *_: None)
    after = trainer_with_copies(make_config({"train.iterations": 60, "train.epochs": None}), mnist1d, fork_at=50)
    after.run(0, EarlyStop.fresh(2), lambda *_: None)
    for name, p in at_fork.pop.params.items():
        assert torch.allclose(p[0], p[1], rtol=0, atol=1e-6), name
        assert (after.pop.params[name][0] - after.pop.params[name][1]).abs().max() > 1e-4, name


def tiny_data(model: str) -> DatasetSplits:
    """Random inputs (3x16x16 images for the conv nets, 1x8x8 otherwise), as in test_replicates: 32 to
    train on, 8 to validate, 200 to test (so test errors resolve differences of 0.5%)."""
    image = model not in ("mlp", "lenet_300_100")
    shape = (3, 16, 16) if image else (1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(240, *shape, generator=gen)
    y = torch.randint(0, 10, (240,), generator=gen)
    return DatasetSplits("cifar10" if image else "mnist", x[:32], y[:32], x[32:40], y[32:40], x[40:], y[40:],
                         shape, 10, augment=image)


def test_instability_is_the_barrier_above_the_ends() -> None:
    assert stability.instability([0.1, 0.3, 0.2]) == pytest.approx(0.15)
    assert stability.instability([0.2, 0.15, 0.1]) == pytest.approx(0.05)  # the max may be an end


def test_batchnorm_statistics_are_the_average_over_the_fixed_batches() -> None:
    pop = Population.initialize(lambda: build_model(ModelConfig(name="resnet20"), (3, 8, 8), 10), [0, 1], CPU)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 8, 8, generator=gen) * 2 + 1 for _ in range(3)]
    stability.recompute_batchnorm(pop, batches)
    for k in range(2):
        weight = pop.params["conv.weight"][k].detach()  # the first BatchNorm normalizes this conv's output
        means = torch.stack([F.conv2d(b, weight, padding=1).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
        assert torch.allclose(pop.buffers["bn.running_mean"][k], means, rtol=0, atol=1e-5)
        assert int(pop.buffers["bn.num_batches_tracked"][k]) == 3
    assert all(layer.momentum == 0.1 for layer in stability.batchnorm_layers(pop.template))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_records_a_stability_path(model: str, tmp_path: Path) -> None:
    """Two replicates and a random_mask control, except for the big conv nets (Conv-4/6, VGG-16): one
    replicate and no control there, as their stacked convolutions are slow on a CPU core (VGG-16 ~1 s a step);
    Conv-2 and ResNet-20 cover replicates and controls for conv nets and BatchNorm."""
    data = tiny_data(model)
    heavy = model in ("conv4", "conv6", "vgg16")
    config = build_experiment({
        "device": "cpu", "replicates": 1 if heavy else 2, "dataset": {"name": data.name, "augment": data.augment},
        "model": {"name": model, "widths": [16]},
        "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 8,
                  "iterations": 4 if model == "vgg16" else 6, "eval_every": 2},
        "prune": {"strategy": "global", "rate": 0.5, "output_rate": 0.0, "rounds": 2}, "rewind": {"iteration": 2},
        "control": "none" if heavy else "random_mask", "stability": {"points": 3, "bn_batches": 2},
    })
    records = Trial(config, tmp_path, data=data).run()
    has_bn = model in ("resnet20", "vgg16")
    for record in records:
        for prefix in ("", "control_") if record["round"] and not heavy else ("",):
            path = record[f"{prefix}stability_path"]
            assert len(path) == 3 and all(0 <= e <= 1 for e in path)
            assert math.isfinite(record[f"{prefix}instability"])
        per = record.get("per_replicate") or {key: [record[key]] for key in ("stability_path", "instability",
                                                                             "test_acc")}
        for k in range(config.replicates):
            path = per["stability_path"][k]
            assert per["instability"][k] == pytest.approx(max(path) - (path[0] + path[-1]) / 2)
            if not has_bn:  # the first end is the ticket itself (with BatchNorm, its statistics are re-estimated)
                assert path[0] == pytest.approx(1 - per["test_acc"][k], abs=1e-6)


# ---------------------------------------------------------------------------------------- kill and resume

STABILITY_EXPERIMENT = {"model.widths": [256, 256], "train.epochs": 4, "prune.rounds": 2, "rewind.iteration": 50,
                        "control": "random_mask", "stability.points": 5}


def mid_round_1_ticket(out: Path) -> bool:
    state = read_state(out) if rounds_written(out) >= 1 else None
    return state is not None and state["round"] == 1 and state["phase"] == "ticket" and state["iteration"] is not None


@pytest.mark.slow
def test_killed_stability_run_resumes_to_the_same_records(
        tmp_path: Path, make_raw: Callable[..., dict[str, Any]],
        write_yaml_file: Callable[[Path, dict[str, Any]], Path], popen_cli: Callable[..., Any],
        run_cli: Callable[..., Any], rounds_of: Callable[[Path], list[dict[str, Any]]],
        same: Callable[[Any, Any], bool]) -> None:
    experiment = write_yaml_file(tmp_path / "stability.yaml", make_raw(STABILITY_EXPERIMENT))
    straight = tmp_path / "A"
    assert run_cli("run", experiment, "--out", straight).returncode == 0
    out = tmp_path / "B"
    kill_when(popen_cli("run", experiment, "--out", out), out, mid_round_1_ticket)
    assert read_state(out)["params"]["fc1.weight"].shape[0] == 2  # the ticket and its copy, mid-phase
    result = run_cli("run", experiment, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "# resuming after round 0" in result.stdout
    expected, got = comparable(rounds_of(straight)), comparable(rounds_of(out))
    assert len(got) == 2 and all("instability" in r and "control_instability" in r for r in got[1:])
    for want, have in zip(expected, got, strict=True):
        differing = sorted(k for k in want.keys() | have.keys() if not same(want.get(k), have.get(k)))
        assert not differing, f"round {want['round']}: {[(k, want.get(k), have.get(k)) for k in differing]}"


# ---------------------------------------------------------------------------------------- the objective


def test_stable_matching_density_skips_matching_but_unstable_rounds() -> None:
    records = [{"density": 1.0, "val_acc": 0.90, "instability": 0.01},
               {"density": 0.5, "val_acc": 0.90, "instability": 0.00},
               {"density": 0.25, "val_acc": 0.91, "instability": 0.08},  # matches, but unstable
               {"density": 0.12, "val_acc": 0.70, "instability": 0.00}]  # stable, but does not match
    assert stable_matching_density(records, tolerance=0.01, bound=0.02) == 0.5
    assert stable_matching_density(records, tolerance=0.01, bound=0.1) == 0.25
    assert stable_matching_density(records[:1] + records[2:3], tolerance=0.01, bound=0.0) == 1.0  # none qualifies
    objective = ObjectiveConfig(name="stable_matching_density", tolerance=0.01, instability_bound=0.02)
    assert objective_value(records, objective) == 0.5
    assert objective_metrics(objective) == (["objective"], ["min"])


def test_stable_matching_density_needs_stability_on(tmp_path: Path, make_raw: Callable[..., dict[str, Any]],
                                                    write_yaml_file: Callable[[Path, dict[str, Any]], Path]) -> None:
    sweep = {"experiment": make_raw(), "objective": {"name": "stable_matching_density"},
             "search": {"space": {"rewind.iteration": {"int": [0, 50]}}, "num_samples": 2}}
    with pytest.raises(UserError) as err:
        load_sweep(write_yaml_file(tmp_path / "off.yaml", sweep))
    assert err.value.key == "objective.name" and "stability.points" in err.value.message
    load_sweep(write_yaml_file(tmp_path / "on.yaml", {**sweep, "set": {"stability.points": 3}}))

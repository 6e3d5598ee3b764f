"""Tests that fail on a wrong IMP: what is rewound and what restarts at every round, where the controls
start, what early stopping reports, the models' sizes and init, the CIFAR padding and the survivor rounding.

Real torch, real Trial runs on the tiny MNIST-1D experiment (or tiny synthetic images for BatchNorm);
the only instrumentation is a spy that records what each phase's trainer starts from and what its
optimizer sees at every step, without changing either."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import lth_sweep.engine.train as train_module
from lth_sweep.checkpoint import load_torch
from lth_sweep.config import ExperimentConfig, ModelConfig, build_experiment
from lth_sweep.engine import pruning
from lth_sweep.engine.data import NORMALIZATION, DatasetSplits, augment_batch, black
from lth_sweep.engine.lottery import Trial
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import EarlyStop, Evaluation, PhaseTrainer, evaluate

CPU = torch.device("cpu")
MakeConfig = Callable[..., ExperimentConfig]
TOTAL = 105  # iterations per round of the tiny experiment


@dataclass
class PhaseLog:
    """What one PhaseTrainer (one phase of one round) started from and what its optimizer saw."""

    start_params: dict[str, torch.Tensor]
    start_buffers: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    first_step_state: dict[str, list[torch.Tensor]] | None = None
    last_step_state: dict[str, list[torch.Tensor]] | None = None
    lrs: list[float] = field(default_factory=list)
    end_buffers: dict[str, torch.Tensor] | None = None


@pytest.fixture
def phases(monkeypatch: pytest.MonkeyPatch) -> list[PhaseLog]:
    """Every PhaseTrainer built while the test runs, in order (round 0 ticket, round 1 ticket, [control], ...)."""
    logs: list[PhaseLog] = []
    original_init, original_finish = PhaseTrainer.__init__, PhaseTrainer.finish

    def init(self: PhaseTrainer, config, data, pop, masks, seeds, *args: Any, **kwargs: Any) -> None:
        original_init(self, config, data, pop, masks, seeds, *args, **kwargs)
        log = PhaseLog({n: p.detach().clone() for n, p in pop.params.items()},
                       {n: b.clone() for n, b in pop.buffers.items()}, {n: m.clone() for n, m in masks.items()})
        logs.append(log)
        optimizer = self.optimizer
        step = optimizer.step

        def spied_step(grads: list[torch.Tensor]) -> None:
            if log.first_step_state is None:
                log.first_step_state = optimizer.state_dict()
            log.lrs.append(float(optimizer.lr))
            step(grads)
            log.last_step_state = optimizer.state_dict()

        optimizer.step = spied_step  # type: ignore[method-assign]
        self._phase_log = log

    def finish(self: PhaseTrainer, early_stop: EarlyStop):
        self._phase_log.end_buffers = {n: b.clone() for n, b in self.pop.buffers.items()}
        return original_finish(self, early_stop)

    monkeypatch.setattr(PhaseTrainer, "__init__", init)
    monkeypatch.setattr(PhaseTrainer, "finish", finish)
    return logs


def all_zero(tensors: list[torch.Tensor]) -> bool:
    return all(not t.any() for t in tensors)


# ------------------------------------------------------------------ the optimizer starts fresh every round


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_starts_fresh_at_every_round(make_config: MakeConfig, mnist1d: DatasetSplits, tmp_path: Path,
                                               phases: list[PhaseLog], optimizer: str) -> None:
    changes = {"train.optimizer": "sgd", "train.lr": 0.05, "train.momentum": 0.9} if optimizer == "sgd" else {}
    config = make_config({**changes, "rewind.iteration": 20, "prune.rounds": 3})
    Trial(config, tmp_path, data=mnist1d).run()
    assert len(phases) == 3
    for r, log in enumerate(phases):
        assert log.first_step_state is not None and log.last_step_state is not None
        state = log.first_step_state
        for name, tensors in state.items():  # momentum buffers, or Adam's moments and step count
            assert all_zero(tensors), f"round {r}: optimizer {name} not zero at the first step"
        assert any(not all_zero(t) for t in log.last_step_state.values()), "the optimizer never moved"


# ------------------------------------------------------------ the learning-rate schedule resumes at the rewind point


def test_lr_schedule_resumes_at_the_rewind_point(make_config: MakeConfig, mnist1d: DatasetSplits, tmp_path: Path,
                                                 phases: list[PhaseLog]) -> None:
    """A step schedule (warmup 10, x0.1 at iteration 60) with rewinding to 20: rounds >= 1 train iterations
    20..104, so 40 steps at the full rate (no warmup again) and 45 at a tenth, as read off the optimizer."""
    lr = 0.002
    config = make_config({"rewind.iteration": 20, "prune.rounds": 2,
                          "train.schedule": {"name": "step", "milestones": [60], "gamma": 0.1, "warmup": 10}})
    Trial(config, tmp_path, data=mnist1d).run()
    round0, round1 = (log.lrs for log in phases)
    warmup = [lr * (i + 1) / 10 for i in range(10)]
    assert round0 == pytest.approx(warmup + [lr] * 50 + [lr * 0.1] * 45, rel=1e-6)
    assert round1 == pytest.approx([lr] * 40 + [lr * 0.1] * 45, rel=1e-6)


# ------------------------------------------------------------------------ BatchNorm running statistics are rewound


def tiny_images(n: int = 64, shape: tuple[int, int, int] = (3, 8, 8)) -> DatasetSplits:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=gen) * 2 + 1  # mean 1, std 2: running stats move away from 0 and 1
    y = torch.randint(0, 10, (n,), generator=gen)
    return DatasetSplits("cifar10", x, y, x[:16], y[:16], x[:16], y[:16], shape, 10, augment=False)


def test_batchnorm_statistics_are_rewound(tmp_path: Path, phases: list[PhaseLog]) -> None:
    config = build_experiment({
        "device": "cpu", "dataset": {"name": "cifar10", "augment": False}, "model": {"name": "resnet20"},
        "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 16, "iterations": 12,
                  "eval_every": 4},
        "prune": {"strategy": "global", "rate": 0.2, "output_rate": 0.0, "rounds": 2},
        "rewind": {"iteration": 4},
    })
    Trial(config, tmp_path, data=tiny_images()).run()
    rewind = load_torch(tmp_path / "rewind.pt")
    round0, round1 = phases
    bn_stats = [n for n in round1.start_buffers if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert bn_stats
    for name in bn_stats:
        assert torch.equal(round1.start_buffers[name], rewind[name]), name
    # the rewind point is neither the initial statistics nor the end of round 0
    assert not torch.equal(rewind["bn.running_mean"], round0.start_buffers["bn.running_mean"])
    assert not torch.equal(rewind["bn.running_mean"], round0.end_buffers["bn.running_mean"])
    assert int(rewind["bn.num_batches_tracked"]) == 4


# --------------------------------------------------------------- the random_mask control starts from the rewind weights


def test_random_mask_control_starts_from_the_rewind_weights(make_config: MakeConfig, mnist1d: DatasetSplits,
                                                           tmp_path: Path, phases: list[PhaseLog]) -> None:
    config = make_config({"rewind.iteration": 30, "prune.rounds": 2, "control": "random_mask"})
    Trial(config, tmp_path, data=mnist1d).run()
    rewind = load_torch(tmp_path / "rewind.pt")
    init, ticket, control = phases  # round 0, round 1's ticket, round 1's control
    for name, start in control.start_params.items():
        assert not torch.equal(rewind[name], init.start_params[name]), f"{name}: rewinding to 30 changed nothing"
        expected = rewind[name] * control.masks[name] if name in control.masks else rewind[name]
        assert torch.equal(start, expected), name
    for name, mask in control.masks.items():
        assert not torch.equal(mask, ticket.masks[name]), f"{name}: the control's mask is the ticket's"
        assert mask.sum() == ticket.masks[name].sum(), name


# -------------------------------------------------------------- test_acc_at_early_stop is taken at the minimum val loss


def test_test_acc_at_early_stop_is_at_the_minimum_validation_loss(make_config: MakeConfig,
                                                                  mnist1d: DatasetSplits) -> None:
    """An MLP that overfits: the validation loss turns up while validation accuracy still improves, so the
    evaluation with the lowest loss is not the one with the best accuracy, and their test accuracies differ."""
    config = make_config({"model.widths": [128], "train.lr": 0.01, "train.epochs": 8})
    pop = Population.initialize(lambda: build_model(config.model, mnist1d.input_shape, 10), [0], CPU)
    trainer = PhaseTrainer(config, mnist1d, pop, pruning.full_masks(pop.prunable()), [0])
    seen: list[tuple[float, float, float]] = []  # (val_loss, val_acc, test_acc) at every evaluation

    def on_eval(evaluation: Evaluation) -> None:
        test_acc = evaluate(pop, mnist1d.test_x, mnist1d.test_y, nullcontext)[1].item()
        seen.append((evaluation.val_loss[0], evaluation.val_acc[0], test_acc))

    stop = trainer.run(0, EarlyStop.fresh(1), lambda _next, _stop: None, on_eval)
    by_loss = min(range(len(seen)), key=lambda i: seen[i][0])
    by_acc = max(range(len(seen)), key=lambda i: seen[i][1])
    assert seen[by_loss][2] != seen[by_acc][2], "the case needs different test accuracies at the two points"
    assert stop.iteration[0] == 10 * (by_loss + 1)
    assert stop.val_loss_min[0] == seen[by_loss][0]
    assert stop.test_acc[0] == seen[by_loss][2]


# ----------------------------------------------------------------------------- the models' sizes and init


# Every parameter (biases and BatchNorm included) for 10 classes: LeNet-300-100 on 28x28 (266K in Frankle &
# Carbin 2019), Conv-2/4/6 on 32x32x3 (4.3M and 2.4M there; their Conv-6 total, 1.7M, does not match their
# own layer list, which gives these 2.26M), ResNet-20 and VGG-16 as in open_lth (Frankle et al. 2020:
# 272K and 14.7M).
PARAMETER_COUNTS = {"lenet_300_100": 266_610, "conv2": 4_301_642, "conv4": 2_425_930, "conv6": 2_262_602,
                    "resnet20": 272_474, "vgg16": 14_728_266}


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_counts_are_pinned(name: str) -> None:
    shape = (1, 28, 28) if name == "lenet_300_100" else (3, 32, 32)
    model = build_model(ModelConfig(name=name), shape, 10)
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNTS[name]


def test_glorot_init_is_gaussian_not_uniform() -> None:
    """Glorot-normal: std sqrt(2 / (fan_in + fan_out)) and about 8.3% of the weights beyond sqrt(3) std,
    where Glorot-uniform of the same std has none (its support ends there)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lenet_300_100"), (1, 28, 28), 10)
    for layer in (model.fc1, model.fc2):
        w = layer.weight.detach()
        std = (2 / (w.shape[0] + w.shape[1])) ** 0.5
        assert w.std().item() == pytest.approx(std, rel=0.02)
        beyond = (w.abs() > 3 ** 0.5 * std).float().mean().item()
        assert beyond == pytest.approx(0.0833, abs=0.01)


# ------------------------------------------------------------------------------------ the CIFAR crop padding


def test_cifar_crop_padding_is_black(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's augmented batch, shifted to the corner: its 4-pixel border is -mean/std per channel
    (torchvision's RandomCrop(padding=4) pads the unnormalized image with 0), not 0 (the mean colour)."""
    mean, std = (torch.tensor(v) for v in NORMALIZATION["cifar10"])
    assert torch.allclose(black("cifar10"), -mean / std)
    data = tiny_images(n=16, shape=(3, 8, 8))
    data.augment, data.pad_fill = True, black("cifar10")
    seen: list[torch.Tensor] = []

    def spy(x, shifts, flips, pad=4, fill=None):
        shifts = torch.zeros_like(shifts)  # every crop at the top-left corner: rows 0-3 and columns 0-3 are padding
        out = augment_batch(x, shifts, flips, pad, fill)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(train_module, "augment_batch", spy)
    config = build_experiment({"dataset": {"name": "cifar10", "augment": True}, "model": {"name": "conv2"},
                               "train": {"batch_size": 8, "iterations": 1}})
    pop = Population.initialize(lambda: build_model(config.model, data.input_shape, 10), [0], CPU)
    PhaseTrainer(config, data, pop, pruning.full_masks(pop.prunable()), [0]).run(0, EarlyStop.fresh(1),
                                                                                lambda *_: None)
    border = seen[0][:, :, :4, :]  # [B, C, 4, W]
    assert torch.equal(border, black("cifar10").view(1, 3, 1, 1).expand_as(border))
    # the image itself is untouched: the bottom-right 4x4 of the crop is the image's top-left 4x4
    assert not torch.equal(seen[0][:, :, 4:, 4:], torch.zeros_like(seen[0][:, :, 4:, 4:]))


# ------------------------------------------------------------------------- W&B summaries of test accuracy


def test_wandb_summary_is_the_last_rounds_test_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real W&B, offline: round 1 has the best test accuracy, round 2 (sparser) a worse one. The summary's
    test_acc is round 2's, never the maximum over sparsities; best_by_val_* is round 1 (best val_acc)."""
    import sweep_helpers as h

    from lth_sweep.sweep.objectives import best_by_validation
    from lth_sweep.sweep.schema import WandbConfig
    from lth_sweep.sweep.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(WandbConfig(mode="offline"), "g", "summary-test", "summary-test", {}, tmp_path, None, 10)
    records: list[dict[str, Any]] = []
    for r, (val_acc, test_acc) in enumerate([(0.90, 0.90), (0.93, 0.95), (0.85, 0.80)]):
        records.append({"round": r, "density": 0.8 ** r, "val_acc": val_acc, "test_acc": test_acc,
                        "test_acc_at_early_stop": test_acc - 0.01})
        tracker.log_round(records[-1], best_by_validation(records))
    tracker.finish()
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    summary: dict[str, Any] = {}
    for record in h.wandb_records(run_dir):
        if record.get("type") == "summary":
            summary.update(record["summary"]["update"])
    assert summary["test_acc"] == {"last": 0.80}
    assert summary["test_acc_at_early_stop"] == {"last": pytest.approx(0.79)}
    assert summary["val_acc"] == {"max": 0.93}
    assert summary["best_by_val_round"] == {"last": 1} and summary["best_by_val_test_acc"] == {"last": 0.95}


# ------------------------------------------------------------------ every replicate keeps the same number


def test_pruning_refuses_replicates_with_different_alive_counts() -> None:
    """Pruning reads the alive count once for all replicates: masks that disagree are a bug upstream."""
    weights = {"w": torch.randn(2, 10)}
    masks = {"w": torch.ones(2, 10, dtype=torch.bool)}
    masks["w"][1, :3] = False  # replicate 1 has 7 alive, replicate 0 has 10
    with pytest.raises(AssertionError, match="different alive counts"):
        pruning.prune_layerwise(weights, masks, {"w": 0.2})
    with pytest.raises(AssertionError, match="different alive counts"):
        pruning.prune_global(weights, masks, 0.2)
    with pytest.raises(AssertionError, match="different alive counts"):
        pruning.density(masks)
    # global pruning may split survivors differently between tensors; the totals agree, which is what counts
    split = {"a": torch.tensor([[True, True], [True, False]]), "b": torch.tensor([[True, False], [True, True]])}
    assert pruning.density(split) == 0.75

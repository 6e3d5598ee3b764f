#!/usr/bin/env python
"""Throughput of the training engine against the plain PyTorch loop a researcher would write.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--quick] [--json OUT.json] [--threads N]

Two workloads, on synthetic data (no dataset is loaded), every prunable layer at ~50% density:
  LeNet-300-100, batch 60, 60,000 x 784 random floats, Adam 1.2e-3            (1,000 steps/epoch)
  ResNet-20, batch 128, 50,000 x 3x32x32 random floats, pad-4 crop + flip,
      SGD 0.1, momentum 0.9, weight decay 1e-4                                  (390 steps/epoch)

`reference` rows: DataLoader(TensorDataset) over CPU tensors, batches moved to the device one by one,
an nn.Module with `torch.nn.utils.prune.custom_from_mask`, torch.optim, `loss.item()` every step.
`engine` rows: the real classes (`build_experiment`, `Population`, `PhaseTrainer`); the step loop is
`PhaseTrainer.run` itself. Only `track` (the validation pass at the end of `run`) is replaced by a
device sync, so no evaluation runs in the timed region. Rows are timed in blocks, round-robin, and
a row's step time is the median over its blocks; an engine block is two `run` calls of n1 and n1 + m
steps (each from the start of its own epoch), differenced so that the per-call fixed cost cancels.
The per-epoch data-order cost (`epoch_order`) is timed on its own and added once per epoch.

Needs only torch, numpy, pydantic and PyYAML (no Ray, W&B, Optuna, click, mnist1d or torchvision).

The engine sets global backend flags when a trainer is built on CUDA (TF32, cudnn.benchmark); every
row runs with the flags it was built under (the reference with PyTorch's defaults).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as nn_prune
from torch.utils.data import DataLoader, Dataset, TensorDataset

REPO = Path(__file__).resolve().parents[1]
DENSITY = 0.5  # of every prunable tensor
MASK_SEED = 1234

# ----------------------------------------------------------------------------------------- engine import


def import_engine() -> types.SimpleNamespace:
    """The engine's modules (imported here so that `--help` works without the repository on the path)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from lth_sweep.config import build_experiment
    from lth_sweep.engine import pruning
    from lth_sweep.engine.data import DatasetSplits
    from lth_sweep.engine.models import build_model
    from lth_sweep.engine.population import Population
    from lth_sweep.engine.train import EarlyStop, Evaluation, PhaseTrainer

    return types.SimpleNamespace(pruning=pruning, build_experiment=build_experiment, DatasetSplits=DatasetSplits,
                                 build_model=build_model, Population=Population, EarlyStop=EarlyStop,
                                 Evaluation=Evaluation, PhaseTrainer=PhaseTrainer)


# ----------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    key: str  # "lenet" | "resnet"
    title: str
    experiment: dict[str, Any]  # for build_experiment (dataset name picks the schema's defaults)
    train_shape: tuple[int, ...]  # one example
    n_train: int
    batch_size: int
    augment: bool
    make_optimizer: Callable[[Any], torch.optim.Optimizer]

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size


LENET = Workload(
    key="lenet", title="LeNet-300-100, batch 60, Adam 1.2e-3 (60,000 x 784 synthetic)",
    experiment={"dataset": {"name": "mnist"}, "model": {"name": "lenet_300_100"},
                "train": {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60}},
    train_shape=(784,), n_train=60_000, batch_size=60, augment=False,
    make_optimizer=lambda params: torch.optim.Adam(params, lr=1.2e-3),
)
RESNET = Workload(
    key="resnet", title="ResNet-20, batch 128, SGD 0.1 mom 0.9 wd 1e-4, crop+flip (50,000 x 3x32x32 synthetic)",
    experiment={"dataset": {"name": "cifar10", "augment": True}, "model": {"name": "resnet20"},
                "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                          "batch_size": 128}},
    train_shape=(3, 32, 32), n_train=50_000, batch_size=128, augment=True,
    make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
)


@dataclass
class Row:
    workload: str
    config: str
    k: int
    ms_per_step: float
    s_per_epoch: float
    model_epochs_per_s: float
    speedup: float | None = None  # model-epochs/s over the workload's reference row
    steps_timed: int = 0
    order_ms_per_epoch: float = 0.0  # engine only: epoch_order, included in s_per_epoch
    train_loss: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BackendFlags:
    """The global backend flags a row was built under, put back before each of its timed calls."""

    def __init__(self) -> None:
        self.values = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                       torch.backends.cudnn.benchmark)

    def apply(self) -> None:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = self.values

    def describe(self) -> str:
        return f"tf32 matmul {self.values[0]}, tf32 conv {self.values[1]}, cudnn.benchmark {self.values[2]}"


def synthetic_data(w: Workload, n_eval: int = 1000) -> dict[str, torch.Tensor]:
    """Random floats and labels on the CPU (the reference reads these; the engine gets device copies)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for split, n in (("train", w.n_train), ("val", n_eval), ("test", n_eval)):
        out[f"{split}_x"] = torch.randn((n, *w.train_shape), generator=gen)
        out[f"{split}_y"] = torch.randint(0, 10, (n,), generator=gen)
    return out


def device_splits(engine: types.SimpleNamespace, w: Workload, cpu: dict[str, torch.Tensor],
                  device: torch.device) -> Any:
    return engine.DatasetSplits(
        name=w.experiment["dataset"]["name"],
        **{k: v.to(device) for k, v in cpu.items()},
        input_shape=w.train_shape, num_classes=10, augment=w.augment,
    )


def half_masks(engine: types.SimpleNamespace, pop: Any) -> dict[str, torch.Tensor]:
    """Random masks at DENSITY: layerwise magnitude pruning sets the counts, random_masks_like the places."""
    pruning = engine.pruning
    counted = pruning.prune_layerwise(pop.prunable(), pruning.full_masks(pop.prunable()),
                                      {name: 1 - DENSITY for name in pop.prunable_kinds})
    return pruning.random_masks_like(counted, torch.Generator().manual_seed(MASK_SEED))


# ----------------------------------------------------------------------------------------- reference


class CropFlipDataset(Dataset):
    """torchvision-style per-sample RandomCrop(32, padding=4) + RandomHorizontalFlip, in plain torch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int = 4) -> None:
        self.x, self.y, self.pad = x, y, pad

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.x[i], (self.pad,) * 4)
        h, w = self.x.shape[-2:]
        top, left = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        img = img[:, top:top + h, left:left + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.y[i]


class ReferenceRunner:
    """The loop a researcher writes: DataLoader, prune hooks, torch.optim, `loss.item()` every step."""

    config = "reference"
    k = 1

    def __init__(self, engine: types.SimpleNamespace, w: Workload, cpu: dict[str, torch.Tensor],
                 device: torch.device, workers: int) -> None:
        self.w, self.device = w, device
        template = engine.build_experiment(w.experiment)
        torch.manual_seed(0)
        model = engine.build_model(template.model, w.train_shape, 10)
        # the same kind of masks as the engine rows (replicate 0 of a one-replicate population)
        pop = engine.Population.initialize(lambda: engine.build_model(template.model, w.train_shape, 10), [0],
                                           torch.device("cpu"))
        model.to(device).train()
        for name, mask in half_masks(engine, pop).items():
            module_name, _, param = name.rpartition(".")
            nn_prune.custom_from_mask(model.get_submodule(module_name), param, mask[0].to(device))
        dataset = (CropFlipDataset if w.augment else TensorDataset)(cpu["train_x"], cpu["train_y"])
        self.loader = DataLoader(dataset, batch_size=w.batch_size, shuffle=True, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.model = model
        self.optimizer = w.make_optimizer(model.parameters())
        self.criterion = nn.CrossEntropyLoss()
        self.batches = iter(self.loader)
        self.running, self.steps = 0.0, 0
        self.note = f"DataLoader num_workers={workers}" + (", per-sample crop+flip" if w.augment else "")
        self.flags = BackendFlags()  # PyTorch's defaults: built before any engine trainer
        if device.type == "cuda":
            self.note += f"; {self.flags.describe()}"

    def train(self, n: int) -> None:
        for _ in range(n):
            try:
                xb, yb = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                xb, yb = next(self.batches)
            xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            loss = self.criterion(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.running += loss.item()  # per-step logging, as people do
            self.steps += 1

    def warm(self, n: int) -> None:
        self.flags.apply()
        self.train(n)

    def block(self, m: int) -> float:
        """Seconds per step over m steps."""
        self.flags.apply()
        sync(self.device)
        t0 = time.perf_counter()
        self.train(m)
        sync(self.device)
        return (time.perf_counter() - t0) / m

    def per_epoch_seconds(self) -> float:
        return 0.0  # a new DataLoader iterator per epoch: one randperm, negligible

    def finish(self) -> tuple[float, str]:
        return self.running / max(self.steps, 1), self.note


class EngineRunner:
    """K replicates through the real classes; the timed loop is `PhaseTrainer.run` itself."""

    def __init__(self, engine: types.SimpleNamespace, w: Workload, data: Any, device: torch.device, k: int,
                 graph: bool, bf16: bool, label: str) -> None:
        class TimedTrainer(engine.PhaseTrainer):
            """PhaseTrainer whose end-of-run validation is a device sync: no evaluation is timed."""

            def track(self, iteration: int, early_stop: Any) -> Any:
                sync(device)
                return engine.Evaluation(iteration, [], [])

        self.engine, self.w, self.device, self.k, self.config = engine, w, device, k, label
        self.graph = graph
        spe = w.steps_per_epoch
        config = engine.build_experiment(w.experiment, {
            "replicates": k, "device": device.type, "train.iterations": spe, "train.eval_every": 10 ** 9,
            "runtime.cuda_graph": graph, "runtime.bf16": bf16, "runtime.checkpoint_every_epoch": False,
        })
        seeds = list(range(k))
        pop = engine.Population.initialize(lambda: engine.build_model(config.model, w.train_shape, 10), seeds,
                                           device)
        self.masks = half_masks(engine, pop)
        pop.apply_masks(self.masks)
        self.trainer = TimedTrainer(config, data, pop, self.masks, seeds)
        self.flags = BackendFlags()  # as PhaseTrainer set them
        assert self.trainer.steps_per_epoch == spe, (self.trainer.steps_per_epoch, spe)
        self.next_epoch = 1

    def run(self, start: int, n: int) -> float:
        """Wall seconds of `trainer.run` over iterations start..start+n-1."""
        self.trainer.total = start + n
        sync(self.device)
        t0 = time.perf_counter()
        self.trainer.run(start, self.engine.EarlyStop.fresh(self.k), on_epoch_end=lambda *args: None)
        sync(self.device)
        return time.perf_counter() - t0

    def warm(self, n: int) -> None:
        self.flags.apply()
        self.run(0, n)  # CUDA graphs: 3 eager steps on a side stream, capture at the 4th, then replays

    def block(self, m: int) -> float:
        """Seconds per step: runs of n1 and n1 + m steps, each from the start of its own epoch (one
        `epoch_order` each), differenced so that the per-call cost cancels."""
        spe = self.w.steps_per_epoch
        n1 = max(1, m // 5)
        e = self.next_epoch
        self.next_epoch += 2
        self.flags.apply()
        short = self.run(e * spe, n1)
        long = self.run((e + 1) * spe, n1 + m)
        return max(long - short, 0.0) / m

    def per_epoch_seconds(self) -> float:
        """`epoch_order` (the per-epoch permutations and augmentation draws), median of 3."""
        times = []
        for _ in range(3):
            sync(self.device)
            t0 = time.perf_counter()
            self.trainer.epoch_order(self.next_epoch)
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    def finish(self) -> tuple[float, str]:
        trainer, notes = self.trainer, []
        if self.device.type == "cuda":
            bf16 = trainer.autocast is not nullcontext
            notes.append(f"graph {trainer.graph is not None}, bf16 {bf16}, channels_last "
                         f"{getattr(trainer, 'channels_last', False)}, {self.flags.describe()}")
        if self.graph and self.device.type == "cuda" and trainer.graph is None:
            notes.append("CUDA graph capture FAILED -> eager")
        loss = trainer.train_loss()
        if not all(math.isfinite(v) for v in loss):
            notes.append("non-finite training loss")
        with torch.no_grad():
            leaked = sum(int((p.detach() * ~self.masks[n]).ne(0).sum())
                         for n, p in zip(trainer.mask_names, trainer.masked_params, strict=True))
        if leaked:
            notes.append(f"{leaked} pruned weights nonzero")
        return sum(loss) / len(loss), "; ".join(notes)


def build_runners(engine: types.SimpleNamespace, w: Workload, cpu: dict[str, torch.Tensor], data: Any,
                  device: torch.device, engine_rows: list[tuple[str, int, bool, bool]],
                  workers: int) -> tuple[list[Any], list[Row]]:
    """The reference runner first, then one per engine row; a row that cannot be built is a FAILED row."""
    runners: list[Any] = []
    failures: list[Row] = []
    for label, k, graph, bf16 in [("reference", 1, False, False), *engine_rows]:
        try:
            if label == "reference":
                runners.append(ReferenceRunner(engine, w, cpu, device, workers))
            else:
                runners.append(EngineRunner(engine, w, data, device, k, graph, bf16, label))
        except Exception as err:  # noqa: BLE001 - report the row as failed, measure the others
            print(f"  ! {label}: {type(err).__name__}: {err}".splitlines()[0][:240], flush=True)
            failures.append(failed_row(w, label, k, err))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return runners, failures


def failed_row(w: Workload, label: str, k: int, err: BaseException) -> Row:
    nan = float("nan")
    message = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    return Row(w.key, label, k, nan, nan, nan, note=f"FAILED: {message}")


def measure(w: Workload, runners: list[Any], warmup: int, blocks: int, per_block: int) -> list[Row]:
    """Warm every runner, then time `blocks` rounds of `per_block` steps, round-robin over the runners
    (so that a slow spell of a shared machine hits every row alike); a row's step time is its median.
    A runner that raises becomes a FAILED row and the others go on."""
    failed: dict[int, BaseException] = {}

    def attempt(i: int, fn: Callable[[], Any]) -> Any:
        if i in failed:
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one broken row must not lose the others' numbers
            failed[i] = err
            print(f"\n  ! {runners[i].config}: {type(err).__name__}: {err}".splitlines()[1][:240], flush=True)
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            return None

    t0 = time.perf_counter()
    for i, runner in enumerate(runners):
        attempt(i, lambda runner=runner: runner.warm(warmup))
    print(f"  warm-up {time.perf_counter() - t0:.1f} s; blocks:", end="", flush=True)
    samples: list[list[float]] = [[] for _ in runners]
    for b in range(blocks):
        for i, runner in enumerate(runners):
            value = attempt(i, lambda runner=runner: runner.block(per_block))
            if value is not None:
                samples[i].append(value)
        print(f" {b + 1}", end="", flush=True)
    print(f" ({time.perf_counter() - t0:.1f} s)", flush=True)
    rows = []
    for i, (runner, times) in enumerate(zip(runners, samples, strict=True)):
        if i in failed:
            rows.append(failed_row(w, runner.config, runner.k, failed[i]))
            continue
        step_s = statistics.median(times)
        order_s = runner.per_epoch_seconds()
        epoch_s = step_s * w.steps_per_epoch + order_s
        loss, note = runner.finish()
        rows.append(Row(w.key, runner.config, runner.k, step_s * 1e3, epoch_s, runner.k / epoch_s,
                        steps_timed=blocks * per_block, order_ms_per_epoch=order_s * 1e3, train_loss=loss,
                        note=note, extra={"block_ms_per_step": [round(t * 1e3, 4) for t in times]}))
    return rows


# ----------------------------------------------------------------------------------------- plan and report


@dataclass
class Plan:
    lenet_ks: list[int]  # stacked rows besides K=1
    lenet_graphed_k1: bool
    resnet: bool
    lenet: tuple[int, int, int]  # warmup steps, blocks, timed steps per block
    resnet_timing: tuple[int, int, int]


def make_plan(args: argparse.Namespace, device: torch.device) -> Plan:
    cuda = device.type == "cuda"
    if cuda:
        lenet_ks = [8, 32, 128]
        lenet = (10, 2, 25) if args.quick else (20, 3, 100)  # >= 200 timed steps per row
        resnet = (6, 2, 8) if args.quick else (10, 3, 20)  # >= 50 timed steps per row
    else:
        lenet_ks = [8, 32] if args.cpu_k32 else [8]
        lenet = (10, 3, 20) if args.quick else (20, 5, 80)
        resnet = (1, 1, 2) if args.quick else (2, 1, 5)
    if args.steps:  # total timed steps per row, split over the same number of blocks
        lenet = (lenet[0], lenet[1], max(1, args.steps // lenet[1]))
        resnet = (resnet[0], resnet[1], max(1, args.steps // resnet[1]))
    if args.warmup is not None:
        floor = 5 if cuda else 1  # graph capture happens in the first 4 steps
        lenet = (max(args.warmup, floor), *lenet[1:])
        resnet = (max(args.warmup, floor), *resnet[1:])
    for w, timing in ((LENET, lenet), (RESNET, resnet)):
        if timing[2] + max(1, timing[2] // 5) > w.steps_per_epoch:
            raise SystemExit(f"error: {timing[2]} steps per block do not fit in one {w.key} epoch")
    if args.only == "resnet":
        lenet_ks = []
    return Plan(lenet_ks, cuda, (cuda or args.resnet_cpu) and args.only != "lenet", lenet, resnet)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    cpu_name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu_name
    info["cpu_cores"] = os.cpu_count()
    info["cpu_cores_usable"] = usable
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        props = torch.cuda.get_device_properties(device)
        info["memory_gib"] = round(props.total_memory / 2 ** 30, 1)
    else:
        info["name"] = f"{cpu_name}, {os.cpu_count()} cores ({usable} usable)"
    info["threads"] = torch.get_num_threads()
    return info


class OtherCpuUse:
    """The share of the machine's CPU time used by other processes between start and `share()`:
    busy time from /proc/stat less this process's own CPU time (Linux only; None elsewhere)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        own = sum(os.times()[:4])
        return time.monotonic(), busy, own

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(others, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def fmt_num(value: float) -> str:
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4g}"


def fmt_row(r: Row) -> str:
    if not math.isfinite(r.ms_per_step):
        return f"  {r.config:<26} {r.k:>4} {'-':>9} {'-':>9} {'-':>9} {'-':>11} {'-':>8}  {r.note}"
    speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
    order = "-" if r.config == "reference" else f"{r.order_ms_per_epoch:.1f}"
    return (f"  {r.config:<26} {r.k:>4} {r.ms_per_step:>9.3f} {fmt_num(r.s_per_epoch):>9} {order:>9} "
            f"{fmt_num(r.model_epochs_per_s):>11} {speed:>8}  {r.note}")


HEADER = (f"  {'config':<26} {'K':>4} {'ms/step':>9} {'s/epoch':>9} {'order ms':>9} {'model-ep/s':>11} "
          f"{'vs ref':>8}")


def ok(r: Row) -> bool:
    return math.isfinite(r.model_epochs_per_s)


def best(rows: list[Row], workload: str, pred: Callable[[Row], bool]) -> Row | None:
    """The fastest measured row that matches; a failed row only when every match failed."""
    found = [r for r in rows if r.workload == workload and pred(r)]
    measured = [r for r in found if ok(r)]
    if measured:
        return max(measured, key=lambda r: r.model_epochs_per_s)
    return found[0] if found else None


def checks(rows: list[Row], device: torch.device) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, passed: bool, detail: str, *needed: Row) -> None:
        broken = [r for r in needed if not ok(r)]
        if broken:
            passed, detail = False, "FAILED row(s): " + ", ".join(f"{r.workload} {r.config}" for r in broken)
        out.append({"target": target, "status": "PASS" if passed else "MISS", "detail": detail})

    engine_rows = [r for r in rows if r.config != "reference"]
    if device.type == "cpu":
        ref = best(rows, "lenet", lambda r: r.config == "reference")
        k1 = best(rows, "lenet", lambda r: r.config != "reference" and r.k == 1)
        k8 = best(rows, "lenet", lambda r: r.config != "reference" and r.k == 8)
        if ref and k1:
            ratio = k1.model_epochs_per_s / ref.model_epochs_per_s
            add("CPU LeNet: engine K=1 >= 4x reference", ratio >= 4,
                f"{ratio:.2f}x ({k1.s_per_epoch:.3f} vs {ref.s_per_epoch:.3f} s/epoch)", ref, k1)
        if k1 and k8:
            ratio = k8.model_epochs_per_s / k1.model_epochs_per_s
            add("CPU LeNet: K=8 model-epochs/s >= 1.5x K=1", ratio >= 1.5,
                f"{ratio:.2f}x ({k8.model_epochs_per_s:.3f} vs {k1.model_epochs_per_s:.3f} model-epochs/s)", k1, k8)
        return out
    k1 = best(rows, "lenet", lambda r: r.config != "reference" and r.k == 1)
    if k1:
        add("GPU LeNet: K=1 <= 0.2 s/epoch", k1.s_per_epoch <= 0.2, f"{k1.s_per_epoch:.3f} s/epoch ({k1.config})", k1)
    k128 = best(rows, "lenet", lambda r: r.k == 128)
    if k128:
        add("GPU LeNet: K=128 >= 100 model-epochs/s", k128.model_epochs_per_s >= 100,
            f"{k128.model_epochs_per_s:.1f} model-epochs/s", k128)
    res1 = best(rows, "resnet", lambda r: r.config != "reference" and r.k == 1)
    if res1:
        add("GPU ResNet-20: best single-model row <= 1.0 s/epoch", res1.s_per_epoch <= 1.0,
            f"{res1.s_per_epoch:.3f} s/epoch ({res1.config})", res1)
    if engine_rows:
        rated = [r for r in engine_rows if r.speedup is not None]
        slow = [r for r in rated if r.speedup < 10]
        worst = min(rated, key=lambda r: r.speedup, default=None)
        detail = "" if worst is None else f"lowest {worst.speedup:.1f}x ({worst.workload} {worst.config})"
        if slow:
            detail += "; under 10x: " + ", ".join(f"{r.workload} {r.config} {r.speedup:.1f}x" for r in slow)
        unrated = [r for r in engine_rows if r.speedup is None]
        if unrated:
            detail += "; not rated (row or its reference failed): " + ", ".join(
                f"{r.workload} {r.config}" for r in unrated)
        add("GPU: every engine row >= 10x its reference", not slow and not unrated, detail.lstrip("; "))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    parser.add_argument("--json", metavar="OUT.json", help="write the rows, checks and device info here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 1)")
    parser.add_argument("--cpu-k32", action="store_true", help="CPU: also LeNet K=32")
    parser.add_argument("--resnet-cpu", action="store_true", help="CPU: also ResNet-20 (slow; few steps)")
    parser.add_argument("--resnet-ks", type=int, nargs="+", default=[8],
                        help="CUDA: stacked ResNet-20 rows (default 8; the issue's table asks for 8 32 128)")
    parser.add_argument("--only", choices=("lenet", "resnet"), help="run one workload only")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per row (override)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per row (override)")
    parser.add_argument("--ref-workers", type=int, default=0, help="reference DataLoader num_workers (default 0)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    engine = import_engine()
    plan = make_plan(args, device)
    info = device_info(device)
    started = time.perf_counter()
    other_cpu = OtherCpuUse()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    print(f"lth-sweep engine benchmark  {when}")
    print(f"device: {info['name']}" + (f"  (host CPU: {info['cpu']}, {info['cpu_cores']} cores)"
                                        if device.type == "cuda" else ""))
    print(f"torch {info['torch']}, python {info['python']}, torch threads {info['threads']}, "
          f"masks at density {DENSITY}, reference DataLoader num_workers={args.ref_workers}"
          + (", --quick" if args.quick else ""))
    print(f"1-minute load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    rows: list[Row] = []
    workloads: list[tuple[Workload, list[tuple[str, int, bool, bool]], tuple[int, int, int]]] = []
    if args.only != "resnet":
        lenet_rows = [("engine K=1 eager", 1, False, False)]
        if plan.lenet_graphed_k1:
            lenet_rows.append(("engine K=1 graphed", 1, True, False))
        graph_tag = " graphed" if device.type == "cuda" else ""
        lenet_rows += [(f"engine K={k}{graph_tag}", k, True, False) for k in plan.lenet_ks]
        workloads.append((LENET, lenet_rows, plan.lenet))
    if plan.resnet:
        if device.type == "cuda":
            resnet_rows = [("engine K=1 eager fp32", 1, False, False), ("engine K=1 graphed bf16", 1, True, True)]
            # bf16 autocast is for one model only; stacked conv nets train in TF32
            resnet_rows += [(f"engine K={k} graphed tf32", k, True, True) for k in args.resnet_ks]
        else:
            resnet_rows = [("engine K=1 eager fp32", 1, False, False), ("engine K=8 eager fp32", 8, False, False)]
        workloads.append((RESNET, resnet_rows, plan.resnet_timing))

    for w, engine_rows, (warmup, blocks, per_block) in workloads:
        print(f"\n{w.title}; {w.steps_per_epoch} steps/epoch; per row: warmup {warmup}, then {blocks} x "
              f"{per_block} timed steps (round-robin over rows, median)", flush=True)
        cpu = synthetic_data(w)
        data = device_splits(engine, w, cpu, device)
        runners, build_failures = build_runners(engine, w, cpu, data, device, engine_rows, args.ref_workers)
        measured = measure(w, runners, warmup, blocks, per_block) + build_failures
        ref = next((r for r in measured if r.config == "reference"), None)
        for row in measured:
            if ref is not None and math.isfinite(ref.model_epochs_per_s) and math.isfinite(row.model_epochs_per_s):
                row.speedup = row.model_epochs_per_s / ref.model_epochs_per_s
        rows += measured
        print(HEADER)
        for row in measured:
            print(fmt_row(row), flush=True)
        del runners, data, cpu
        if device.type == "cuda":
            torch.cuda.empty_cache()

    results = checks(rows, device)
    print("\nchecks:" + ("" if results else " none apply to this selection"))
    for c in results:
        print(f"  {c['status']:<4}  {c['target']}: {c['detail']}")
    total = time.perf_counter() - started
    print(f"\ntotal {total:.1f} s")
    others = other_cpu.share()
    if others is not None:
        print(f"other processes used {100 * others:.0f}% of the {os.cpu_count()} CPUs during the run"
              + (" -- the machine was shared: timings are low and noisy" if others > 0.1 else ""))
    if args.json:
        payload = {"date": when, "argv": sys.argv, "device": info, "load_average": os.getloadavg(),
                   "other_cpu_share": others, "density": DENSITY,
                   "ref_workers": args.ref_workers, "quick": args.quick,
                   "rows": [asdict(r) for r in rows], "checks": results, "seconds": total}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(not ok(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

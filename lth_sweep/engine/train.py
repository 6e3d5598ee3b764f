"""Training of one round: the step, the learning-rate schedule, evaluation and early-stop tracking.

The step reads batches straight out of device-resident tensors through a per-epoch permutation,
masks gradients and weights with one `torch._foreach_mul_` each, and never syncs with the host.
On CUDA the whole step (gather, augmentation, forward, backward, optimizer, masking) is captured
once as a CUDA graph and replayed; if capture fails the step runs eagerly (logged once).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lth_sweep.config import ExperimentConfig
from lth_sweep.engine.data import DatasetSplits, augment_batch, draw_augment_params
from lth_sweep.engine.optim import StackedOptimizer, build_optimizer
from lth_sweep.engine.population import Population

log = logging.getLogger(__name__)

EVAL_ROWS = 1 << 14  # replicate-samples per evaluation chunk


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple (seed, purpose, counters), stable across runs and machines."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def learning_rate(config: ExperimentConfig, iteration: int) -> float:
    """The rate used for step `iteration` (0-based): warmup, then step decays at the milestones."""
    schedule = config.train.schedule
    lr = config.train.lr
    if schedule.warmup and iteration < schedule.warmup:
        lr *= (iteration + 1) / schedule.warmup
    if schedule.name == "step":
        lr *= schedule.gamma ** sum(1 for m in schedule.milestones if iteration >= m)
    return lr


@dataclass
class EarlyStop:
    """Per replicate: the minimum validation loss seen, its iteration, and test accuracy there."""

    val_loss_min: list[float]
    iteration: list[int]
    test_acc: list[float]

    @classmethod
    def fresh(cls, replicates: int) -> EarlyStop:
        return cls([math.inf] * replicates, [0] * replicates, [math.nan] * replicates)


@dataclass
class PhaseResult:
    val_acc: list[float]
    val_loss: list[float]
    test_acc: list[float]
    train_loss: list[float]
    early_stop: EarlyStop
    samples: int = 0
    stability_path: list[list[float]] | None = None  # per replicate: test error along ticket -> copy


@dataclass
class Evaluation:
    iteration: int
    val_loss: list[float]
    val_acc: list[float]
    extras: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class RowSettings:
    """What may differ between the rows of one population (the members of a pack): each row's experiment, for
    its learning-rate schedule, momentum and weight decay, and the first iteration it trains."""

    configs: list[ExperimentConfig]
    starts: list[int]
    per_row: bool = False  # each row its own optimizer state even when the settings agree

    @property
    def per_row_state(self) -> bool:
        """Whether rows need their own optimizer step counts (some start later, or `per_row` says so)."""
        return self.per_row or len(set(self.starts)) > 1

    def optimizer_values(self) -> tuple[float | list[float], ...]:
        """(lr, momentum, weight decay): a float each when every row agrees, else one value per row."""
        columns = ([c.train.lr for c in self.configs], [c.train.momentum for c in self.configs],
                   [c.train.weight_decay for c in self.configs])
        return tuple(col[0] if len(set(col)) == 1 else col for col in columns)

    def lr_change_points(self) -> set[int]:
        """Iterations at which some row's learning rate may change (warmup steps, milestones)."""
        points: set[int] = set()
        for config in {c.train.schedule.model_dump_json(): c for c in self.configs}.values():
            points.update(range(config.train.schedule.warmup + 1), config.train.schedule.milestones)
        return points

    def learning_rates(self, iteration: int) -> float | tuple[float, ...]:
        """The rate of step `iteration`: one float when every row has the same, else one per row."""
        rates = tuple(learning_rate(c, iteration) for c in self.configs)
        return rates[0] if len(set(rates)) == 1 else rates

    def late_starts(self, start: int) -> dict[int, list[int]]:
        """Rows that start after `start`, by their first iteration."""
        late: dict[int, list[int]] = {}
        for row, first in enumerate(self.starts):
            if first > start:
                late.setdefault(first, []).append(row)
        return late

    def active(self, iteration: int) -> list[bool]:
        """Whether each row has trained by `iteration` steps (a row that starts later is not measured yet)."""
        return [first < iteration for first in self.starts]


@torch.inference_mode()
def evaluate(pop: Population, x: torch.Tensor, y: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy per replicate on (x, y), in large chunks shared by all replicates."""
    k = pop.size
    loss_sum = torch.zeros(k, device=x.device)
    correct = torch.zeros(k, device=x.device)
    if len(x) == 0:
        return loss_sum.fill_(math.nan), correct.fill_(math.nan)
    pop.train(False)
    chunk = max(256, EVAL_ROWS // k)
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        with autocast():
            logits = pop(xb, shared_input=True).float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1)
        correct += (logits.argmax(-1) == yb).sum(1)
    pop.train(True)
    return loss_sum / len(x), correct / len(x)


class EpochOrders:
    """Epoch orders, the next one drawn on a background thread while the GPU trains on the current
    one (K permutations of the training set cost ~0.3 s at K = 128, a graphed LeNet epoch ~1 s)."""

    def __init__(self, trainer: PhaseTrainer, prefetch: bool) -> None:
        self.trainer = trainer
        self.pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        self.pending: tuple[int, Future] | None = None

    def get(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.pending is not None and self.pending[0] == epoch:
            order = self.pending[1].result()
        else:
            order = self.trainer.epoch_order(epoch)
        if self.pool is not None and (epoch + 1) * self.trainer.steps_per_epoch < self.trainer.total:
            self.pending = (epoch + 1, self.pool.submit(self.trainer.epoch_order, epoch + 1))
        return order

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class PhaseTrainer:
    """Trains a population from iteration `start` to `total` under fixed masks."""

    def __init__(self, config: ExperimentConfig, data: DatasetSplits, pop: Population,
                 masks: dict[str, torch.Tensor], seeds: list[int], copy_seeds: list[int] | None = None,
                 fork_at: int | list[int] = 0, rows: RowSettings | None = None) -> None:
        """`seeds` give the data order of rows 0..K-1; `copy_seeds`, when given, that of rows K..2K-1 (the
        stability copies) from iteration `fork_at` (one for all, or one per copy) on; before it, copy k sees
        row k's batches. `rows` (a pack of different configs) gives each row its own optimizer settings and
        first iteration; without it every row follows `config`."""
        self.config = config
        self.data = data
        self.pop = pop
        self.seeds = seeds
        self.copy_seeds = copy_seeds or []
        self.fork_at = fork_at if isinstance(fork_at, list) else [fork_at] * len(self.copy_seeds)
        self.rows = rows or RowSettings([config] * pop.size, [0] * pop.size)
        self.batch_size = config.train.batch_size
        self.steps_per_epoch = len(data.train_x) // self.batch_size
        self.total = config.iterations_per_round(self.steps_per_epoch)
        self.mask_names = list(masks)
        self.masked_params = [pop.params[n] for n in masks]
        self.masks = [m.to(pop.params[n].dtype) for n, m in masks.items()]
        params = list(pop.params.values())
        self.optimizer: StackedOptimizer = build_optimizer(
            config.train.optimizer, params, *self.rows.optimizer_values(), per_row=self.rows.per_row_state)
        self.lr_changes = self.rows.lr_change_points()
        cuda = pop.device.type == "cuda"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = config.runtime.tf32
            torch.backends.cudnn.allow_tf32 = config.runtime.tf32
            torch.backends.cudnn.benchmark = not config.runtime.deterministic
            torch.backends.cudnn.deterministic = config.runtime.deterministic
        conv_net = "conv" in pop.prunable_kinds.values()
        self.channels_last = cuda and conv_net and config.runtime.channels_last and pop.size == 1
        # bf16 autocast for one model; under vmap (K > 1) autocast hands BatchNorm bf16 inputs with fp32
        # running statistics, which it refuses, so stacked conv nets train in TF32
        use_bf16 = cuda and config.runtime.bf16 and conv_net and pop.size == 1
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
        self.use_graph = cuda and config.runtime.cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        k = pop.size
        self.static_idx = torch.zeros(k, self.batch_size, dtype=torch.long, device=pop.device)
        self.static_shifts = torch.zeros(k, self.batch_size, 2, dtype=torch.long, device=pop.device)
        self.static_flips = torch.zeros(k, self.batch_size, dtype=torch.bool, device=pop.device)
        self.loss_sum = torch.zeros(k, device=pop.device)
        self.loss_steps = torch.zeros(k, device=pop.device)

    # ----------------------------------------------------------------------------------- data

    def member_order(self, seed: int, epoch: int) -> list[torch.Tensor]:
        """One member's batch indices [steps, B] (and crop shifts [steps, B, 2], flips [steps, B])."""
        n, b, steps = len(self.data.train_x), self.batch_size, self.steps_per_epoch
        gen = torch.Generator().manual_seed(derived_seed(seed, "data", epoch))
        draws = [torch.randperm(n, generator=gen)[: steps * b].view(steps, b)]
        if self.data.augment:
            s, f = draw_augment_params(steps * b, gen)
            draws += [s.view(steps, b, 2), f.view(steps, b)]
        return draws

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch indices [steps, K, B] and augmentation draws for one epoch, from the seeds alone."""
        members = [self.member_order(seed, epoch) for seed in self.seeds]
        steps = self.steps_per_epoch
        for k, seed in enumerate(self.copy_seeds):
            before_fork = (epoch * steps + torch.arange(steps)) < self.fork_at[k]
            own = self.member_order(seed, epoch)
            if before_fork.any():  # the copy is its member until the fork: same batches, same draws
                own = [torch.where(before_fork.view(-1, *[1] * (o.dim() - 1)), base, o)
                       for base, o in zip(members[k], own, strict=True)]
            members.append(own)
        device = self.pop.device
        stacked = [torch.stack(parts, 1).to(device) for parts in zip(*members, strict=True)]
        if not self.data.augment:
            return stacked[0], stacked[0], stacked[0]
        return stacked[0], stacked[1], stacked[2]

    # ----------------------------------------------------------------------------------- step

    def _forward_backward(self) -> torch.Tensor:
        k, b = self.static_idx.shape
        x = self.data.train_x[self.static_idx]
        y = self.data.train_y[self.static_idx]
        if self.data.augment:
            flat = augment_batch(x.flatten(0, 1), self.static_shifts.flatten(0, 1), self.static_flips.flatten(),
                                 fill=self.data.pad_fill)
            x = flat.view_as(x)
        if self.channels_last:  # [1, B, C, H, W] -> NHWC for the single model's cuDNN kernels
            x = x[0].contiguous(memory_format=torch.channels_last).unsqueeze(0)
        with self.autocast():
            logits = self.pop(x).float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, b).mean(1)
        # vmapped weight gradients come back transposed; the fused optimizers need the parameters' layout
        grads = [g.contiguous() for g in torch.autograd.grad(loss.sum(), list(self.pop.params.values()))]
        grad_of = dict(zip(self.pop.params, grads, strict=True))
        masked_grads = [grad_of[n] for n in self.mask_names]
        torch._foreach_mul_(masked_grads, self.masks)
        self.optimizer.step(grads)
        with torch.no_grad():
            torch._foreach_mul_(self.masked_params, self.masks)
        self.loss_sum += loss.detach()
        self.loss_steps += 1
        return loss

    def step(self) -> None:
        if not self.use_graph:
            self._forward_backward()
            return
        if self.graph is None and self.eager_steps < 3:
            # warm up on a side stream (as CUDA-graph capture requires), then capture
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward_backward()
            torch.cuda.current_stream().wait_stream(stream)
            self.eager_steps += 1
            return
        if self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):  # records the step without running it
                    self._forward_backward()
                self.graph = graph
            except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager
                log.warning("CUDA graph capture failed (%s); training eagerly", err)
                torch.cuda.synchronize()
                self.use_graph = False
                self._forward_backward()
                return
        self.graph.replay()

    # ----------------------------------------------------------------------------------- loop

    def run(self, start: int, early_stop: EarlyStop,
            on_epoch_end: Callable[[int, EarlyStop], None],
            on_eval: Callable[[Evaluation], None] | None = None,
            before_step: dict[int, Callable[[], None]] | None = None) -> EarlyStop:
        """Trains steps start..total-1, evaluating every `eval_every` steps; calls `on_epoch_end` after each
        full epoch with the next iteration to run, and `before_step[it]` just before step `it` (that is,
        after `it` steps: where round 0 saves its rewind point). Rows whose first iteration comes after
        `start` train along until then, and start there from the weights they hold now and a fresh optimizer."""
        before_step = before_step or {}
        eval_every = self.config.train.eval_every
        spe = self.steps_per_epoch
        order = None
        lr_now = None
        late = self.rows.late_starts(start)
        start_weights = {it: self.pop.rows_state(rows) for it, rows in late.items()}
        orders = EpochOrders(self, prefetch=self.pop.device.type == "cuda")
        for it in range(start, self.total):
            epoch, pos = divmod(it, spe)
            if order is None or pos == 0:
                order = orders.get(epoch)
                self.loss_sum.zero_()
                self.loss_steps.zero_()
            if it in late:
                self.start_rows(late[it], start_weights.pop(it))
            if it in before_step:
                before_step[it]()
            if it == start or it in self.lr_changes:
                lr = self.rows.learning_rates(it)
                if lr != lr_now:
                    self.optimizer.set_lr(lr if isinstance(lr, float) else torch.tensor(lr))
                    lr_now = lr
            self.static_idx.copy_(order[0][pos])
            if self.data.augment:
                self.static_shifts.copy_(order[1][pos])
                self.static_flips.copy_(order[2][pos])
            self.step()
            done = it + 1
            if done % eval_every == 0 or done == self.total:
                evaluation = self.track(done, early_stop)
                if on_eval is not None:
                    on_eval(evaluation)
            if done % spe == 0 and done < self.total:
                on_epoch_end(done, early_stop)
        orders.close()
        return early_stop

    def track(self, iteration: int, early_stop: EarlyStop) -> Evaluation:
        """Evaluates on the validation set; on a new minimum, records test accuracy too."""
        val_loss, val_acc = (t.tolist() for t in evaluate(self.pop, self.data.val_x, self.data.val_y,
                                                          self.autocast))
        active = self.rows.active(iteration)
        improved = [i for i, loss in enumerate(val_loss) if active[i] and loss < early_stop.val_loss_min[i]]
        if improved:
            test_acc = evaluate(self.pop, self.data.test_x, self.data.test_y, self.autocast)[1].tolist()
            for i in improved:
                early_stop.val_loss_min[i] = val_loss[i]
                early_stop.iteration[i] = iteration
                early_stop.test_acc[i] = test_acc[i]
        return Evaluation(iteration, val_loss, val_acc, {"train_loss": self.train_loss()})

    def train_loss(self) -> list[float]:
        """Mean training loss over the steps of the current epoch so far."""
        return (self.loss_sum / self.loss_steps.clamp(min=1)).tolist()

    def start_rows(self, rows: list[int], weights: dict[str, torch.Tensor]) -> None:
        """Rows that start now: back to the weights they held when the phase began, a fresh optimizer, no loss yet."""
        self.pop.load_rows(rows, weights)
        self.optimizer.restart_rows(rows)
        self.loss_sum[rows] = 0
        self.loss_steps[rows] = 0

    def finish(self, early_stop: EarlyStop) -> PhaseResult:
        val_loss, val_acc = (t.tolist() for t in evaluate(self.pop, self.data.val_x, self.data.val_y,
                                                          self.autocast))
        test_acc = evaluate(self.pop, self.data.test_x, self.data.test_y, self.autocast)[1].tolist()
        for i in range(self.pop.size):
            if math.isinf(early_stop.val_loss_min[i]):  # no validation set: the end is the stop
                early_stop.iteration[i] = self.total
                early_stop.test_acc[i] = test_acc[i]
                early_stop.val_loss_min[i] = math.nan
        return PhaseResult(val_acc, val_loss, test_acc, self.train_loss(), early_stop)

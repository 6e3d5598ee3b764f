"""One IMP trial: train dense, prune, rewind, retrain, for `prune.rounds` rounds, resumable at any time.

`Trial` holds one config's files, state and set-up; the schedule itself is `engine/pack.py`'s (a trial alone
is a pack of one, and a trial in a pack writes exactly what it writes alone).

What is rewound at the start of round r >= 1: every parameter (pruned ones stay zero under the new mask)
and every BatchNorm running statistic, to their values after `rewind` iterations of round 0; the
iteration counter, so the learning-rate schedule resumes at the rewind point; and the data order (a
function of the seed and epoch only). What is not rewound: the optimizer, which starts fresh (zero
momentum and Adam moments, Adam's step count from zero), as in open_lth.

With `stability.points` > 0 every phase trains 2K members, the K replicates and then their K stability copies
(engine/stability.py); state.pt holds all 2K mid-phase, rewind.pt and the records only the K replicates.

Files in the trial directory, each written atomically:
  config.yaml    the resolved experiment
  rewind.pt      the rewind snapshot (written once, in round 0)
  state.pt       everything else needed to continue: round, phase, iteration, weights, buffers,
                 optimizer, masks, mask history, early-stop tracking, finished records (after every epoch
                 and round)
  rounds.jsonl   one JSON object per finished round (derived from state.pt)

Masks. `state["masks"]` are the masks of round `state["round"]`, the next round to train: after each round
the next masks are computed, after the last one too, so a finished trial can be extended with more rounds
(`prune.rounds` is not part of the config hash). `state["pruned_at"]` keeps every round's masks in one
uint8 tensor per prunable weight [K, *shape]: the first round trained without that weight, 255 if it was
never pruned; the masks of round r are `pruned_at > r` (`masks_of_round`). Hence at most 254 rounds.
A trial runs or reports `prune.rounds` rounds: a longer trial in the same directory reports its first ones.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lth_sweep.checkpoint import load_torch, save_torch, write_text
from lth_sweep.config import ExperimentConfig, dump_yaml, load_saved_experiment
from lth_sweep.engine import pruning, stability
from lth_sweep.engine.data import DatasetSplits, load_dataset
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import EarlyStop, Evaluation, PhaseResult, derived_seed
from lth_sweep.errors import UserError

STATE_FORMAT = 1
NEVER_PRUNED = 255  # pruned_at value of a weight that is still alive
STATE_FILE, REWIND_FILE = "state.pt", "rewind.pt"
PER_REPLICATE_METRICS = ("val_acc", "val_loss", "val_loss_min", "early_stop_iter", "test_acc",
                         "test_acc_at_early_stop", "train_loss")

# A phase that has not started: nothing of it is saved yet.
ROUND_START: dict[str, Any] = {"phase": "ticket", "iteration": None, "phase_masks": None, "params": None,
                               "buffers": None, "optimizer": None, "early_stop": None, "elapsed": 0.0}

RoundCallback = Callable[[dict[str, Any]], None]
EvalCallback = Callable[[int, str, Evaluation], None]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device", "cuda asked for, but no CUDA device is available here; allowed: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def layer_rates(config: ExperimentConfig, kinds: dict[str, str]) -> dict[str, float]:
    by_kind = {"conv": config.conv_rate(), "fc": config.prune.rate, "output": config.output_rate()}
    return {name: by_kind[kind] for name, kind in kinds.items()}


def next_masks(config: ExperimentConfig, pop: Population, masks: pruning.Masks) -> pruning.Masks:
    """Magnitude pruning of the trained weights, by the configured strategy."""
    kinds = pop.prunable_kinds
    if config.prune.strategy == "global":
        outputs = {name: config.output_rate() for name, kind in kinds.items() if kind == "output"}
        return pruning.prune_global(pop.prunable(), masks, config.prune.rate, outputs)
    return pruning.prune_layerwise(pop.prunable(), masks, layer_rates(config, kinds))


def masks_of_round(pruned_at: pruning.Masks, round_index: int) -> pruning.Masks:
    """The masks round `round_index` trained under, from the mask history."""
    return {name: rounds > round_index for name, rounds in pruned_at.items()}


def record_pruning(pruned_at: pruning.Masks | None, masks: pruning.Masks, round_index: int) -> pruning.Masks:
    """The mask history with `masks` (those of round `round_index`) added: weights they drop get that round."""
    if pruned_at is None:
        pruned_at = {n: torch.full(m.shape, NEVER_PRUNED, dtype=torch.uint8) for n, m in masks.items()}
    return {n: torch.where(~masks[n].cpu() & (rounds == NEVER_PRUNED), round_index, rounds).to(torch.uint8)
            for n, rounds in pruned_at.items()}


def summarize(results: dict[str, list[float]]) -> dict[str, Any]:
    """Replicate means (and std and per-replicate lists when there is more than one)."""
    out: dict[str, Any] = {}
    for key, values in results.items():
        out[key] = statistics.fmean(values) if len(values) > 1 else values[0]
    if len(next(iter(results.values()))) > 1:
        for key, values in results.items():
            out[f"{key}_std"] = statistics.pstdev(values)
        out["per_replicate"] = results
    return out


def phase_metrics(result: PhaseResult) -> dict[str, list[Any]]:
    metrics: dict[str, list[Any]] = {
        "val_acc": result.val_acc, "val_loss": result.val_loss,
        "val_loss_min": result.early_stop.val_loss_min, "early_stop_iter": result.early_stop.iteration,
        "test_acc": result.test_acc, "test_acc_at_early_stop": result.early_stop.test_acc,
        "train_loss": result.train_loss,
    }
    if result.stability_path is not None:
        metrics["instability"] = [stability.instability(path) for path in result.stability_path]
        metrics["stability_path"] = result.stability_path
    return metrics


def summarize_phase(metrics: dict[str, list[Any]]) -> dict[str, Any]:
    """`summarize`, with the stability paths (one list per replicate) averaged point by point."""
    scalars = {k: v for k, v in metrics.items() if k != "stability_path"}
    out = summarize(scalars)
    paths = metrics.get("stability_path")
    if paths is not None:
        out["stability_path"] = [statistics.fmean(values) for values in zip(*paths, strict=True)]
        if len(paths) > 1:
            out["per_replicate"]["stability_path"] = paths
    return out


def replicate_result(result: PhaseResult, rows: list[int]) -> PhaseResult:
    """The results of the rows `rows` of a phase (a member's replicates, without their stability copies)."""
    stop = result.early_stop

    def pick(values: list[Any]) -> list[Any]:
        return [values[r] for r in rows]

    return PhaseResult(pick(result.val_acc), pick(result.val_loss), pick(result.test_acc), pick(result.train_loss),
                       EarlyStop(pick(stop.val_loss_min), pick(stop.iteration), pick(stop.test_acc)),
                       result.samples, result.stability_path)


class Trial:
    """Runs (or continues) one IMP trial in `out_dir`."""

    def __init__(self, config: ExperimentConfig, out_dir: str | Path,
                 on_round: RoundCallback | None = None, on_eval: EvalCallback | None = None,
                 data: DatasetSplits | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.on_round = on_round
        self.on_eval = on_eval
        self.device = resolve_device(config.device)
        self.seeds = [config.seed + k for k in range(config.replicates)]
        self._data = data
        self._data_from: Trial | None = None
        self.check_out_dir()

    # ----------------------------------------------------------------------------- files

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    @property
    def rewind_path(self) -> Path:
        return self.out_dir / REWIND_FILE

    def check_out_dir(self) -> None:
        """An existing directory must hold the same experiment (same config hash)."""
        saved = self.out_dir / "config.yaml"
        if saved.exists():
            previous = load_saved_experiment(saved)
            if previous.config_hash() != self.config.config_hash():
                raise UserError("--out", f"{self.out_dir} holds a different experiment (config "
                                         f"{previous.config_hash()}, this one is {self.config.config_hash()}); "
                                         "choose another --out")

    def records(self) -> list[dict[str, Any]]:
        """The finished rounds this config asks for (a longer trial in this directory reports its first ones)."""
        if not self.state_path.exists():
            return []
        return load_torch(self.state_path)["records"][:self.config.prune.rounds]

    def write_records(self, records: list[dict[str, Any]]) -> None:
        write_text(self.out_dir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def save(self, state: dict[str, Any]) -> None:
        save_torch(self.state_path, state)

    # ----------------------------------------------------------------------------- set-up

    def check(self) -> None:
        """Loads (and checks) the dataset and the model; raises UserError before anything is written."""
        config = self.config
        config.check_schedule(len(self.data.train_x) // config.train.batch_size)
        if not self.prunable_kinds:
            raise UserError("model.name", f"{config.model.name} has no prunable weights")

    @property
    def data(self) -> DatasetSplits:
        if self._data is None:
            source = self._data_from
            self._data = source.data if source is not None else load_dataset(self.config.dataset, self.device)
        return self._data

    def share_data(self, other: Trial) -> None:
        """When this trial first needs its data and was given none, it takes `other`'s (loaded then, once)."""
        if self._data is None:
            self._data_from = other

    @functools.cached_property
    def prunable_kinds(self) -> dict[str, str]:
        return self.build(initialize=False).prunable_kinds()

    def build(self, initialize: bool = True) -> torch.nn.Module:
        return build_model(self.config.model, self.data.input_shape, self.data.num_classes, initialize)

    def fresh_population(self, purpose: str = "init", round_index: int = 0) -> Population:
        seeds = self.seeds if purpose == "init" else [derived_seed(s, purpose, round_index) for s in self.seeds]
        return Population.initialize(self.build, seeds, self.device)

    def loaded_population(self, state: dict[str, torch.Tensor], copies: int = 1) -> Population:
        """`copies` x K members holding `state`'s weights (a rewind point, a mid-phase save): not initialized first."""
        pop = Population.initialize(lambda: self.build(initialize=False), self.seeds * copies, self.device)
        pop.load({n: t.to(self.device) for n, t in state.items()})
        return pop

    def new_state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "config_hash": self.config.config_hash(), "records": [],
                "round": 0, "masks": None, "next_masks": None, "pruned_at": None, "ticket": None, "samples": 0,
                **ROUND_START}

    def start_at_round(self, round_index: int, rewind: dict[str, torch.Tensor], masks: pruning.Masks) -> None:
        """Prepares an empty trial directory so that its next round is `round_index`, from the rewind
        weights `rewind` under `masks` (stacked [K, ...]; how an exported ticket is retrained)."""
        state = self.new_state()
        state.update(round=round_index, masks=masks, pruned_at=record_pruning(None, masks, round_index))
        if round_index > 0:
            save_torch(self.rewind_path, rewind)
        self.save(state)

    def round_masks(self, state: dict[str, Any], pop: Population) -> pruning.Masks:
        """This round's masks: all ones in round 0, then the ones pruned after the previous round."""
        if state["masks"] is None:
            return pruning.full_masks(pop.prunable())
        return {n: m.to(self.device) for n, m in state["masks"].items()}

    # ----------------------------------------------------------------------------- the schedule

    @functools.cached_property
    def rewind_at(self) -> int:
        """The iteration rounds >= 1 rewind to (round 0 saves its weights just before it)."""
        return self.config.rewind_iteration(len(self.data.train_x) // self.config.train.batch_size)

    def run(self) -> list[dict[str, Any]]:
        from lth_sweep.engine.pack import Pack  # the schedule itself: a trial alone is a pack of one

        return Pack([self]).run()[0]

    def prepare(self) -> dict[str, Any]:
        """The state to continue from (a new one, saved, if none): checks the experiment and writes
        config.yaml and rounds.jsonl first; a finished trial is only checked against its directory."""
        config = self.config
        state = load_torch(self.state_path) if self.state_path.exists() else None
        if state is not None and state["round"] >= config.prune.rounds:
            self.write_records(state["records"])
            return state
        if state is not None and state["round"] > 0 and state.get("pruned_at") is None:
            raise UserError("--out", f"{self.state_path} was written by an older lth-sweep that kept no mask "
                                     "history; it cannot be continued: choose another --out")
        self.check()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.out_dir / "config.yaml", dump_yaml(config))
        if state is None:
            state = self.new_state()
            self.save(state)
        self.write_records(state["records"])
        return state

    def save_rewind(self, snapshot: dict[str, torch.Tensor]) -> None:
        save_torch(self.rewind_path, {n: t.cpu() for n, t in snapshot.items()})

    def finish_round(self, state: dict[str, Any], control: dict[str, list[Any]] | None) -> None:
        """Records the round (its ticket in `state`, its control if it had one) and moves on to the next."""
        record = self.make_record(state, control, state["elapsed"])
        state.update(ROUND_START, records=[*state["records"], record], round=state["round"] + 1,
                     masks=state["next_masks"], next_masks=None, ticket=None, samples=0)
        self.save(state)
        self.write_records(state["records"])
        if self.on_round is not None:
            self.on_round(record)

    def make_record(self, state: dict[str, Any], control: dict[str, list[float]] | None,
                    seconds: float) -> dict[str, Any]:
        kinds = self.prunable_kinds
        masks = state["masks"]
        if masks is None:
            record_density, by_kind = 1.0, {kind: 1.0 for kind in set(kinds.values())}
        else:
            record_density, by_kind = pruning.density(masks), pruning.density_by_kind(masks, kinds)
        record: dict[str, Any] = {
            "round": state["round"],
            "density": record_density,
            "density_by_kind": by_kind,
            **summarize_phase(state["ticket"]),
            "seconds": seconds,
            "samples_per_s": state["samples"] / seconds if seconds > 0 else 0.0,
            "replicates": self.config.replicates,
            "seeds": self.seeds,
        }
        if masks is not None and "per_replicate" in record:  # global pruning: each replicate's layers differ
            record["per_replicate"]["density_by_kind"] = [
                pruning.density_by_kind({name: mask[r:r + 1] for name, mask in masks.items()}, kinds)
                for r in range(len(self.seeds))]
        if control is not None:
            summary = summarize_phase(control)
            summary.pop("per_replicate", None)
            record.update({f"control_{k}": v for k, v in summary.items()})
            record["control"] = self.config.control
        return record

    # ----------------------------------------------------------------------------- one phase

    def start_population(self, state: dict[str, Any], phase: str) -> tuple[Population, pruning.Masks]:
        """Where a phase starts: fresh weights (round 0), the rewind point, or the control's weights."""
        round_index = state["round"]
        if round_index == 0:
            pop = self.fresh_population()
            return pop, pruning.full_masks(pop.prunable())
        if phase == "control" and self.config.control == "reinit":
            pop = self.fresh_population("reinit", round_index)
        else:
            pop = self.loaded_population(load_torch(self.rewind_path))
        masks = self.round_masks(state, pop)
        if phase == "control" and self.config.control == "random_mask":
            generators = [torch.Generator().manual_seed(derived_seed(s, "random_mask", round_index))
                          for s in self.seeds]
            masks = pruning.random_masks_per_replicate(masks, generators)
        pop.apply_masks(masks)
        return pop, masks

    def resume_population(self, state: dict[str, Any]) -> tuple[Population, pruning.Masks]:
        copies = 2 if self.config.stability.points else 1
        pop = self.loaded_population({**state["params"], **state["buffers"]}, copies)
        return pop, {n: m.to(self.device) for n, m in state["phase_masks"].items()}

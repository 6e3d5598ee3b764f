"""A pack: several IMP trials, each its own config, trained as one stacked population through the whole schedule.

The members of a pack may differ in anything that keeps the shapes and the step count: learning rate and
schedule, momentum, weight decay, prune rates and strategy, rewind point, seed, control, replicates. What fixes
shapes or steps (dataset, model, optimizer, batch size, iterations per round, rounds, evaluation cadence,
stability analysis, runtime) must agree: `pack_key` is what they share, `split_packs` groups configs by it.

Each member keeps its own trial directory, written exactly as a `Trial` alone writes it (a pack of one *is* a
trial alone): a member killed mid-pack continues alone, or in another pack, and the other way round.

How phases line up. A pack trains, at any time, one group: members at the same round and phase. Members whose
phase starts later (a later rewind point) join as rows that start late: they train along and are set back to
their start weights, with a fresh optimizer, at their first iteration (`PhaseTrainer`). The iteration counter
is absolute (a member rewound to iteration 40 trains iterations 40..T-1), so the data order, learning-rate
schedule and evaluation points of every member are those it has alone. A member resumed mid-phase joins only
members saved at the same iteration (the usual case: a pack saves all its members together) or that have not
started their phase yet and start at or after it; anything else trains as a group of its own, after.

On a CPU a group's members train one after another by default (`runtime.pack_stacking`): a stack is slower per
model there than the models one by one, and a pack still saves what each trial costs a sweep around its
compute. The results are the same either way (tests/test_pack.py).

Row layout of a group's population: every member's replicates, member after member; then, with stability
analysis, every member's copies in the same order (so row r + N is the copy of row r, as stability.py expects).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import torch

from lth_sweep.config import ExperimentConfig
from lth_sweep.engine import stability
from lth_sweep.engine.lottery import ROUND_START, Trial, next_masks, phase_metrics, record_pruning, replicate_result
from lth_sweep.engine.population import Population
from lth_sweep.engine.train import EarlyStop, Evaluation, PhaseResult, PhaseTrainer, RowSettings

# what the members of a pack may differ in (everything else must agree)
MAY_DIFFER = {"seed": True, "replicates": True, "control": True, "rewind": True,
              "train": {"lr", "momentum", "weight_decay", "schedule"},
              "prune": {"strategy", "rate", "conv_rate", "output_rate"}}
PHASE_ORDER = {"ticket": 0, "control": 1}


def pack_key(config: ExperimentConfig) -> str:
    """What every member of a pack must share, as JSON (configs with equal keys can be packed)."""
    return config.model_dump_json(exclude=MAY_DIFFER)


def split_packs(configs: list[ExperimentConfig], size: int) -> list[list[int]]:
    """Indices of `configs` in packs of at most `size` members that can train together, in order of first
    appearance."""
    by_key: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        by_key.setdefault(pack_key(config), []).append(index)
    return [indices[i:i + size] for indices in by_key.values() for i in range(0, len(indices), size)]


@dataclass
class Member:
    """One trial of the group being trained: its rows in the group's population and where its phase starts."""

    index: int  # in the pack
    trial: Trial
    state: dict[str, Any]
    rows: list[int]  # replicates first, then (with stability analysis) their copies
    start: int  # first iteration this member trains in the phase
    resumed: bool  # continues from a mid-phase save

    @property
    def replicate_rows(self) -> list[int]:
        return self.rows[:self.trial.config.replicates]


class Pack:
    """Runs (or continues) several trials as one population; `run()` returns each one's records."""

    def __init__(self, trials: list[Trial], after_group: Callable[[], None] | None = None) -> None:
        """`after_group` is called after each group phase, and when members train one after another, after each
        member's (the sweep reports there); members whose index is put `in` `stopped` (a set, or anything with
        __contains__) train no further (a scheduler stopped them)."""
        keys = {pack_key(t.config) for t in trials}
        if len(keys) != 1:
            raise ValueError("the configs of a pack must agree on dataset, model, optimizer, batch size, "
                             "iterations, rounds, evaluation, stability and runtime; split them with split_packs")
        self.trials = trials
        self.config = trials[0].config
        for trial in trials[1:]:  # one copy of the data for the whole pack, loaded when a member first needs it
            trial.share_data(trials[0])
        self.states: list[dict[str, Any]] = []
        self.after_group = after_group
        self.stopped: Container[int] = set()

    def run(self) -> list[list[dict[str, Any]]]:
        torch.set_num_threads(self.config.runtime.threads)
        self.states = [trial.prepare() for trial in self.trials]
        while (group := self.next_group()) is not None:
            members, phase = group
            for part in self.parts(members):
                self.run_group(part, phase)
                if self.after_group is not None:
                    self.after_group()
        return [state["records"][:trial.config.prune.rounds] for trial, state in zip(self.trials, self.states,
                                                                                     strict=True)]

    # ----------------------------------------------------------------------------- which members train next

    def phase_start(self, index: int) -> int:
        state, trial = self.states[index], self.trials[index]
        return 0 if state["round"] == 0 else trial.rewind_at

    def next_group(self) -> tuple[list[int], str] | None:
        """The least advanced members that can train together, and their phase."""
        pending = [i for i, (t, s) in enumerate(zip(self.trials, self.states, strict=True))
                   if s["round"] < t.config.prune.rounds and i not in self.stopped]
        if not pending:
            return None
        first = min(pending, key=lambda i: (self.states[i]["round"], PHASE_ORDER[self.states[i]["phase"]]))
        where = (self.states[first]["round"], self.states[first]["phase"])
        same = [i for i in pending if (self.states[i]["round"], self.states[i]["phase"]) == where]
        resumed = [i for i in same if self.states[i]["iteration"] is not None]
        if not resumed:
            return same, where[1]
        at = min(self.states[i]["iteration"] for i in resumed)
        group = [i for i in same if self.states[i]["iteration"] == at
                 or (self.states[i]["iteration"] is None and self.phase_start(i) >= at)]
        return group, where[1]

    # ----------------------------------------------------------------------------- one phase of a group

    def build_members(self, group: list[int], phase: str) -> tuple[list[Member], Population, dict, EarlyStop]:
        """The group's population (replicates, then copies), masks, early-stop tracking, and each member's rows."""
        halves = 2 if self.config.stability.points else 1
        parts = []
        for i in group:
            trial, state = self.trials[i], self.states[i]
            if state["iteration"] is None:
                pop, masks = trial.start_population(state, phase)
                if halves == 2:
                    pop, masks = stability.with_copies(pop, masks)
                stop, start = EarlyStop.fresh(pop.size), self.phase_start(i)
            else:
                pop, masks = trial.resume_population(state)
                stop, start = EarlyStop(**state["early_stop"]), state["iteration"]
            parts.append((i, pop, masks, stop, start))
        n_rows = sum(pop.size for _, pop, _, _, _ in parts) // halves
        members, offset = [], 0
        for i, pop, _, _, start in parts:
            size = pop.size // halves
            rows = [offset + r for r in range(size)]
            if halves == 2:
                rows += [n_rows + row for row in rows]
            members.append(Member(i, self.trials[i], self.states[i], rows, start,
                                  resumed=self.states[i]["iteration"] is not None))
            offset += size
        # replicates of every member, member after member, then their copies in the same order
        blocks = [(part, range(h * part[1].size // halves, (h + 1) * part[1].size // halves))
                  for h in range(halves) for part in parts]
        pop = Population.concat([part[1].members(rows.start, rows.stop) for part, rows in blocks])
        masks = {n: torch.cat([part[2][n][rows.start:rows.stop] for part, rows in blocks]) for n in parts[0][2]}
        early_stop = EarlyStop(*([getattr(part[3], field)[r] for part, rows in blocks for r in rows]
                                 for field in ("val_loss_min", "iteration", "test_acc")))
        return members, pop, masks, early_stop

    @property
    def stacked(self) -> bool:
        setting = self.config.runtime.pack_stacking
        return setting == "stacked" or (setting == "auto" and self.trials[0].device.type == "cuda")

    def parts(self, group: list[int]) -> list[list[int]]:
        """What trains at once: the whole group when stacked, else one member after another (the same phases)."""
        return [group] if self.stacked else [[index] for index in group]

    def run_group(self, group: list[int], phase: str) -> None:
        t0 = time.perf_counter()
        config, data = self.config, self.trials[0].data
        members, pop, masks, early_stop = self.build_members(group, phase)
        elapsed_before = [m.state["elapsed"] for m in members]
        share = [len(m.rows) / pop.size for m in members]
        row_member = {r: m for m in members for r in m.rows}
        row_configs = [row_member[r].trial.config for r in range(pop.size)]
        starts = [row_member[r].start for r in range(pop.size)]
        seeds = [seed for m in members for seed in m.trial.seeds]
        copies = stability.copy_seeds(seeds) if config.stability.points else None
        fork_at = [m.trial.rewind_at for m in members for _ in m.trial.seeds]
        # rows whose phases began at different iterations keep their own optimizer step counts, also when they are
        # all resumed at one iteration now (or when fresh members join resumed ones)
        began = {self.phase_start(m.index) for m in members}
        mixed = any(m.resumed for m in members) and not all(m.resumed for m in members)
        rows = RowSettings(row_configs, starts, per_row=mixed or len(began) > 1)
        trainer = PhaseTrainer(config, data, pop, masks, seeds, copies, fork_at=fork_at, rows=rows)
        if any(m.resumed for m in members):
            saved = trainer.optimizer.state_dict()  # zeros for members that start fresh
            for m in members:
                if m.resumed:
                    for name, tensors in m.state["optimizer"].items():
                        if not tensors or not saved[name]:
                            continue  # SGD without momentum keeps no buffers (and needs none)
                        for mine, theirs in zip(saved[name], tensors, strict=True):
                            mine[m.rows] = theirs.to(mine.device)
            trainer.optimizer.load_state_dict(saved)
        member_masks = [{n: mask[m.rows].cpu() for n, mask in masks.items()} for m in members]

        def save_progress(next_iteration: int, stop: EarlyStop) -> None:
            if not config.runtime.checkpoint_every_epoch:
                return
            optimizer = trainer.optimizer.state_dict()
            for m, own_masks, before, part in zip(members, member_masks, elapsed_before, share, strict=True):
                if m.start >= next_iteration:
                    continue  # not started yet: its phase is still ahead of it
                m.state.update(
                    phase=phase, iteration=next_iteration, phase_masks=own_masks,
                    params={n: p.detach()[m.rows].cpu() for n, p in pop.params.items()},
                    buffers={n: b[m.rows].cpu() for n, b in pop.buffers.items()},
                    optimizer={k: [t[m.rows].cpu() for t in v] for k, v in optimizer.items()},
                    early_stop={"val_loss_min": [stop.val_loss_min[r] for r in m.rows],
                                "iteration": [stop.iteration[r] for r in m.rows],
                                "test_acc": [stop.test_acc[r] for r in m.rows]},
                    elapsed=before + part * (time.perf_counter() - t0))
                m.trial.save(m.state)

        def report_eval(evaluation: Evaluation) -> None:
            for m in members:
                if m.trial.on_eval is None or m.start >= evaluation.iteration:
                    continue  # the replicates' values, not their stability copies'; none before it starts
                rows = m.replicate_rows
                m.trial.on_eval(m.state["round"], phase, Evaluation(
                    evaluation.iteration, [evaluation.val_loss[r] for r in rows],
                    [evaluation.val_acc[r] for r in rows],
                    {n: [v[r] for r in rows] for n, v in evaluation.extras.items()}))

        before_step: dict[int, list] = {}
        for m in members:
            if m.state["round"] == 0:
                before_step.setdefault(m.trial.rewind_at, []).append(self.rewind_saver(m, pop))
        trainer.run(min(m.start for m in members), early_stop, save_progress, report_eval,
                    {it: (lambda calls=calls: [call() for call in calls]) for it, calls in before_step.items()})
        result = trainer.finish(early_stop)
        for m, before, part in zip(members, elapsed_before, share, strict=True):
            own = replicate_result(result, m.replicate_rows)
            own.samples = (trainer.total - self.phase_start(m.index)) * config.train.batch_size * len(m.rows)
            if config.stability.points:
                own.stability_path = stability.stability_path(m.trial.config, data, pop.rows(m.rows),
                                                              trainer.autocast)
            m.state["elapsed"] = before + part * (time.perf_counter() - t0)
            self.end_phase(m, phase, own, pop.members(m.rows[0], m.rows[0] + m.trial.config.replicates))

    @staticmethod
    def rewind_saver(m: Member, pop: Population):
        def save() -> None:
            m.trial.save_rewind(pop.rows(m.replicate_rows).snapshot())
        return save

    def end_phase(self, m: Member, phase: str, result: PhaseResult, replicates: Population) -> None:
        """After a member's phase: the next masks (after its ticket), its control, or its finished round."""
        trial, state = m.trial, m.state
        round_index = state["round"]
        with_control = trial.config.control != "none" and round_index > 0
        if phase == "ticket":
            # after the last round too: a finished trial can be extended with more rounds
            pruned = {n: t.cpu() for n, t in next_masks(trial.config, replicates,
                                                        trial.round_masks(state, replicates)).items()}
            state.update(ROUND_START, phase="control", ticket=phase_metrics(result), samples=result.samples,
                         next_masks=pruned, pruned_at=record_pruning(state.get("pruned_at"), pruned, round_index + 1),
                         elapsed=state["elapsed"])
            if with_control:
                trial.save(state)
                return
            trial.finish_round(state, None)
            return
        state["samples"] += result.samples
        trial.finish_round(state, phase_metrics(result))

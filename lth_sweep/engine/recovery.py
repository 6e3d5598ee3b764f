"""Which saved copy of a trial's engine state to continue from: the most advanced one that can be read.

A trial's state can exist in several places (the engine's own folder, a copy on shared storage, the
checkpoints Tune keeps); any of them may be truncated by a crash or a bad copy. `newest_intact` reads
each, skips the unreadable ones (and says which), and picks the one that got furthest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lth_sweep.checkpoint import copy_file, load_torch
from lth_sweep.engine.lottery import REWIND_FILE, STATE_FILE
from lth_sweep.errors import CorruptFile

PHASES = ("ticket", "control")  # the order of a round's phases in the engine state

# How far a state got: (finished rounds, phase within the round, next iteration or -1 before the phase starts).
Progress = tuple[int, int, int]


@dataclass(frozen=True)
class Candidate:
    """A folder that may hold an engine state (state.pt, rewind.pt, rounds.jsonl, config.yaml)."""

    label: str  # what to call it in the log line: "the engine state", "Tune checkpoint .../checkpoint_000002"
    directory: Path


@dataclass(frozen=True)
class Choice:
    chosen: Candidate | None  # None: no intact state anywhere, start the config over
    progress: Progress | None
    unreadable: tuple[tuple[Candidate, CorruptFile], ...]  # every unreadable copy met on the way, and why


def saved_progress(directory: Path) -> Progress | None:
    """How far the state in `directory` got; None if it holds no state. Raises CorruptFile if its state.pt
    (or the rewind.pt it needs) cannot be read."""
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        return None
    state = load_torch(state_path)
    try:
        progress = (int(state["round"]), PHASES.index(state["phase"]),
                    -1 if state["iteration"] is None else int(state["iteration"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptFile(state_path, f"not an engine state: {type(err).__name__} {err}") from None
    if (directory / REWIND_FILE).exists():
        load_torch(directory / REWIND_FILE)
    return progress


def newest_intact(groups: Iterable[Iterable[Candidate]]) -> Choice:
    """The most advanced readable state over `groups`; each group is ordered newest first, so only its first
    readable member is compared (the rest of it is not even read). On a tie the earlier group wins."""
    chosen: Candidate | None = None
    best: Progress | None = None
    unreadable: list[tuple[Candidate, CorruptFile]] = []
    for group in groups:
        for candidate in group:
            try:
                progress = saved_progress(candidate.directory)
            except CorruptFile as err:
                unreadable.append((candidate, err))
                continue
            if progress is None:
                continue
            if best is None or progress > best:
                chosen, best = candidate, progress
            break
    return Choice(chosen, best, tuple(unreadable))


def adopt(source: Path, engine_dir: Path) -> None:
    """Copies the state files of `source` into `engine_dir`, each atomically (an old file stays whole until its
    replacement is on disk); state.pt goes last, so a kill half-way leaves the old state in charge."""
    files = sorted((p for p in source.iterdir() if p.is_file()), key=lambda p: p.name == STATE_FILE)
    for path in files:
        copy_file(path, engine_dir / path.name)


def set_aside(choice: Choice, engine_dir: Path) -> list[Path]:
    """Renames the unreadable files of `engine_dir` to `<name>.corrupt` (kept for a post-mortem, out of the way
    of a fresh start); returns the new paths."""
    moved = []
    for _, err in choice.unreadable:
        if err.path.parent == engine_dir and err.path.exists():
            target = err.path.with_name(err.path.name + ".corrupt")
            err.path.replace(target)
            moved.append(target)
    return moved


def describe(choice: Choice, engine_label: str) -> str | None:
    """The log line for a choice: None when the engine's own state was intact and newest (nothing to say)."""
    problems = "; ".join(f"{err.path.name} of {candidate.label} is unreadable ({err.reason})"
                         for candidate, err in choice.unreadable)
    if choice.chosen is None:
        if not problems:
            return None
        return f"{problems}; no intact copy is left, so this config starts over (its unreadable files are kept " \
               "as *.corrupt)"
    if choice.chosen.label == engine_label and not problems:
        return None
    rounds, phase, iteration = choice.progress or (0, 0, -1)
    where = f"{rounds} round{'' if rounds == 1 else 's'} done"
    if iteration >= 0:
        where += f", {PHASES[phase]} at iteration {iteration}"
    used = f"continuing from {choice.chosen.label} ({where})"
    return f"{problems}; {used}" if problems else used

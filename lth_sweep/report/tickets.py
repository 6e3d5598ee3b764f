"""Winning tickets: export one round of a trial (its rewind weights under that round's masks) to a file that
plain PyTorch loads with `torch.load(FILE, weights_only=True)`, and retrain such a file for one round.

A ticket file holds:
  state_dict   the model's parameters and buffers at the rewind point, pruned weights zero, named as the
               zoo's modules (`build_model(...).load_state_dict(ticket["state_dict"])`); for round 0, the
               initialization (round 0 trains from there)
  masks        name -> bool tensor, the round's masks of the prunable weights
  config       the trial's resolved experiment (plain data)
  record       that round's metrics for this replicate (controls' values are left out: they are not this ticket's)
  round, replicate, seed, source   where it comes from
Reads storage only: no Ray is started.
"""

from __future__ import annotations

import contextlib
import shlex
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lth_sweep import storage
from lth_sweep.checkpoint import load_torch, save_torch, write_text
from lth_sweep.config import ExperimentConfig, build_experiment, load_saved_experiment
from lth_sweep.engine.data import load_dataset
from lth_sweep.engine.lottery import PER_REPLICATE_METRICS, Trial, masks_of_round
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.errors import CorruptFile, UserError
from lth_sweep.sweep.objectives import no_winning_round, winning_round, winning_words
from lth_sweep.sweep.schema import ObjectiveConfig
from lth_sweep.sweep.spec import SPEC_FILE, LaunchSpec, load_spec

TICKET_FORMAT = 1
TICKET_KEYS = ("format", "state_dict", "masks", "config", "record", "round", "replicate", "seed")
COMPARED = ("density", *PER_REPLICATE_METRICS)  # what a retrained ticket must reproduce


@dataclass
class TrialSource:
    """Where one trial's engine files are, and the objective that picks its default round."""

    engine_dir: str  # a local folder or a URI
    label: str  # the trial id or config hash asked for, or the run folder
    objective: ObjectiveConfig  # the sweep's (the default objective for a run folder)
    rounds: int | None = None  # a sweep trial's own rounds, when its config's store may hold more; None: all
    trial_chosen: str = "asked for"  # or how a sweep's trial was chosen when none was asked for


def is_run_dir(path: str) -> bool:
    """A `lth-sweep run` trial folder (not a sweep)."""
    return not storage.is_uri(path) and (Path(path) / "state.pt").is_file() and (Path(path) / "config.yaml").is_file()


def locate(path: str, trial: str | None) -> TrialSource:
    """The engine folder of TRIAL (a trial id or config hash) in the sweep at `path`, or the run folder `path`."""
    if is_run_dir(path):
        if trial is not None:
            raise UserError("TRIAL", f"{path} is one `lth-sweep run` trial folder; give no TRIAL for it")
        return TrialSource(str(Path(path).resolve()), str(path), ObjectiveConfig())
    if not storage.is_uri(path) and not storage.exists(storage.join(storage.normalize(path), SPEC_FILE)):
        raise UserError("PATH", f"{path} is neither a sweep folder ({SPEC_FILE}) nor a `lth-sweep run` trial folder "
                                "(state.pt and config.yaml)")
    spec = load_spec(path)
    if trial is None:
        return source_of(spec, best_row(spec), f"the sweep's best by objective {spec.sweep.objective.name}")
    engine = storage.join(spec.experiment_dir, "by_config", trial, "engine")
    if storage.exists(storage.join(engine, "state.pt")):
        return TrialSource(engine, trial, spec.sweep.objective)
    from lth_sweep.sweep.status import trial_rows  # reads Tune's files; starts no Ray

    row = next((r for r in trial_rows(spec.experiment_dir) if r["trial_id"] == trial), None)
    if row is None:
        raise UserError("TRIAL", f"no trial id or config hash '{trial}' in the sweep at {spec.experiment_dir} "
                                 f"(`lth-sweep status {shlex.quote(spec.experiment_dir)}` lists them)")
    return source_of(spec, row)


def source_of(spec: LaunchSpec, row: dict[str, Any], chosen: str = "asked for") -> TrialSource:
    """The engine folder of the trial (or pack member) of a `trial_rows` row, and its own rounds."""
    from lth_sweep.sweep.status import own_rounds

    engine = storage.join(spec.experiment_dir, "by_config", str(row["config_hash"]), "engine")
    if row["config_hash"] is None or not storage.exists(storage.join(engine, "state.pt")):
        raise UserError("TRIAL", f"trial {row['trial_id']} has not finished a round yet: no ticket to export")
    return TrialSource(engine, row["trial_id"], spec.sweep.objective, own_rounds(spec, row), chosen)


def best_row(spec: LaunchSpec) -> dict[str, Any]:
    """The status row of the sweep's best trial by its objective, over trials that finished all their rounds (as
    `status` ranks them)."""
    from lth_sweep.sweep.status import status_of  # reads Tune's files; starts no Ray

    status = status_of(spec, top=1)
    listed = f"`lth-sweep status {shlex.quote(spec.experiment_dir)}` lists them"
    if "best" not in status:
        raise UserError("TRIAL", f"objective {spec.sweep.objective.name} ranks no single best trial; give a trial "
                                 f"id or config hash of the sweep ({listed})")
    if not status["best"]:
        raise UserError("TRIAL", f"no trial of the sweep at {spec.experiment_dir} has finished all its rounds yet; "
                                 f"give a trial id or config hash ({listed})")
    return status["best"][0]


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """A local folder with the files of `location` (the folder itself, or a temporary copy of a URI)."""
    if not storage.is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="lth-ticket-") as tmp:
        storage.copy_dir(location, tmp)
        yield Path(tmp)


def load_file(path: Path, what: str) -> Any:
    """A file this command only reads: missing or unreadable is one line naming it (never "delete it")."""
    try:
        return load_torch(path)
    except FileNotFoundError:
        raise UserError(what, f"{path} is missing") from None
    except CorruptFile as err:
        raise UserError(what, f"{path} cannot be read, it is truncated or corrupt ({err.reason})") from None


def default_round(records: list[dict[str, Any]], objective: ObjectiveConfig, label: str) -> int:
    """The winning ticket's round, as the objective scores it; a one-line UserError when no round qualifies."""
    winner = winning_round(records, objective)
    if winner is not None:
        return winner["round"]
    raise UserError("--round", f"{label}: {no_winning_round(records, objective)}, so no round is a winning ticket; "
                               f"name one with --round R (0..{len(records) - 1})")


def replicate_record(record: dict[str, Any], replicate: int) -> dict[str, Any]:
    """One replicate's view of a round record: its own metrics, no spreads, no control values."""
    per_replicate = record.get("per_replicate", {})
    out = {k: v for k, v in record.items()
           if k != "per_replicate" and not k.endswith("_std") and not k.startswith("control")}
    for key, values in per_replicate.items():
        out[key] = values[replicate]
    out["seed"] = record["seeds"][replicate]
    out.pop("seeds", None)
    return out


def initialization(config: ExperimentConfig, seed: int) -> dict[str, torch.Tensor]:
    """The weights a round 0 starts from (loads the dataset: the model is built for its input shape)."""
    cpu = torch.device("cpu")
    data = load_dataset(config.dataset, cpu)
    pop = Population.initialize(lambda: build_model(config.model, data.input_shape, data.num_classes), [seed], cpu)
    return {n: t[0] for n, t in pop.snapshot().items()}


def build_ticket(source: TrialSource, round_index: int | None, replicate: int) -> dict[str, Any]:
    with local_copy(source.engine_dir) as engine:
        config = load_saved_experiment(engine / "config.yaml")
        state = load_file(engine / "state.pt", "PATH")
        records = [r for r in state.get("records") or [] if source.rounds is None or r["round"] < source.rounds]
        if not records:
            raise UserError("TRIAL", f"{source.label} has not finished a round yet: no ticket to export")
        if state.get("pruned_at") is None:
            raise UserError("TRIAL", f"{source.label} was trained by an older lth-sweep that kept no mask history")
        chosen = "asked for" if round_index is not None else winning_words(source.objective)
        if round_index is None:
            round_index = default_round(records, source.objective, source.label)
        if not 0 <= round_index < len(records):
            more = (f" (the trial's own; its config {config.config_hash()} has more, trained by a trial with more "
                    "rounds: give the config hash as TRIAL for those)" if len(state["records"]) > len(records) else "")
            raise UserError("--round", f"{round_index}: allowed are the finished rounds 0..{len(records) - 1}{more}")
        if not 0 <= replicate < config.replicates:
            raise UserError("--replicate", f"{replicate}: allowed 0..{config.replicates - 1} "
                                           f"(the trial trains {config.replicates} replicates)")
        masks = {n: m[replicate].clone() for n, m in masks_of_round(state["pruned_at"], round_index).items()}
        seed = config.seed + replicate
        rewinds_at_init = config.rewind_iteration(config.steps_per_epoch()) == 0
        if round_index == 0 and not rewinds_at_init:
            weights = initialization(config, seed)
        else:
            weights = {n: t[replicate].clone() for n, t in load_file(engine / "rewind.pt", "PATH").items()}
    for name, mask in masks.items():
        weights[name] = weights[name] * mask
    return {"format": TICKET_FORMAT, "state_dict": weights, "masks": masks, "config": config.model_dump(mode="json"),
            "record": replicate_record(records[round_index], replicate), "round": round_index,
            "replicate": replicate, "seed": seed,
            "source": {"path": source.engine_dir, "trial": source.label, "config_hash": config.config_hash(),
                       "trial_chosen": source.trial_chosen, "round_chosen": chosen}}


def export_ticket(path: str, trial: str | None, out: Path, round_index: int | None = None,
                  replicate: int = 0) -> dict[str, Any]:
    """Writes the ticket of TRIAL at `path` to `out`; returns it."""
    if out.is_dir():
        raise UserError("--out", f"{out} is a folder; give the ticket's file name (for example ticket.pt)")
    storage.check_folder(out.parent, "--out")
    ticket = build_ticket(locate(path, trial), round_index, replicate)
    save_torch(out, ticket)  # a disk that fills now: one line naming the file, exit 1
    return ticket


# ------------------------------------------------------------------------------------------------ retraining


def load_ticket(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError("--ticket", f"{path} does not exist or is not a file")
    ticket = load_file(path, "--ticket")
    missing = [k for k in TICKET_KEYS if not isinstance(ticket, dict) or k not in ticket]
    if missing:
        raise UserError("--ticket", f"{path} is not a ticket file (no {', '.join(missing)}); "
                                    "make one with `lth-sweep ticket export`")
    if ticket["format"] != TICKET_FORMAT:
        raise UserError("--ticket", f"{path} is a ticket of format {ticket['format']}; this version reads "
                                    f"format {TICKET_FORMAT}")
    return ticket


def ticket_config(ticket: dict[str, Any]) -> ExperimentConfig:
    """The experiment that retrains the ticket: its trial's, with no control, up to the ticket's round."""
    return build_experiment(ticket["config"], {"control": "none", "prune.rounds": ticket["round"] + 1},
                            prefix="--ticket config")


class Retraining:
    """One round of a ticket, trained in `out` by the engine (rerun on the same `out` to resume).

    A ticket of a trial that stacked K replicates trains inside a stack of K copies of itself, at its own
    replicate's place (the other copies see the other replicates' data orders and are discarded): stacked
    and single kernels round differently, and this is what makes the round come out bit for bit."""

    def __init__(self, path: Path, out: Path | None, on_round: Callable[[dict[str, Any]], None] | None = None):
        self.ticket = load_ticket(path)
        self.path = path
        self.config = ticket_config(self.ticket)
        # the hash of the ticket's trial, as `status` and by_config/ name it (the retraining's own config differs:
        # no control, rounds up to the ticket's)
        self.trial_hash = build_experiment(self.ticket["config"], prefix="--ticket config").config_hash()
        self.replicate = self.ticket["replicate"]
        round_index = self.ticket["round"]
        self.out = out or Path("runs") / f"ticket-{self.trial_hash}-round{round_index}-r{self.replicate}"
        identity = f"config {self.config.config_hash()}, round {round_index}, replicate {self.replicate}\n"
        identity_file = self.out / "ticket.txt"
        storage.check_folder(self.out, "--out")
        if self.out.exists() and any(self.out.iterdir()) and not (
                identity_file.is_file() and identity_file.read_text() == identity):
            raise UserError("--out", f"{self.out} holds something else than a retraining of this ticket; "
                                     "choose another --out")
        self.trial = Trial(self.config, self.out,
                           on_round=None if on_round is None else lambda record: on_round(self.view(record)))
        if not self.trial.state_path.exists():
            k = self.config.replicates
            masks = {n: m.expand(k, *m.shape).clone() for n, m in self.ticket["masks"].items()}
            rewind = {n: t.expand(k, *t.shape).clone() for n, t in self.ticket["state_dict"].items()}
            if round_index == 0:
                self.check_round_0()
            write_text(identity_file, identity)  # first: a folder holding only it is still this ticket's
            self.trial.start_at_round(round_index, rewind, masks)

    def view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The ticket's own values in a round record of the stack."""
        return replicate_record(record, self.replicate)

    def records(self) -> list[dict[str, Any]]:
        return [self.view(r) for r in self.trial.records()]

    def run(self) -> dict[str, Any]:
        """Trains (or finds trained) the round; `out/rounds.jsonl` gets the ticket's record."""
        record = self.view(self.trial.run()[-1])
        self.trial.write_records([record])
        return record

    def check_round_0(self) -> None:
        """Round 0 trains from the seeds' initialization with no mask: a round-0 ticket must be exactly that."""
        init = {n: t[self.replicate].cpu() for n, t in self.trial.fresh_population().snapshot().items()}
        weights = self.ticket["state_dict"]
        dense = all(bool(m.all()) for m in self.ticket["masks"].values())
        same = init.keys() == weights.keys() and all(torch.equal(t, weights[n]) for n, t in init.items())
        if not (dense and same):
            raise UserError("--ticket", f"{self.path} is a round-0 ticket whose weights or masks are not its seed's "
                                        "dense initialization; round 0 can only retrain from that")


def differences(ticket: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The metrics where a retrained round differs from the ticket's record ('key: recorded -> now')."""
    want = ticket["record"]
    out = []
    for key in COMPARED:
        a, b = want.get(key), record.get(key)
        same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # NaN == NaN
        if not same:
            out.append(f"{key}: {a} -> {b}")
    return out

"""The sweep's Optuna study, kept also in an Optuna storage that optuna-dashboard can read while the sweep runs:
a journal file in the sweep folder, or the database of the sweep key `optuna.storage`.

Why a copy and not `OptunaSearch(storage=...)` itself: Tune saves the searcher (its study included) in its
experiment snapshot at most every ~10 s, while a storage-backed study writes every `ask` at once. After a
SIGKILL the restored searcher does not know the trials asked after the last snapshot, asks again, and a
live storage would hold those configs twice (the first copies RUNNING forever). So the searcher keeps its
study in memory, exactly as Tune restores it, and `StudyStore` copies that study into the storage after each
of its events, keyed by the order of asking: a trial asked again after a resume is asked in the place of the one
it replaces, so the storage holds one trial per Tune trial. A COMPLETE trial that the searcher added for a failed
trial a resume completed (user attribute RESUMED_ATTR) is keyed by its Tune trial id: a second resume that
completes it again adds nothing. Storage trouble never fails the sweep: it is logged once and the copy stops."""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING, Any

from lth_sweep import storage as sweep_storage
from lth_sweep.errors import UserError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from lth_sweep.sweep.spec import LaunchSpec

log = logging.getLogger(__name__)

JOURNAL_FILE = "optuna_journal.log"
TUNE_TRIAL_ATTR = "tune_trial_id"
RESUMED_ATTR = "resumed_trial"  # on a COMPLETE trial added for a resumed FAIL one: the FAIL trial's number


def store_location(spec: LaunchSpec) -> str | None:
    """`optuna.storage` if the sweep file gives one, else the journal file in a local sweep folder; None for a
    sweep at a URI without `optuna.storage` (its study lives only in Tune's snapshot)."""
    if spec.sweep.optuna.storage:
        return spec.sweep.optuna.storage
    if sweep_storage.is_uri(spec.experiment_dir):
        return None
    return sweep_storage.join(spec.experiment_dir, JOURNAL_FILE)


def open_storage(location: str) -> BaseStorage:
    """A database URL (sqlite:///, postgresql://, mysql://) or a journal file path."""
    import optuna

    if "://" in location:
        return optuna.storages.RDBStorage(location)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(location))


def check_new_study(spec: LaunchSpec) -> None:
    """Before launch: a database given as `optuna.storage` opens and has no study of this sweep's name yet."""
    location = spec.sweep.optuna.storage
    if not location:
        return
    try:
        open_storage(location).get_study_id_from_name(spec.name)
    except KeyError:
        return  # no such study: good
    except Exception as err:  # noqa: BLE001 - a driver missing, a server down, bad credentials
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError("optuna.storage", f"cannot open {location}: {first}") from None
    raise UserError("optuna.storage", f"{location} already has a study named '{spec.name}'; "
                                      "pick another --name (a resumed sweep uses `lth-sweep resume`)")


def dashboard_command(spec: LaunchSpec) -> str | None:
    """How to open the sweep's study in optuna-dashboard; None when it has no copy (yet)."""
    location = store_location(spec)
    if location is None or ("://" not in location and not sweep_storage.exists(location)):
        return None
    return f"optuna-dashboard {shlex.quote(location)}"


class StudyStore:
    """Copies a study's trials into an Optuna storage; pickles as its location only (it travels in tuner.pkl)."""

    def __init__(self, location: str, study_name: str, directions: list[str]) -> None:
        self.location = location
        self.study_name = study_name
        self.directions = directions
        self._storage: BaseStorage | None = None
        self._study_id: int | None = None
        self._broken = False

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "study_name": self.study_name, "directions": self.directions}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["study_name"], state["directions"])

    def _open(self) -> tuple[BaseStorage, int]:
        import optuna

        if self._storage is None:
            self._storage = open_storage(self.location)
        if self._study_id is None:
            try:
                self._study_id = self._storage.get_study_id_from_name(self.study_name)
            except KeyError:
                directions = [optuna.study.StudyDirection.MINIMIZE if d == "min" else
                              optuna.study.StudyDirection.MAXIMIZE for d in self.directions]
                self._study_id = self._storage.create_new_study(directions, self.study_name)
        return self._storage, self._study_id

    def sync(self, trials: list[FrozenTrial]) -> None:
        """Makes the storage's trials equal the given ones, matched by `keyed` (finished stored trials are
        left as they are: a storage cannot reopen them)."""
        if self._broken:
            return
        try:
            storage, study_id = self._open()
            stored = keyed(storage.get_all_trials(study_id, deepcopy=False))
            for key, trial in keyed(trials).items():
                copy = stored.get(key)
                if copy is None:
                    storage.create_new_trial(study_id, template_trial=trial)
                elif not copy.state.is_finished():
                    update_trial(storage, copy, trial)
        except Exception as err:  # noqa: BLE001 - the dashboard's copy must never stop the sweep
            self._broken = True
            log.warning("the Optuna study is no longer copied to %s: %s", self.location, err)


def keyed(trials: list[FrozenTrial]) -> dict[tuple[str, Any], FrozenTrial]:
    """Trials by what they stand for, in order of number: an asked trial by its place among the asked ones (its
    number while no trial was added for a resumed one), an added one by its Tune trial id."""
    by_key: dict[tuple[str, Any], FrozenTrial] = {}
    asked = 0
    for trial in sorted(trials, key=lambda t: t.number):
        if RESUMED_ATTR in trial.user_attrs:
            by_key[("resumed", trial.user_attrs.get(TUNE_TRIAL_ATTR))] = trial
        else:
            by_key[("asked", asked)] = trial
            asked += 1
    return by_key


def update_trial(storage: BaseStorage, copy: FrozenTrial, trial: FrozenTrial) -> None:
    trial_id = copy._trial_id
    for name, value in trial.params.items():
        if copy.params.get(name) != value:
            dist = trial.distributions[name]
            storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
    for key, value in trial.user_attrs.items():
        if copy.user_attrs.get(key) != value:
            storage.set_trial_user_attr(trial_id, key, value)
    for step, value in trial.intermediate_values.items():
        if step not in copy.intermediate_values:
            storage.set_trial_intermediate_value(trial_id, step, value)
    if trial.state.is_finished():
        storage.set_trial_state_values(trial_id, trial.state, trial.values)

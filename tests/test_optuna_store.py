"""The sweep's Optuna study copied into an Optuna storage (a journal file here): Ray's real OptunaSearch, real
Optuna storages, the searcher pickled and restored the way Tune does it (tuner.pkl with cloudpickle before the
sweep, `save`/`restore` of its state with the experiment snapshot). No Tune run: the SIGKILL-and-resume case
with a real sweep is in test_sweep_resume.py."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import ray.cloudpickle as cloudpickle
from ray import tune

from lth_sweep.errors import UserError
from lth_sweep.sweep.optuna_search import StoredOptunaSearch
from lth_sweep.sweep.optuna_store import TUNE_TRIAL_ATTR, StudyStore, open_storage

SPACE = {"prune.rate": tune.uniform(0.2, 0.5), "train.lr": tune.loguniform(1e-3, 5e-3)}


def new_searcher(journal: Path) -> bytes:
    """A searcher as build_tuner makes it, pickled as Tune's tuner.pkl holds it (before any trial)."""
    searcher = StoredOptunaSearch(StudyStore(str(journal), "imp", ["min"]),
                                  sampler=optuna.samplers.RandomSampler(seed=0), study_name="imp")
    return cloudpickle.dumps(searcher)


def started(pickled: bytes) -> StoredOptunaSearch:
    searcher = cloudpickle.loads(pickled)
    searcher.set_search_properties("objective", "min", SPACE)
    return searcher


def stored_trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    studies = optuna.get_all_study_summaries(open_storage(str(journal)))
    assert [s.study_name for s in studies] == ["imp"]
    return optuna.load_study(study_name="imp", storage=open_storage(str(journal))).get_trials()


def test_the_storage_follows_the_study_live(tmp_path: Path) -> None:
    journal = tmp_path / "optuna_journal.log"
    searcher = started(new_searcher(journal))
    configs = {tid: searcher.suggest(tid) for tid in ("t0", "t1")}
    searcher.on_trial_result("t0", {"objective": 0.5, "training_iteration": 1})
    assert [t.state.name for t in stored_trials(journal)] == ["RUNNING", "RUNNING"]
    searcher.on_trial_complete("t0", {"objective": 0.4, "training_iteration": 2})
    trials = stored_trials(journal)
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]
    assert trials[0].value == 0.4 and trials[0].intermediate_values == {1: 0.5}
    assert [t.user_attrs[TUNE_TRIAL_ATTR] for t in trials] == ["t0", "t1"]
    assert [t.params for t in trials] == [{"prune.rate": c["prune.rate"], "train.lr": c["train.lr"]}
                                          for c in configs.values()]


def test_a_resume_from_a_lagging_snapshot_keeps_one_trial_per_tune_trial(tmp_path: Path) -> None:
    """The snapshot knows 2 trials; the driver asked a third and was killed. The resumed searcher asks again
    for that Tune trial (under a new id): the storage still has 3 trials, the third with the new id."""
    journal, snapshot = tmp_path / "optuna_journal.log", tmp_path / "searcher-state.pkl"
    pickled = new_searcher(journal)
    before = started(pickled)
    for tid in ("t0", "t1"):
        before.suggest(tid)
    before.save(str(snapshot))
    lost = before.suggest("t2")  # after the snapshot: Tune forgets this trial
    del before  # SIGKILL

    after = started(pickled)
    after.restore(str(snapshot))
    again = after.suggest("t2-new")
    assert again == lost  # the seeded sampler restored with the snapshot draws the same config
    after.suggest("t3")
    for tid in ("t0", "t1", "t2-new", "t3"):
        after.on_trial_complete(tid, {"objective": 0.3, "training_iteration": 3})
    trials = stored_trials(journal)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.user_attrs[TUNE_TRIAL_ATTR] for t in trials] == ["t0", "t1", "t2-new", "t3"]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(t.params.values()) for t in trials}) == 4


def test_storage_trouble_never_stops_the_searcher(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    searcher = started(new_searcher(blocked / "journal.log"))  # a journal inside a file: cannot be opened
    assert searcher.suggest("t0") is not None
    searcher.on_trial_complete("t0", {"objective": 0.3, "training_iteration": 1})


def test_an_optuna_storage_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    from lth_sweep.sweep.schema import SweepConfig

    with pytest.raises(UserError, match="optuna.storage"):
        SweepConfig.model_validate({"optuna": {"storage": "somewhere/db.sqlite"}})

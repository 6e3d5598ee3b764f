"""The sweep's Optuna study copied into an Optuna storage (a journal file here): Ray's real OptunaSearch, real
Optuna storages, the searcher pickled and restored the way Tune does it (tuner.pkl with cloudpickle before the
sweep, `save`/`restore` of its state with the experiment snapshot). No Tune run: the SIGKILL-and-resume case
with a real sweep is in test_sweep_resume.py."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle as cloudpickle
from ray import tune

from lth_sweep.errors import UserError
from lth_sweep.sweep.optuna_search import PackSearcher, ResumingLimiter, StoredOptunaSearch
from lth_sweep.sweep.optuna_store import RESUMED_ATTR, TUNE_TRIAL_ATTR, StudyStore, open_storage

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


def resumed(pickled: bytes, snapshot: Path) -> StoredOptunaSearch:
    """The searcher as `lth-sweep resume` gets it: tuner.pkl's, then the state of Tune's snapshot."""
    searcher = cloudpickle.loads(pickled)
    searcher.restore(str(snapshot))
    return searcher


def test_a_failed_trial_that_a_resume_completes_is_added_once_as_complete(tmp_path: Path) -> None:
    """t1 fails for good after 2 rounds; a resume restarts it and it completes: Optuna keeps the FAIL trial and
    gets a COMPLETE one with t1's params, value and every intermediate value. t0, never failed, is as before; a
    second resume that completes t1 again adds nothing."""
    journal, snapshot = tmp_path / "optuna_journal.log", tmp_path / "searcher-state.pkl"
    pickled = new_searcher(journal)
    before = started(pickled)
    configs = {tid: before.suggest(tid) for tid in ("t0", "t1")}
    for step in (1, 2):
        before.on_trial_result("t1", {"objective": 1.0 / step, "training_iteration": step})
    before.on_trial_complete("t1", error=True)
    before.on_trial_complete("t0", {"objective": 0.7, "training_iteration": 3})
    before.save(str(snapshot))

    after = resumed(pickled, snapshot)
    after.on_trial_result("t1", {"objective": 0.4, "training_iteration": 3})
    after.on_trial_complete("t1", {"objective": 0.4, "training_iteration": 3})
    after.save(str(snapshot))
    again = resumed(pickled, snapshot)
    again.on_trial_complete("t1", {"objective": 0.4, "training_iteration": 3})

    for trials in (again._ot_study.get_trials(), stored_trials(journal)):
        assert [(t.number, t.state.name, t.value) for t in trials] == [(0, "COMPLETE", 0.7), (1, "FAIL", None),
                                                                        (2, "COMPLETE", 0.4)]
        assert trials[2].params == trials[1].params == configs["t1"]
        assert trials[2].distributions == trials[1].distributions
        assert trials[2].intermediate_values == {1: 1.0, 2: 0.5, 3: 0.4}
        assert trials[2].user_attrs == {TUNE_TRIAL_ATTR: "t1", RESUMED_ATTR: 1}
        assert trials[0].user_attrs == {TUNE_TRIAL_ATTR: "t0"} and trials[0].intermediate_values == {}


def test_a_resumed_trial_that_fails_again_stays_fail(tmp_path: Path) -> None:
    journal, snapshot = tmp_path / "optuna_journal.log", tmp_path / "searcher-state.pkl"
    pickled = new_searcher(journal)
    before = started(pickled)
    before.suggest("t0")
    before.on_trial_result("t0", {"objective": 1.0, "training_iteration": 1})
    before.on_trial_complete("t0", error=True)
    before.save(str(snapshot))
    after = resumed(pickled, snapshot)
    after.on_trial_result("t0", {"objective": 0.5, "training_iteration": 2})
    after.on_trial_complete("t0", error=True)
    assert [(t.state.name, t.intermediate_values) for t in stored_trials(journal)] == [("FAIL", {1: 1.0})]


def test_a_resumed_pareto_trial_gets_both_values(tmp_path: Path) -> None:
    journal, snapshot = tmp_path / "optuna_journal.log", tmp_path / "searcher-state.pkl"
    searcher = StoredOptunaSearch(StudyStore(str(journal), "imp", ["min", "max"]), metric=["density", "val_acc"],
                                  mode=["min", "max"], sampler=optuna.samplers.RandomSampler(seed=0), study_name="imp")
    pickled = cloudpickle.dumps(searcher)
    before = cloudpickle.loads(pickled)
    before.set_search_properties(None, None, SPACE)  # as Tune calls it: the objective is the searcher's own
    before.suggest("t0")
    before.on_trial_complete("t0", error=True)
    before.save(str(snapshot))
    after = resumed(pickled, snapshot)
    after.on_trial_result("t0", {"density": 0.5, "val_acc": 0.6, "training_iteration": 2})
    after.on_trial_complete("t0", {"density": 0.4, "val_acc": 0.7, "training_iteration": 3})
    assert [(t.state.name, t.values) for t in stored_trials(journal)] == [("FAIL", None), ("COMPLETE", [0.4, 0.7])]


def test_a_trial_added_for_a_resumed_one_after_a_lagging_snapshot_replaces_no_lost_trial(tmp_path: Path) -> None:
    """The snapshot knows t0 (failed) and t1; t2 was asked after it and lost. The resumed t0 completes before t2
    is asked again: the storage gets t0's COMPLETE trial as a new trial, and t2's new id goes to the trial of the
    lost one."""
    journal, snapshot = tmp_path / "optuna_journal.log", tmp_path / "searcher-state.pkl"
    pickled = new_searcher(journal)
    before = started(pickled)
    for tid in ("t0", "t1"):
        before.suggest(tid)
    before.on_trial_complete("t0", error=True)
    before.save(str(snapshot))
    lost = before.suggest("t2")
    del before  # SIGKILL

    after = resumed(pickled, snapshot)
    after.on_trial_complete("t0", {"objective": 0.3, "training_iteration": 3})
    assert after.suggest("t2-new") == lost
    for tid in ("t1", "t2-new"):
        after.on_trial_complete(tid, {"objective": 0.5, "training_iteration": 3})
    trials = stored_trials(journal)
    assert [(t.user_attrs[TUNE_TRIAL_ATTR], t.state.name, t.value) for t in trials] == [
        ("t0", "FAIL", None), ("t1", "COMPLETE", 0.5), ("t2-new", "COMPLETE", 0.5), ("t0", "COMPLETE", 0.3)]
    assert trials[3].user_attrs[RESUMED_ATTR] == 0 and trials[3].params == trials[0].params
    assert RESUMED_ATTR not in trials[2].user_attrs and trials[2].intermediate_values == {}


def test_a_resumed_pack_that_failed_gives_optuna_each_members_result(tmp_path: Path) -> None:
    """A pack of 2 (behind the concurrency limiter, as build_tuner makes it) fails for good; resumed, it reports
    and completes: each member, FAIL in Optuna, gets its COMPLETE trial under its member id."""
    journal, snapshot = tmp_path / "optuna_journal.log", tmp_path / "searcher-state.pkl"
    inner = StoredOptunaSearch(StudyStore(str(journal), "imp", ["min"]), space=SPACE, metric="objective",
                               mode="min", sampler=optuna.samplers.RandomSampler(seed=0), study_name="imp")
    pickled = cloudpickle.dumps(ResumingLimiter(PackSearcher(inner, pack=2, total=2), max_concurrent=1))
    before = cloudpickle.loads(pickled)
    pack = before.suggest("p0")["pack"]
    before.on_trial_result("p0", {"members": [{"objective": 1.0, "training_iteration": 1}, {}]})
    before.on_trial_complete("p0", error=True)
    state = before.get_state()
    before.save(str(snapshot))

    after = cloudpickle.loads(pickled)
    after.set_state(state)
    after.restore(str(snapshot))
    members = [{"objective": 0.6, "training_iteration": 3}, {"objective": 0.8, "training_iteration": 3}]
    after.on_trial_result("p0", {"members": members})
    after.on_trial_complete("p0", {"members": members})
    trials = stored_trials(journal)
    assert [(t.user_attrs[TUNE_TRIAL_ATTR], t.state.name, t.value) for t in trials] == [
        ("p0_0", "FAIL", None), ("p0_1", "FAIL", None), ("p0_0", "COMPLETE", 0.6), ("p0_1", "COMPLETE", 0.8)]
    assert [t.params for t in trials[2:]] == pack
    assert trials[2].intermediate_values == {1: 1.0, 3: 0.6} and trials[3].intermediate_values == {3: 0.8}


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


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random", "nsga2"])
def test_every_sampler_goes_through_tunes_pickles_and_samples_on(sampler: str, tmp_path: Path) -> None:
    """Tune pickles the searcher with its sampler into tuner.pkl and every snapshot; Optuna 5.1's NSGA-II holds a
    thread lock, which made every `search.sampler: nsga2` launch exit 1 with a traceback."""
    from lth_sweep.sweep.launch import make_sampler
    from lth_sweep.sweep.schema import SweepConfig

    directions = ["min", "max"] if sampler in ("nsga2", "tpe", "random") else ["min"]
    metric = ["density", "val_acc"] if len(directions) == 2 else "objective"
    searcher = StoredOptunaSearch(StudyStore(str(tmp_path / "journal.log"), "imp", directions), study_name="imp",
                                  sampler=make_sampler(SweepConfig.model_validate({"search": {"sampler": sampler}})))
    searcher = cloudpickle.loads(cloudpickle.dumps(searcher))
    searcher.set_search_properties(metric, directions[0] if len(directions) == 1 else directions, SPACE)
    for n in range(3):
        assert set(searcher.suggest(f"t{n}")) == set(SPACE)
        searcher = cloudpickle.loads(cloudpickle.dumps(searcher))  # a snapshot between trials
        values = {"density": 0.5 - n / 10, "val_acc": 0.6, "objective": 0.5 - n / 10, "training_iteration": 1}
        searcher.on_trial_complete(f"t{n}", values)
    assert [t.state.name for t in stored_trials(tmp_path / "journal.log")] == ["COMPLETE"] * 3


def test_an_nsga2_snapshot_from_optuna_5_0_resumes_and_snapshots_again(tmp_path: Path) -> None:
    """Optuna 5.0's NSGA-II had no lock: its snapshot unpickles without one under 5.1, and its plain class (with the
    lock 5.1 code adds) could not be pickled into the next snapshot."""
    old = optuna.samplers.NSGAIISampler(seed=0)
    del old._thread_lock  # what unpickling a 5.0 sampler gives
    searcher = StoredOptunaSearch(None, sampler=optuna.samplers.RandomSampler(seed=0), study_name="imp")
    searcher.set_search_properties("objective", "min", SPACE)
    searcher._sampler = searcher._ot_study.sampler = old
    with open(tmp_path / "searcher-state.pkl", "wb") as snapshot:
        pickle.dump(searcher.__dict__.copy(), snapshot)
    resumed = started(new_searcher(tmp_path / "journal.log"))
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    assert set(resumed.suggest("t0")) == set(SPACE)
    resumed.save(str(tmp_path / "next.pkl"))
    cloudpickle.dumps(resumed)

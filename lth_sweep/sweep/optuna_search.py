"""Ray's OptunaSearch with its study copied into an Optuna storage (see `optuna_store` for why a copy), the
searcher that hands a pack trial K of its suggestions (see `packing`), and the concurrency limiter around them.

A trial that failed for good (Tune's `max_failures`) is FAIL in Optuna's study, and a finished Optuna trial cannot
be told again. When `lth-sweep resume` restarts it (`resume_errored`) and it completes, the study gets a new
COMPLETE trial with the failed one's params, its value(s) and every intermediate value, user attribute
RESUMED_ATTR naming the failed trial's number; the FAIL trial stays as it was."""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import threading
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from lth_sweep.sweep.optuna_store import RESUMED_ATTR, TUNE_TRIAL_ATTR, StudyStore
from lth_sweep.sweep.packing import MEMBERS_KEY, PACK_KEY, member_id


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that pickles: Optuna 5.1's genetic samplers hold a threading.Lock, and Tune pickles the searcher
    with its sampler into tuner.pkl and every searcher snapshot (the lock is made anew when unpickled)."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


# The study's system attributes carry the sampler's class name (BaseGASampler.__init_subclass__): keep NSGA-II's,
# so the generations of a study are found whichever of the two classes sampled it.
PicklableNSGAIISampler._GENERATION_KEY = optuna.samplers.NSGAIISampler._GENERATION_KEY
PicklableNSGAIISampler._PARENT_CACHE_KEY_PREFIX = optuna.samplers.NSGAIISampler._PARENT_CACHE_KEY_PREFIX


def made_picklable(sampler: Any) -> None:
    """A plain NSGA-II pickled under Optuna 5.0 (no lock then) and restored under 5.1: it gets its lock, and the
    class that pickles without it, so the next snapshot can be written."""
    if type(sampler) is optuna.samplers.NSGAIISampler:
        sampler.__class__ = PicklableNSGAIISampler
        sampler.__dict__.setdefault("_thread_lock", threading.Lock())


class StoredOptunaSearch(OptunaSearch):
    """OptunaSearch (in-memory study, saved and restored with Tune's snapshot) that copies its study into
    `store` after every ask, result and completion, and after a restore; a failed trial that a resume
    completes is added to the study as a COMPLETE trial (see the module's docstring)."""

    def __init__(self, store: StudyStore | None, **kwargs: Any) -> None:
        self._store = store
        self._resumed: dict[str, dict[int, float]] = {}  # a resumed FAIL trial's new intermediate values
        super().__init__(**kwargs)

    def _copy(self) -> None:
        if self._store is not None and self._ot_study is not None:
            self._store.sync(self._ot_study.get_trials(deepcopy=False))

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._copy()
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._failed(trial_id) is None:
            super().on_trial_result(trial_id, result)
            self._copy()
        elif not isinstance(self.metric, list) and result.get(self.metric) is not None:
            self._resumed.setdefault(trial_id, {})[result[TRAINING_ITERATION]] = result[self.metric]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        failed = self._failed(trial_id)
        if failed is None:
            super().on_trial_complete(trial_id, result=result, error=error)
        elif not error:
            self._add_resumed(trial_id, failed, result)
        self._copy()

    def _failed(self, trial_id: str) -> FrozenTrial | None:
        """The trial's FAIL record when Optuna has one that no COMPLETE trial resumed yet (else None)."""
        if trial_id not in self._completed_trials or trial_id not in self._ot_trials:
            return None
        number = self._ot_trials[trial_id].number
        trials = self._ot_study.get_trials(deepcopy=False)
        if any(t.user_attrs.get(RESUMED_ATTR) == number for t in trials):
            return None
        failed = next(t for t in trials if t.number == number)
        return failed if failed.state == TrialState.FAIL else None

    def _add_resumed(self, trial_id: str, failed: FrozenTrial, result: dict | None) -> None:
        """The resumed trial's result as a new COMPLETE trial; nothing while it has no value (it stays FAIL)."""
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(metric) for metric in metrics]
        if any(value is None or math.isnan(value) for value in values):
            return
        self._ot_study.add_trial(optuna.trial.create_trial(
            values=values, params=failed.params, distributions=failed.distributions,
            intermediate_values={**failed.intermediate_values, **self._resumed.pop(trial_id, {})},
            user_attrs={**failed.user_attrs, TUNE_TRIAL_ATTR: trial_id, RESUMED_ATTR: failed.number},
            system_attrs=failed.system_attrs))

    def restore(self, checkpoint_path: str) -> None:
        store = self._store
        super().restore(checkpoint_path)  # the pickled __dict__: the study as Tune's snapshot had it
        self._store = store
        self.__dict__.setdefault("_resumed", {})  # a searcher pickled by an earlier lth-sweep
        for sampler in (self._sampler, getattr(self._ot_study, "sampler", None)):
            made_picklable(sampler)
        self._copy()


class ResumingLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter, except that the completion of a trial it no longer holds reaches the searcher:
    an errored trial that `resume` restarted (Ray's drops it, and Optuna would never learn the result)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.live_trials or not self._limit_concurrency:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)


class PackSearcher(Searcher):
    """Hands each Tune trial `pack` suggestions of `inner` (an OptunaSearch), `total` suggestions in all."""

    def __init__(self, inner: Any, pack: int, total: int) -> None:
        super().__init__(metric=None, mode=None)  # Tune checks no metric of ours: members carry them
        self.inner = inner
        self.pack = pack
        self.total = total
        self.suggested = 0
        self.members: dict[str, list[str]] = {}  # kept once a pack ends: an errored pack may be resumed
        self.steps: dict[str, int] = {}  # each member's last round passed on

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the inner searcher was built with its space, metric and mode

    def suggest(self, trial_id: str) -> dict | None:
        count = min(self.pack, self.total - self.suggested)
        if count <= 0:
            return self.FINISHED
        members, ids = [], []
        for j in range(count):
            params = self.inner.suggest(member_id(trial_id, j))
            if params is None or params == self.FINISHED:
                break
            members.append(params)
            ids.append(member_id(trial_id, j))
        if not members:
            return None
        self.members[trial_id] = ids
        self.suggested += len(members)
        return {PACK_KEY: members}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each member's result with a round it has not passed on yet (a report carries every member's latest)."""
        for sub, member_result in zip(self.members.get(trial_id, []), result.get(MEMBERS_KEY) or [], strict=False):
            step = member_result.get(TRAINING_ITERATION, 0) if member_result else 0
            if member_result and step > self.steps.get(sub, 0):
                self.steps[sub] = step
                self.inner.on_trial_result(sub, member_result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        results = (result or {}).get(MEMBERS_KEY) or []
        for j, sub in enumerate(self.members.get(trial_id, [])):
            member_result = results[j] if j < len(results) and results[j] else None
            self.inner.on_trial_complete(sub, result=member_result, error=error or member_result is None)

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            inner_path = os.path.join(tmp, "inner.pkl")
            self.inner.save(inner_path)
            with open(inner_path, "rb") as f:
                inner = f.read()
        own = {"pack": self.pack, "total": self.total, "suggested": self.suggested, "members": self.members,
               "steps": self.steps}
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"own": own, "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        own = saved["own"]
        self.pack, self.total, self.suggested = own["pack"], own["total"], own["suggested"]
        self.members = own.get("members", own.get("live", {}))  # "live": an earlier lth-sweep's running packs
        self.steps = own.get("steps", {})  # none saved: every round is new
        with tempfile.TemporaryDirectory() as tmp:
            inner_path = os.path.join(tmp, "inner.pkl")
            with open(inner_path, "wb") as f:
                f.write(saved["inner"])
            self.inner.restore(inner_path)

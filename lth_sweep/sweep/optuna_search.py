"""Ray's OptunaSearch with its study copied into an Optuna storage (see `optuna_store` for why a copy), and the
searcher that hands a pack trial K of its suggestions (see `packing`)."""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from lth_sweep.sweep.optuna_store import TUNE_TRIAL_ATTR, StudyStore
from lth_sweep.sweep.packing import MEMBERS_KEY, PACK_KEY, member_id


class StoredOptunaSearch(OptunaSearch):
    """OptunaSearch (in-memory study, saved and restored with Tune's snapshot) that copies its study into
    `store` after every ask, result and completion, and after a restore."""

    def __init__(self, store: StudyStore | None, **kwargs: Any) -> None:
        self._store = store
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
        super().on_trial_result(trial_id, result)
        self._copy()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        self._copy()

    def restore(self, checkpoint_path: str) -> None:
        store = self._store
        super().restore(checkpoint_path)  # the pickled __dict__: the study as Tune's snapshot had it
        self._store = store
        self._copy()


class PackSearcher(Searcher):
    """Hands each Tune trial `pack` suggestions of `inner` (an OptunaSearch), `total` suggestions in all."""

    def __init__(self, inner: Any, pack: int, total: int) -> None:
        super().__init__(metric=None, mode=None)  # Tune checks no metric of ours: members carry them
        self.inner = inner
        self.pack = pack
        self.total = total
        self.suggested = 0
        self.live: dict[str, list[str]] = {}
        self.steps: dict[str, int] = {}  # each live member's last round passed on

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
        self.live[trial_id] = ids
        self.suggested += len(members)
        return {PACK_KEY: members}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each member's result with a round it has not passed on yet (a report carries every member's latest)."""
        for sub, member_result in zip(self.live.get(trial_id, []), result.get(MEMBERS_KEY) or [], strict=False):
            step = member_result.get(TRAINING_ITERATION, 0) if member_result else 0
            if member_result and step > self.steps.get(sub, 0):
                self.steps[sub] = step
                self.inner.on_trial_result(sub, member_result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        results = (result or {}).get(MEMBERS_KEY) or []
        for j, sub in enumerate(self.live.pop(trial_id, [])):
            self.steps.pop(sub, None)
            member_result = results[j] if j < len(results) and results[j] else None
            self.inner.on_trial_complete(sub, result=member_result, error=error or member_result is None)

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            inner_path = os.path.join(tmp, "inner.pkl")
            self.inner.save(inner_path)
            with open(inner_path, "rb") as f:
                inner = f.read()
        own = {"pack": self.pack, "total": self.total, "suggested": self.suggested, "live": self.live,
               "steps": self.steps}
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"own": own, "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update({"steps": {}, **saved["own"]})  # a save without steps: every round is new
        with tempfile.TemporaryDirectory() as tmp:
            inner_path = os.path.join(tmp, "inner.pkl")
            with open(inner_path, "wb") as f:
                f.write(saved["inner"])
            self.inner.restore(inner_path)

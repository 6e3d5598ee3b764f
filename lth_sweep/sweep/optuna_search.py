"""Ray's OptunaSearch with its study copied into an Optuna storage (see `optuna_store` for why a copy)."""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from lth_sweep.sweep.optuna_store import TUNE_TRIAL_ATTR, StudyStore


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

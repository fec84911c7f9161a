"""What Optuna is told about each trial: the one place that turns a trial's ending into an Optuna trial state.

Ray's OptunaSearch tells Optuna every trial that did not error as COMPLETE with its last result, so TPE would learn
from an ASHA-stopped trial's one-epoch score (a rung-subset score since `search.rung_val_size`) as if it were a
finished student's. Optuna's own treatment of a trial stopped early is PRUNED, with its intermediate values (which
OptunaSearch already reports each epoch). Here only a trial that ran all its epochs and was scored on the whole val
split is COMPLETE with that score as its value; stopped ones are PRUNED, errored and diverged ones FAIL.

With `search.objectives` the study has one direction per objective (Optuna's multi-objective TPE) and a finished
trial's values are its last epoch's figures for each: the shipped file's whole-split score, size and CPU latency.
Tune passes the search's single metric (ASHA's) to the searcher; the objectives are kept in its place.

Every epoch's figure is an intermediate value, the one a trial was stopped on included: Ray tells the searcher a
result through `on_trial_result` only when the scheduler lets the trial go on, so the result ASHA (or the time
budget) stopped it on reaches only `on_trial_complete`, and is reported there first. Optuna's `Trial.report` is
single-objective; with `search.objectives` the first objective's values are written through the study's storage,
which holds intermediate values for any study. The study lives in the storage given (output.dir's optuna.db,
search/study.py) with the search's fingerprints as user attributes, and starts with a warm start's trials if any.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

from ..core.results import OBJECTIVE_MODES, diverged, finished


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch whose study holds only whole-split final scores as values (see the module docstring)."""

    def __init__(self, *args: Any, max_epochs: int, objectives: list[str] | None = None,
                 study_attrs: dict[str, Any] | None = None, warm_trials: list[FrozenTrial] = (), **kwargs: Any):
        self._max_epochs = max_epochs
        self._objectives = objectives
        self._study_attrs = dict(study_attrs or {})
        self._warm_trials = list(warm_trials)
        self._reported: dict[str, set[int]] = {}
        """Steps already reported per trial (Optuna warns on a second report of a step)."""
        super().__init__(*args, **kwargs)  # sets the study up when given a space: the above first

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        for key, value in self._study_attrs.items():
            self._ot_study.set_user_attr(key, value)
        if self._warm_trials:
            self._ot_study.add_trials(self._warm_trials)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved searcher, then its stored study made consistent with it: an Optuna trial asked after that
        save belongs to no Tune trial (Tune restores its trials from the same save) and would stay RUNNING; it is
        failed, so the continued study holds each of its trials once."""
        super().restore(checkpoint_path)
        if self._ot_study is None:
            return
        ours = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in ours:
                self._ot_study.tell(t.number, state=TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_result(trial_id, result)
        metric = self._objectives[0] if self._objectives else self.metric
        step, value = int(result.get("training_iteration", 0)), result.get(metric)
        done = self._reported.setdefault(trial_id, set())
        if step in done or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        done.add(step)
        trial = self._ot_trials[trial_id]
        if self._objectives:  # Trial.report is single-objective; the storage keeps values for any study (Optuna's
            # Trial exposes its storage but not the id that storage knows it by)
            trial.storage.set_trial_intermediate_value(trial._trial_id, step, float(value))
        else:
            trial.report(float(value), step)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if self._objectives:  # several directions: the study's, not ASHA's single metric
            metric, mode = list(self._objectives), [OBJECTIVE_MODES[o] for o in self._objectives]
        return super().set_search_properties(metric, mode, config, **spec)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result:
            self.on_trial_result(trial_id, result)  # the result the trial was stopped on (see the module docstring)
        if result and diverged(result):
            error, result = True, None  # a NaN loss is a failed configuration, not a score
        done = bool(result) and finished(result, self._max_epochs)
        # OptunaSearch tells a trial without a value as PRUNED (FAIL when it errored)
        super().on_trial_complete(trial_id, result if done else None, error)

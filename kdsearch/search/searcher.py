"""What Optuna is told about each trial: the one place that turns a trial's ending into an Optuna trial state.

Ray's OptunaSearch tells Optuna every trial that did not error as COMPLETE with its last result, so TPE would learn
from an ASHA-stopped trial's one-epoch score (a rung-subset score since `search.rung_val_size`) as if it were a
finished student's. Optuna's own treatment of a trial stopped early is PRUNED, with its intermediate values (which
OptunaSearch already reports each epoch). Here only a trial that ran all its epochs and was scored on the whole val
split is COMPLETE with that score as its value; stopped ones are PRUNED, errored and diverged ones FAIL.

With `search.objectives` the study has one direction per objective (Optuna's multi-objective TPE) and a finished
trial's values are its last epoch's figures for each: the shipped file's whole-split score, size and CPU latency.
Tune passes the search's single metric (ASHA's) to the searcher; the objectives are kept in its place.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from ..core.results import OBJECTIVE_MODES, diverged, finished


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch whose study holds only whole-split final scores as values (see the module docstring)."""

    def __init__(self, *args: Any, max_epochs: int, objectives: list[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._objectives = objectives

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if self._objectives:  # several directions: the study's, not ASHA's single metric
            metric, mode = list(self._objectives), [OBJECTIVE_MODES[o] for o in self._objectives]
        return super().set_search_properties(metric, mode, config, **spec)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result and diverged(result):
            error, result = True, None  # a NaN loss is a failed configuration, not a score
        done = bool(result) and finished(result, self._max_epochs)
        # OptunaSearch tells a trial without a value as PRUNED (FAIL when it errored)
        super().on_trial_complete(trial_id, result if done else None, error)

"""ASHA, except for the one pair of trials whose difference the search reports: the no-KD control and its matched
KD start point run to max_epochs whatever their rung (their figures are the user's "what the teacher added"; a
control stopped after one epoch says nothing about a finished student). They still enter each rung, so the other
trials are compared with them as before; the time budget still cuts them."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ..core.points import holds


class PairedASHA(ASHAScheduler):
    """ASHAScheduler that never stops a trial whose config is one of `keep` before max_t."""

    def __init__(self, *, keep: list[dict[str, Any]] = (), time_attr: str = "training_iteration", max_t: int = 100,
                 **kwargs: Any):
        super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
        self._keep, self._until = list(keep), (time_attr, max_t)  # our own copies: Ray's are private

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        attr, max_t = self._until
        if action == TrialScheduler.STOP and result.get(attr, 0) < max_t and any(holds(trial.config, p)
                                                                                  for p in self._keep):
            return TrialScheduler.CONTINUE
        return action

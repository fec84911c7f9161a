"""What Optuna is told (kdsearch.searcher): only a trial that ran all its epochs, scored on the whole val split,
is a COMPLETE trial with a value; stopped ones are PRUNED with their intermediate values, errored and diverged ones
FAIL. Ray's OptunaSearch alone tells every non-errored trial as COMPLETE with its last (possibly subset) score."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from kdsearch.searcher import HonestOptunaSearch


def result(epoch: int, value: float, full: bool) -> dict:
    return {"training_iteration": epoch, "val_macro_f1": value, "val_full": full, "train_loss": 0.5,
            "val_loss": 0.5 if math.isfinite(value) else value}


def tell(search, trial_id: str, epochs: list[tuple[float, bool]], error: bool = False) -> None:
    for epoch, (value, full) in enumerate(epochs, 1):
        search.on_trial_result(trial_id, result(epoch, value, full))
    search.on_trial_complete(trial_id, None if error else result(len(epochs), *epochs[-1]), error=error)


def study_of(cls, **extra):
    space = OptunaSearch.convert_search_space({"lr": tune.loguniform(1e-4, 1e-1)})
    search = cls(space=space, metric="val_macro_f1", mode="max",
                 sampler=optuna.samplers.TPESampler(seed=0), **extra)
    for trial_id in "abcde":
        search.suggest(trial_id)
    tell(search, "a", [(0.5, False), (0.6, False), (0.7, True)])  # ran all 3 epochs: the last on the whole split
    tell(search, "b", [(0.4, False)])  # ASHA stopped it after its first rung
    tell(search, "c", [(0.3, False)], error=True)  # its worker died
    tell(search, "d", [(0.8, False), (0.9, False)])  # the time budget cut it: its 0.9 is a rung-subset score
    tell(search, "e", [(0.2, False), (float("nan"), False)])  # diverged
    return {tid: search._ot_trials[tid] for tid in "abcde"}, search._ot_study


def test_stopped_trials_are_pruned_with_their_intermediate_values_and_only_finals_are_values():
    trials, study = study_of(HonestOptunaSearch, max_epochs=3)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    a, b, c, d, e = (frozen[trials[k].number] for k in "abcde")
    assert a.state == TrialState.COMPLETE and a.value == 0.7 and a.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    # Optuna keeps a pruned trial's last intermediate value as its value; TPE ranks pruned trials by their step,
    # below every complete one
    assert b.state == TrialState.PRUNED and b.intermediate_values == {1: 0.4}
    assert c.state == TrialState.FAIL
    assert d.state == TrialState.PRUNED and d.intermediate_values == {1: 0.8, 2: 0.9}
    assert e.state == TrialState.FAIL
    assert study.best_trial.number == a.number  # never the subset 0.9


def test_rays_own_optuna_search_would_have_taken_subset_scores_as_values():
    """Why the wrapper exists: the same trials told through Ray's OptunaSearch."""
    trials, study = study_of(OptunaSearch)
    d = next(t for t in study.get_trials(deepcopy=False) if t.number == trials["d"].number)
    assert d.state == TrialState.COMPLETE and d.value == pytest.approx(0.9)


def test_kd_added_compares_the_best_kd_trial_with_the_no_kd_control_on_whole_split_scores():
    from kdsearch.results import kd_added

    rows = [{"id": "kd", "alpha": 0.9, "r": {"val_macro_f1": 0.80, "val_full": True}},
            {"id": "low", "alpha": 0.25, "r": {"val_macro_f1": 0.86, "val_full": True}},
            {"id": "control", "alpha": 0.0, "r": {"val_macro_f1": 0.83, "val_full": True}},
            {"id": "cut", "alpha": 0.5, "r": {"val_macro_f1": 0.99, "val_full": False}}]  # a subset score: ignored
    kd, control, gain = kd_added(rows, lambda r: r["r"], lambda r: r["alpha"], "val_macro_f1", "max")
    assert (kd["id"], control["id"], gain) == ("low", "control", pytest.approx(0.03))
    loss = [{**r, "r": {"val_loss": 1 - r["r"]["val_macro_f1"], "val_full": r["r"]["val_full"]}} for r in rows]
    kd, control, gain = kd_added(loss, lambda r: r["r"], lambda r: r["alpha"], "val_loss", "min")
    assert (kd["id"], control["id"], gain) == ("low", "control", pytest.approx(0.03))  # lower loss: a gain
    assert kd_added(rows[:2], lambda r: r["r"], lambda r: r["alpha"], "val_macro_f1", "max") is None  # no control

"""What Optuna is told (kdsearch.search.searcher): only a trial that ran all its epochs, scored on the whole val split,
is a COMPLETE trial with a value; stopped ones are PRUNED with their intermediate values, errored and diverged ones
FAIL. Ray's OptunaSearch alone tells every non-errored trial as COMPLETE with its last (possibly subset) score."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from kdsearch.search.searcher import HonestOptunaSearch


def result(epoch: int, value: float, full: bool) -> dict:
    return {"training_iteration": epoch, "val_macro_f1": value, "val_full": full, "train_loss": 0.5,
            "val_loss": 0.5 if math.isfinite(value) else value, "scored": "fp32 file" if full else "float"}


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


@pytest.mark.parametrize("settings, modelled_from", [
    ({}, 5),  # auto: 3 start points + one round of 2 parallel trials
    ({"startup_trials": 10}, 10),  # Optuna's own default, kept when asked for
    ({"multivariate": False}, None),  # independent TPE: no joint (relative) sample at all
])
def test_tpe_models_the_results_once_the_start_points_and_one_parallel_round_have_reported(tmp_path, settings,
                                                                                           modelled_from):
    """search.tpe reaches Optuna: the trials TPE sampled jointly from a model of the results (it records those
    parameters on the trial for the constant liar) are the ones after its start-up trials."""
    from optuna.samplers._tpe.sampler import _RELATIVE_PARAMS_KEY

    from kdsearch.config import Config
    from kdsearch.search.tuner import tpe_sampler

    from conftest import tiny_config

    raw = tiny_config(tmp_path)
    raw["search"].update({"max_concurrent": 2, "tpe": settings})
    space = OptunaSearch.convert_search_space({"lr": tune.loguniform(1e-4, 1e-1), "alpha": tune.uniform(0, 1)})
    search = HonestOptunaSearch(space=space, metric="val_macro_f1", mode="max", max_epochs=1,
                                sampler=tpe_sampler(Config.model_validate(raw), start_points=3))
    for i in range(12):
        config = search.suggest(str(i))
        search.on_trial_complete(str(i), result(1, config["alpha"], True))
    modelled = [t.number for t in search._ot_study.get_trials(deepcopy=False)
                if any(k.startswith(_RELATIVE_PARAMS_KEY) for k in t.system_attrs)]
    assert modelled == ([] if modelled_from is None else list(range(modelled_from, 12)))


def test_asha_keeps_the_no_kd_control_and_its_matched_kd_point_to_the_end():
    """The pair whose difference is "KD added" runs all its epochs (kdsearch.search.asha); ASHA's rung rule still
    stops every other trial below its cutoff, and still counts the pair's scores in each rung."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from kdsearch.search.asha import PairedASHA
    from kdsearch.search.tune_space import kd_pair

    points = [{"alpha": 0.9, "lr": 3e-3}, {"alpha": 0.0, "lr": 3e-3}, {"alpha": 0.25, "lr": 3e-3}]
    assert kd_pair(points) == points[:2]
    configs = {"kd": points[0], "control": points[1], "low": points[2], "other": {"alpha": 0.5, "lr": 1e-3}}
    values = {"kd": 0.9, "control": 0.1, "low": 0.1, "other": 0.1}

    def actions(scheduler):
        trials = {k: SimpleNamespace(trial_id=k, config={**c, "temperature": 4.0}) for k, c in configs.items()}
        for t in trials.values():
            scheduler.on_trial_add(None, t)
        return {k: scheduler.on_trial_result(None, t, {"training_iteration": 1, "val_macro_f1": values[k]})
                for k, t in trials.items()}

    kw = dict(time_attr="training_iteration", metric="val_macro_f1", mode="max", max_t=3, grace_period=1,
              reduction_factor=4)
    plain = actions(ASHAScheduler(**kw))
    assert plain["control"] == plain["low"] == plain["other"] == TrialScheduler.STOP  # what ASHA alone would do
    paired = actions(PairedASHA(keep=kd_pair(points), **kw))
    assert paired == {"kd": TrialScheduler.CONTINUE, "control": TrialScheduler.CONTINUE, "low": TrialScheduler.STOP,
                      "other": TrialScheduler.STOP}

"""The study a search stores (kdsearch.search.study, searcher): in output.dir's optuna.db, named after the search,
PRUNED trials with every value they reported (the one ASHA stopped them on included), COMPLETE only for finished
ones, FAIL for errors; multi-objective studies keep the first objective's values; warm starts from an earlier
search, with matching fingerprints (its trials join the study) and without (its best configurations go first)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle
from optuna.trial import TrialState
from ray import tune

from kdsearch.search.asha import PairedASHA
from kdsearch.search.searcher import HonestOptunaSearch

from conftest import tiny_config, write_config

KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))
EPOCHS = 4
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module


def toy(config):
    """A trainable whose figures are its config's: epoch e scores x * e / EPOCHS (the last on the whole split, as
    the shipped file); x above 0.9 raises at epoch 2."""
    for epoch in range(1, EPOCHS + 1):
        if config["x"] > 0.9 and epoch == 2:
            raise RuntimeError("this configuration crashes its worker")
        last = epoch == EPOCHS
        tune.report({"val_macro_f1": config["x"] * epoch / EPOCHS, "size_mb": 1.0 + config["x"], "train_loss": 0.1,
                     "val_loss": 0.1, "val_full": last, "scored": "fp32 file" if last else "float"})


def search_toy(tmp_path: Path, objectives: list[str] | None = None) -> tuple[optuna.Study, dict[str, list[dict]]]:
    """A real Ray Tune search of `toy` with kdsearch's searcher (stored study) and ASHA; the study read back from
    its storage, and each trial's reported results from Tune (keyed by the Optuna trial's x)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = HonestOptunaSearch(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=20),
                                storage=optuna.storages.RDBStorage(url), study_name="toy", max_epochs=EPOCHS,
                                objectives=objectives, study_attrs={"teacher": "t0"})
    tuner = tune.Tuner(toy, param_space={"x": tune.uniform(0.0, 1.0)},
                       tune_config=tune.TuneConfig(metric="val_macro_f1", mode="max", search_alg=search,
                                                   scheduler=PairedASHA(max_t=EPOCHS, grace_period=1,
                                                                        reduction_factor=2),
                                                   num_samples=14, max_concurrent_trials=2),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    reported = {}
    for r in grid:
        history = r.metrics_dataframe
        reported[round(r.config["x"], 9)] = [] if history is None else history.to_dict("records")
    return optuna.load_study(study_name="toy", storage=url), reported


@pytest.mark.e2e
@pytest.mark.parametrize("objectives", [None, ["val_macro_f1", "size_mb"]])
def test_the_stored_study_holds_pruned_values_fails_and_only_finished_completes(tmp_path, ray_cluster, objectives):
    study, reported = search_toy(tmp_path, objectives)
    assert study.user_attrs == {"teacher": "t0"}
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.PRUNED] >= 3 and states[TrialState.COMPLETE] >= 1 and states[TrialState.FAIL] >= 1, \
        states
    assert sum(states.values()) == len(reported) == 14
    for t in study.trials:
        x = round(t.params["x"], 9)
        history = reported[x]
        epochs = {int(h["training_iteration"]): h["val_macro_f1"] for h in history}
        if x > 0.9:  # crashed at epoch 2 after reporting epoch 1
            assert t.state == TrialState.FAIL and t.intermediate_values == pytest.approx(epochs)
        elif max(epochs) == EPOCHS:
            assert t.state == TrialState.COMPLETE
            want = [x, 1.0 + x] if objectives else [x]
            assert t.values == pytest.approx(want) and t.intermediate_values == pytest.approx(epochs)
        else:  # stopped by ASHA: every value it reported, the one it was stopped on included
            assert t.state == TrialState.PRUNED and t.intermediate_values == pytest.approx(epochs), (x, history)
            assert max(t.intermediate_values) == max(epochs) >= 1


def test_a_fresh_search_sets_an_earlier_study_of_its_name_aside(tmp_path):
    from kdsearch.search.study import set_aside

    store = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    old = optuna.create_study(study_name="s", storage=store, direction="maximize")
    old.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 0.1},
                                            distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    assert set_aside(store, "s") == "s.old-1"
    assert set_aside(store, "s") is None  # nothing of that name left
    kept = optuna.load_study(study_name="s.old-1", storage=store)
    assert [t.value for t in kept.trials] == [0.5]


def _search(tmp_path: Path, name: str, out: Path, **search) -> tuple[dict, Path]:
    cfg = tiny_config(tmp_path, name=name, output={"dir": str(out)},
                      student={"candidates": ["shufflenet_v2_x0_5", "mobilenet_v3_small"]},
                      search={"num_samples": 5, "max_concurrent": 2, "max_epochs": 2, "grace_period": 1,
                              "reduction_factor": 2,
                              "space": {"lr": {"loguniform": [1.0e-3, 3.0e-2]}, "alpha": {"uniform": [0.0, 1.0]},
                                        "temperature": 4.0, "batch_size": 64, "weight_decay": 1.0e-4,
                                        "class_weight_power": 0.0}, **search})
    return cfg, write_config(tmp_path, cfg, f"{name}.yaml")


def _run(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    run = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


@pytest.mark.e2e
def test_warm_start_adds_a_matching_search_and_enqueues_the_best_of_another(tmp_path):
    first_out = tmp_path / "first"
    cfg, path = _search(tmp_path, "first", first_out)
    run = _run(path, tmp_path)
    assert f"Optuna's study 'first': sqlite:///{first_out.resolve() / 'optuna.db'}" in run.stdout
    first = _study(first_out, "first")
    assert set(first.user_attrs) == {"teacher", "data", "metric", "objectives", "max_epochs"}
    ended = [t for t in first.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert len(ended) == 5
    # the same data and teacher (its cache is in first/): the trials join the new study, no start points
    _, path = _search(tmp_path, "again", tmp_path / "again", warm_start=str(first_out))
    run = _run(path, tmp_path)
    complete = sum(t.state == TrialState.COMPLETE for t in ended)
    assert re.search(rf"warm start from {re.escape(str(first_out))}#first: 5 trials added \({complete} complete, "
                     rf"{5 - complete} pruned, 0 failed; teacher and data match\), start points skipped", run.stdout)
    again = _study(tmp_path / "again", "again")
    assert len(again.trials) == 10
    added = again.trials[:5]
    assert [(t.state, t.params, t.intermediate_values) for t in added] == \
        [(t.state, t.params, t.intermediate_values) for t in ended]
    assert all(t.user_attrs["warm_start_from"] == f"{first_out}#first:{e.number}" for t, e in zip(added, ended))
    # the search's own start points (KD at T 4, alpha 0.9; the no-KD control) were not run again
    assert not any(t.params.get("alpha") in (0.0, 0.9) for t in again.trials[5:])

    # another teacher (trained two epochs, not one): the earlier best configurations go first
    best = sorted((t for t in ended if t.state == TrialState.COMPLETE), key=lambda t: -t.value)[:3]
    other, path = _search(tmp_path, "other", tmp_path / "other", warm_start=str(first_out))
    other["teacher"]["epochs"] = 2
    write_config(tmp_path, other, "other.yaml")
    run = _run(path, tmp_path)
    assert f"warm start from {first_out}#first: fingerprints differ (teacher): its {len(best)} best " \
           "configurations enqueued first, then the start points" in run.stdout
    theirs = _study(tmp_path / "other", "other")
    assert len(theirs.trials) == 5
    assert [t.params for t in theirs.trials[:len(best)]] == [t.params for t in best]
    assert json.loads((tmp_path / "other" / "ray" / "other" / "kdsearch.json").read_text())["warm_start"].startswith(
        "warm start from")


@pytest.mark.e2e
def test_warm_start_from_a_folder_without_a_study_is_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    _, path = _search(tmp_path, "w", tmp_path / "w", warm_start=str(tmp_path / "empty"))
    run = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"search.warm_start {tmp_path / 'empty'}: no optuna.db there" in run.stderr
    assert not (tmp_path / "w").exists()  # nothing written

"""The Pareto front and the importances (kdsearch.search.finished_study), on a study rebuilt from finished trials
only."""

from __future__ import annotations

import random

from kdsearch.config import Config
from kdsearch.search.finished_study import IMPORTANCE_MIN_TRIALS, rebuild

from conftest import tiny_config


def config(tmp_path, **search) -> Config:
    return Config.model_validate(tiny_config(tmp_path, search={
        "max_epochs": 3, "grace_period": 1,
        "space": {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "alpha": {"uniform": [0.0, 1.0]},
                  "batch_size": {"choice": [32, 64]}, "precision": {"choice": ["fp32", "int8"]}}, **search}))


def trial(i, f1, size, latency, epochs=3, full=True, **extra):
    config = {"lr": 1e-3, "alpha": 0.5, "batch_size": 32, "student_format": "resnet8/int8"}
    return {"id": f"t{i}", "config": {**config, **extra.pop("config", {})},
            "last": {"training_iteration": epochs, "val_full": full, "val_macro_f1": f1, "size_mb": size,
                     "latency_ms": latency, "scored": "int8 file" if full else "float", **extra}}


def rebuilt(items, cfg):
    return rebuild(items, cfg, lambda t: t["id"], lambda t: t["config"], lambda t: t["last"])


def non_dominated(items, cfg):
    """The front by its definition, over (F1 up, size down, latency down), by hand."""
    def dominates(a, b):
        ka = (-a["last"]["val_macro_f1"], a["last"]["size_mb"], a["last"]["latency_ms"])
        kb = (-b["last"]["val_macro_f1"], b["last"]["size_mb"], b["last"]["latency_ms"])
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb
    return {a["id"] for a in items if not any(dominates(b, a) for b in items)}


def test_the_front_holds_only_non_dominated_finished_trials(tmp_path):
    cfg = config(tmp_path)
    rng = random.Random(0)
    done = [trial(i, rng.uniform(0.5, 0.95), rng.uniform(1, 25), rng.uniform(0.5, 20),
                  config={"student_format": f"student{i}/int8"}) for i in range(25)]  # one trial per pair
    # better than everything on every objective, but not finished: stopped by ASHA, on the rung subset, diverged
    unfinished = [trial(100, 0.99, 0.1, 0.1, epochs=1), trial(101, 0.99, 0.1, 0.1, full=False),
                  trial(102, 0.99, 0.1, 0.1, diverged=True), trial(103, float("nan"), 0.1, 0.1)]
    study = rebuilt(done + unfinished, cfg)
    assert set(study.front) == non_dominated(done, cfg) and 1 < len(study.front) < len(done)
    f1 = {t["id"]: t["last"]["val_macro_f1"] for t in done}
    assert [f1[i] for i in study.front] == sorted((f1[i] for i in study.front), reverse=True)  # best F1 first
    assert len(study.study.trials) == len(done)  # the unfinished never enter


def test_one_student_and_format_is_compared_on_its_median_size_and_latency_not_on_noise(tmp_path):
    cfg = config(tmp_path)
    # one architecture and format, three trials: timing noise, and a few bytes of TorchScript names apart
    same = [trial(0, 0.90, 20.000010, 7.1), trial(1, 0.89, 20.000004, 6.9), trial(2, 0.88, 20.000020, 7.4)]
    other = trial(3, 0.80, 5, 1.0, config={"student_format": "resnet8/fp32"})
    study = rebuilt(same + [other], cfg)
    assert study.pairs == {("resnet8", "int8"): {"size_mb": 20.000010, "latency_ms": 7.1},
                           ("resnet8", "fp32"): {"size_mb": 5.0, "latency_ms": 1.0}}
    assert study.front == ["t0", "t3"]  # t1 and t2 are the same file as t0, with a lower F1


def test_objectives_set_the_front_and_each_gets_its_direction(tmp_path):
    cfg = config(tmp_path, objectives=["val_macro_f1", "size_mb"])
    items = [trial(i, f1, size, latency, config={"student_format": f"s{i}/fp32"})
             for i, (f1, size, latency) in enumerate([(0.9, 20, 1), (0.8, 5, 50), (0.7, 10, 0.1), (0.9, 21, 0.1)])]
    # latency is not an objective: t2 is dominated by t1 (better F1, smaller), t3 by t0 (same F1, smaller)
    assert rebuilt(items, cfg).front == ["t0", "t1"]


def test_importances_come_from_finished_trials_and_name_what_moved_the_score(tmp_path):
    cfg = config(tmp_path)
    rng = random.Random(1)
    items = []
    for i in range(20):  # F1 is lr's alone; alpha, batch_size and the format are noise
        lr = 10 ** rng.uniform(-4, -1)
        items.append(trial(i, 0.9 - 0.1 * abs(lr - 1e-2) * 10 - 0.001 * rng.random(), 5, 1,
                           config={"lr": lr, "alpha": rng.random(), "batch_size": rng.choice([32, 64]),
                                   "student_format": rng.choice(["resnet8/int8", "resnet8/fp32"])}))
    few = rebuilt(items[:IMPORTANCE_MIN_TRIALS - 1] + [trial(99, 0.9, 5, 1, epochs=1)], cfg)
    assert few.importances() is None
    assert few.importance_lines() == [f"importances: {IMPORTANCE_MIN_TRIALS - 1} finished trials; they need "
                                      f"{IMPORTANCE_MIN_TRIALS} (1 more)"]
    study = rebuilt(items, cfg)
    assert study.importances()["size_mb"] == {}  # a property of the (student, format) pair: not fitted, and said
    assert ("importance for size_mb: not fitted, it is fixed by the (student, format) pair (see the Pareto front)"
            in study.importance_lines())
    found = study.importances()["val_macro_f1"]
    for evaluator in ("ped_anova", "fanova"):
        values = found[evaluator]
        assert set(values) == {"lr", "alpha", "batch_size", "precision"}  # student took one value: not a factor
        assert max(values, key=values.get) == "lr", (evaluator, values)


def test_an_evaluator_with_nothing_to_separate_shows_no_importances_and_says_why(tmp_path):
    """Case 5: 10 of 12 trials tie at PED-ANOVA's top quantile (the best 3), so its raw importances are all 0; Optuna
    would normalise them to equal shares (0.25 each), a finding that is not there. Size is the pair's: not fitted."""
    cfg = config(tmp_path)
    rng = random.Random(0)
    items = [trial(i, 0.5 if i < 10 else 0.9, 5, 1,
                   config={"lr": 10 ** rng.uniform(-4, -1), "alpha": rng.random(), "batch_size": rng.choice([32, 64]),
                           "student_format": rng.choice(["resnet8/int8", "resnet8/fp32"])}) for i in range(12)]
    study = rebuilt(items, cfg)
    found = study.importances()
    assert "ped_anova" not in found["val_macro_f1"] and set(found["val_macro_f1"]["fanova"]) == {
        "lr", "alpha", "batch_size", "precision"}
    lines = study.importance_lines()
    assert ("importance for val_macro_f1 (ped_anova, top quantile 0.25 = the best 3 of 12 finished trials): nothing "
            "to separate (every raw importance is 0: the top quantile ties the rest); none shown") in lines
    assert any(line.startswith("importance for val_macro_f1 (fanova, 12 finished trials): ") for line in lines)
    assert found["size_mb"] == {} and found["latency_ms"] == {}
    assert not any("0.25" in line.split(":", 1)[1] for line in lines if "ped_anova" in line and "none" not in line)

"""benchmarks/replay.py: kdsearch's own search objects replayed in simulated time against a learning-curve archive
written here (benchmarks/build_curves.py's format), deterministic per seed; a method that keeps picking the worst
configuration loses to it; the JSON carries the keys the held-out checks read."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import replay  # noqa: E402

EPOCHS = 4
SPACE = {"loss": "kd", "temperature": {"uniform": [1.0, 8.0]}, "alpha": {"uniform": [0.0, 1.0]},
         "lr": {"loguniform": [1.0e-3, 3.0e-2]}, "batch_size": 64, "weight_decay": 1.0e-4, "class_weight_power": 0.0,
         "student": {"choice": ["resnet8", "shufflenet_v2_x0_5"]}}


def quality(config: dict) -> float:
    """The final val macro-F1 of a configuration: best at lr 0.01 and alpha 0.6 on resnet8."""
    lr = abs(math.log10(config["lr"]) + 2.0)
    return max(0.05, 0.95 - 0.35 * lr - 0.3 * abs(config["alpha"] - 0.6)
               - 0.15 * (config["student"] != "resnet8"))


def write_archive(path: Path, n: int = 60) -> Path:
    """A tiny archive: n configurations sampled as build_curves samples them, plus recipes and controls; curves
    rise to `quality`, the worse configurations later (they cross), 1 s per epoch (2 s for shufflenet)."""
    from build_curves import configurations

    cfg = replay.task_config(replay.Archive("tiny", {"space": SPACE, "max_epochs": EPOCHS, "metric": "val_macro_f1"},
                                            []), seed=0, workers=2, budget_s=100.0)
    pairs = [(s, "fp32") for s in SPACE["student"]["choice"]]
    header = {"task": "tiny", "space": SPACE, "max_epochs": EPOCHS, "metric": "val_macro_f1",
              "teacher_val_macro_f1": 0.9, "images": {"train": 100, "val": 50, "test": 50}, "workers_measured": 1,
              "threads_per_worker": 1}
    rows = [json.dumps(header)]
    for config, kind in configurations(cfg, pairs, n, seed=0):
        q = quality(config)
        seconds = 1.0 if config["student"] == "resnet8" else 2.0
        curve = [[e, round(q * (e / EPOCHS) ** (2.0 - q), 6), seconds] for e in range(1, EPOCHS + 1)]
        rows.append(json.dumps({"config": config, "curve": curve, "test_macro_f1": round(q - 0.01, 6), "kind": kind}))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> replay.Archive:
    return replay.read_archive(write_archive(tmp_path_factory.mktemp("curves") / "tiny.jsonl"))


def test_the_replay_is_deterministic_per_seed_and_seeds_differ(archive):
    block, _ = replay.replay(archive, ["kdsearch", "random"], seeds=3, workers=2, budget_trials=6, log=lambda s: None)
    again, _ = replay.replay(archive, ["kdsearch", "random"], seeds=3, workers=2, budget_trials=6, log=lambda s: None)
    assert block == again
    outs = [replay.run_method("kdsearch", archive, surrogate(archive), s, 2, 60.0, 0.0) for s in (0, 1)]
    assert [t["config"] for t in outs[0].lines.values()] != [t["config"] for t in outs[1].lines.values()]


def surrogate(archive: replay.Archive) -> replay.Surrogate:
    return replay.Surrogate(replay.optuna_space(replay.task_config(archive, 0, 2, 100.0)), archive.lines)


def test_kdsearch_beats_a_method_that_keeps_picking_the_worst_configuration(archive):
    from kdsearch.search.asha import PairedASHA

    budget = 8 * archive.trial_seconds()
    worst = min(archive.lines, key=lambda r: r["curve"][-1][1])
    cfg = replay.task_config(archive, 0, 2, budget)
    stubborn = replay.Search(lambda _id: dict(worst["config"]), None, replay.asha(cfg, PairedASHA), {})
    bad = replay.simulate(stubborn, archive, surrogate(archive), 2, budget)
    good = replay.run_method("kdsearch", archive, surrogate(archive), 0, 2, budget, 0.0)
    assert bad.pick(budget)[0] == pytest.approx(worst["curve"][-1][1])
    assert good.pick(budget)[0] > bad.pick(budget)[0] + 0.3
    assert good.pick(budget)[1] > bad.pick(budget)[1] + 0.3  # its test figure too


def test_the_searcher_is_told_as_ray_tells_it_pruned_trials_keep_their_values(archive):
    """The study behind the replayed search: ASHA-stopped trials PRUNED with every value up to the one they were
    stopped on, COMPLETE only for those that ran all epochs, the start points first."""
    from kdsearch.search.tune_space import start_points

    budget = 10 * archive.trial_seconds()
    cfg = replay.task_config(archive, 0, 2, budget)
    search = replay.kdsearch_search(cfg)
    out = replay.simulate(search, archive, surrogate(archive), 2, budget)
    study = search.searcher._ot_study
    by_number = {t.number: t for t in study.trials}
    reported = {}
    for _, trial_id, epoch, value in out.events:
        reported.setdefault(trial_id, {})[epoch] = value
    pruned = complete = 0
    for trial_id, number in zip(sorted(out.lines), range(len(out.lines))):
        t = by_number[number]
        if t.state == TrialState.RUNNING:  # cut by the budget: Tune never told it
            continue
        assert t.intermediate_values == pytest.approx(reported[trial_id])
        if max(reported[trial_id]) == EPOCHS:
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(reported[trial_id][EPOCHS])
            complete += 1
        else:
            assert t.state == TrialState.PRUNED
            pruned += 1
    assert pruned >= 3 and complete >= 2
    points = start_points(cfg.search.space, replay.pairs_of(cfg))
    first = [out.lines[k]["config"] for k in sorted(out.lines)[:len(points)]]
    assert all(replay.key({**search.fixed, **p}) == replay.key(c) for p, c in zip(points, first))
    assert all(out.lines[k]["kind"] in ("recipe", "control") for k in sorted(out.lines)[:2])  # archived exactly


def test_the_surrogate_answers_an_unseen_configuration_from_its_neighbours(archive):
    s = surrogate(archive)
    line = next(r for r in archive.lines if r["kind"] == "sampled" and r["config"]["student"] == "resnet8")
    near = {**line["config"], "lr": line["config"]["lr"] * 1.0001}
    predicted = s.line(near)
    assert replay.key(near) not in archive.by_key
    assert predicted["curve"][-1][1] == pytest.approx(line["curve"][-1][1], abs=1e-3)  # all but on it
    assert [p[2] for p in predicted["curve"]] == pytest.approx([1.0] * EPOCHS)  # a resnet8's seconds, not a mix


def test_the_command_writes_every_key_the_checks_read(tmp_path, archive):
    folder = tmp_path / "curves"
    folder.mkdir()
    write_archive(folder / "tiny.jsonl", n=40)
    (folder / "other.jsonl").write_text((folder / "tiny.jsonl").read_text().replace('"task": "tiny"',
                                                                                    '"task": "other"'))
    replay.main(["--curves", str(folder), "--seeds", "2", "--json", str(tmp_path / "r.json")])
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results) == {"tiny", "other"}
    for block in results.values():
        assert set(block) == {"kdsearch", "random", "recipe"}
        for m in block.values():
            assert m["seeds"] == 2
            assert set(m["best_val"]) == set(m["best_val_std"]) == {"0.25", "0.5", "1.0"}
            assert {"test_of_pick", "test_of_pick_std", "time_to_random_best"} <= set(m)
            assert m["best_val"]["0.25"] <= m["best_val"]["0.5"] <= m["best_val"]["1.0"] <= 1.0
            assert 0.0 < m["time_to_random_best"] <= 1.0
    assert results["tiny"]["random"]["time_to_random_best"] <= 1.0
    info = json.loads((tmp_path / "r-archives.json").read_text())
    assert info["tasks"]["tiny"]["surrogate"]["final_val_spearman"] > 0.5

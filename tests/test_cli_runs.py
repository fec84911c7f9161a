"""Runs the installed `kdsearch` command as users do, for the settings no other end-to-end test covers: an fp16
student with SGD on augmented views and `metric: val_loss` (best = lowest), `kdsearch bench`, and a cluster address
nobody answers at."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsearch.models.sizes import student_size

from conftest import KDSEARCH, tiny_config, write_config

pytestmark = pytest.mark.e2e


def kdsearch(tmp_path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([KDSEARCH, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_fp16_student_sgd_augmented_views_and_val_loss_best_is_the_lowest(tmp_path):
    raw = tiny_config(tmp_path, name="fp16-sgd-loss",
                      data={"source": "digits", "image_size": 8, "augment": "standard"},
                      teacher={"source": "train", "arch": "resnet8", "epochs": 1, "patience": 1, "cache_views": 2},
                      student={"candidates": ["shufflenet_v2_x0_5"], "precision": "fp16"})
    raw["search"].update({"num_samples": 3, "max_concurrent": 2, "max_epochs": 2, "grace_period": 2,
                          "metric": "val_loss", "mode": "min"})
    raw["search"]["space"].update({"optimizer": "sgd", "lr": {"loguniform": [1.0e-3, 0.3]}})
    run = kdsearch(tmp_path, "run", write_config(tmp_path, raw))
    assert run.returncode == 0, run.stderr[-3000:]
    from ray import tune

    trials = tune.ExperimentAnalysis(str(tmp_path / "out" / "ray" / "fp16-sgd-loss")).trials
    losses = {t.trial_id: t.last_result["val_loss"] for t in trials}
    assert len(losses) == 3 and len(set(losses.values())) == 3
    card = json.loads((tmp_path / "out" / "best" / "model_card.json").read_text())
    assert card["trial_id"] == min(losses, key=losses.get)  # the lowest loss, not the highest
    assert card["hyperparameters"]["optimizer"] == "sgd" and card["precision"] == "fp16"
    weights = torch.load(tmp_path / "out" / "best" / "student.pt", weights_only=True)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    size = student_size("shufflenet_v2_x0_5", 10, 8)
    assert card["files"]["student.pt"] == size.bytes("fp16") < size.bytes("fp32")
    assert card["metrics"]["val_loss"] == pytest.approx(losses[card["trial_id"]], abs=0.02)  # fp16 rounding
    # the student learnt from two augmented views per image, each scored once by the teacher
    cached = list((tmp_path / "out" / "teacher").glob("logits-*.pt"))
    assert len(cached) == 1 and torch.load(cached[0], weights_only=True)["logits"].shape[0] == 2
    client = MlflowClient(raw["tracking"]["uri"])
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("fp16-sgd-loss").experiment_id])
                  if r.data.tags.get("kdsearch.kind") == "search")
    assert parent.data.metrics["best_val_loss"] == pytest.approx(min(losses.values()))


def test_bench_writes_its_figures(tmp_path):
    raw = tiny_config(tmp_path, name="bench")
    raw["search"].update({"num_samples": 2, "max_concurrent": 2, "max_epochs": 1})
    path = write_config(tmp_path, raw)
    run = kdsearch(tmp_path, "bench", path, "--epochs", "1", "--out", tmp_path / "bench.json", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())
    n = figures["train_images"]
    assert n == 1797 - 360  # digits' train split (val_fraction 0.2), one view
    passes = figures["a_teacher_passes"]
    assert passes["computed_once"] == 1797 and passes["this_search"] == 0  # train + val once; cached before the search
    assert passes["teacher_in_the_loop"] == passes["trial_epochs"] * n and passes["trials"] == 2
    assert figures["b_epoch_seconds"]["kd_epoch_seconds"] > 0 and figures["b_epoch_seconds"]["ce_epoch_seconds"] > 0
    assert 0 < figures["c_search_efficiency"]["value"] <= 1.0
    assert figures["trials"]["completed"] == 2 and 0 <= figures["best"] <= 1


def test_an_address_nobody_answers_at_exits_2_at_once(tmp_path):
    """Ray's own client waits minutes on an unreachable GCS; kdsearch checks the address first."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = tiny_config(tmp_path)
    for command in ("run", "train-teacher"):
        run = kdsearch(tmp_path, command, write_config(tmp_path, raw), "--address", f"127.0.0.1:{port}", timeout=120)
        assert run.returncode == 2, run.stderr[-2000:]
        assert f"--address 127.0.0.1:{port}: cannot reach a Ray cluster there" in run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "ray").exists()


def test_the_first_trials_bracket_the_teacher_and_the_summary_says_what_kd_added(tmp_path):
    """alpha searched over [0, 1]: the paper's KD point, then a no-KD control (alpha 0) and a low alpha on the same
    student and lr; the run's summary and the MLflow parent run say what KD added over the control."""
    import re

    raw = tiny_config(tmp_path, name="hedge")
    raw["search"].update({"num_samples": 3, "max_concurrent": 2, "max_epochs": 1, "grace_period": 1})
    raw["search"]["space"].update({"alpha": {"uniform": [0.0, 1.0]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}})
    run = kdsearch(tmp_path, "run", write_config(tmp_path, raw))
    assert run.returncode == 0, run.stderr[-3000:]
    from ray import tune

    trials = tune.ExperimentAnalysis(str(tmp_path / "out" / "ray" / "hedge")).trials
    alphas = sorted(round(t.config["alpha"], 4) for t in trials)
    assert alphas == [0.0, 0.25, 0.9] and len({t.config["lr"] for t in trials}) == 1
    said = re.search(r"KD added ([+-][\d.]+) val_macro_f1 in this search, shufflenet_v2_x0_5 fp32 at lr [\d.e-]+: KD "
                     r"trial (\w+) \(alpha 0.9\) val_macro_f1 ([\d.]+) \(fp32 file, whole val split, \d+ images, 1 of "
                     r"1 epochs\) against no-KD control \(alpha 0\) (\w+) val_macro_f1 ([\d.]+) \(fp32 file",
                     run.stdout)
    assert said, run.stdout
    scores = {t.trial_id: t.last_result["val_macro_f1"] for t in trials}
    control = next(t.trial_id for t in trials if t.config["alpha"] == 0)
    assert said.group(4) == control and float(said.group(5)) == pytest.approx(scores[control], abs=1e-4)
    kd = next(t for t in trials if t.config["alpha"] == 0.9)  # the control's match: it differs in alpha alone
    assert said.group(2) == kd.trial_id
    assert float(said.group(1)) == pytest.approx(scores[kd.trial_id] - scores[control], abs=2e-4)
    client = MlflowClient(raw["tracking"]["uri"])
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("hedge").experiment_id])
                  if r.data.tags.get("kdsearch.kind") == "search")
    assert parent.data.metrics["no_kd_control_val_macro_f1"] == pytest.approx(scores[control])
    # the best whole-split score so far against seconds into the search: rising, ending at the best trial's
    curve = sorted(client.get_metric_history(parent.info.run_id, "best_so_far_val_macro_f1"), key=lambda m: m.step)
    values = [m.value for m in curve]
    assert curve and values == sorted(values) and values[-1] == pytest.approx(max(scores.values()))
    assert curve[-1].step <= parent.data.metrics["wall_seconds"] + 1
    # `kdsearch report` says the same about the search (and keeps it in report.json)
    rep = kdsearch(tmp_path, "report", write_config(tmp_path, raw), "--device", "cpu")
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert f"In the search: {said.group(0)}" in rep.stdout
    saved = json.loads((tmp_path / "out" / "report" / "report.json").read_text())["kd_added_in_search"]
    assert (saved["control_trial"], saved["kd_trial"]) == (control, kd.trial_id)


def test_random_search_samples_the_space_without_start_points(tmp_path):
    """search.algorithm: random is Tune's seeded random sampling (the baseline a search is measured against): no
    enqueued start points, no Optuna."""
    import math

    raw = tiny_config(tmp_path, name="random")
    raw["search"].update({"num_samples": 3, "max_concurrent": 2, "max_epochs": 1, "algorithm": "random"})
    raw["search"]["space"].update({"alpha": {"uniform": [0.0, 1.0]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}})
    run = kdsearch(tmp_path, "run", write_config(tmp_path, raw))
    assert run.returncode == 0, run.stderr[-3000:]
    from ray import tune

    trials = tune.ExperimentAnalysis(str(tmp_path / "out" / "ray" / "random")).trials
    lrs, alphas = [t.config["lr"] for t in trials], [t.config["alpha"] for t in trials]
    assert len(set(lrs)) == 3 and all(1.0e-3 <= v <= 1.0e-2 for v in lrs)
    assert not any(math.isclose(v, 10 ** -2.5) for v in lrs)  # the start points' geometric midpoint: never tried
    assert not {0.0, 0.25, 0.9} & {round(a, 4) for a in alphas}

"""A search over what ships, as a user runs it (the installed `kdsearch`): the format searched with the student as
pairs that fit the limit, each trial's last epoch scoring its own shipped file, a multi-objective front, the front
exported, an int8 file that a torch-only interpreter loads and that scores what its trial reported, and the report's
importances."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys

import pytest
import torch
from sklearn.metrics import f1_score

from conftest import KDSEARCH, tiny_config, write_config

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "COLUMNS": "200"}  # rich tables unwrapped, so trial ids are read whole


def kdsearch(*args, cwd, timeout=900):
    return subprocess.run([KDSEARCH, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=ENV)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    cfg = tiny_config(
        tmp, name="deploy", data={"source": "digits", "image_size": 16, "augment": "none"},
        # ResNet-34 (85 MB fp32, 43 MB fp16) fits 25 MB only as int8; it is first, so the start points (the first
        # trials) are its int8 pair
        student={"candidates": ["resnet34", "resnet8"], "max_size_mb": 25},
        search={"num_samples": 10, "max_concurrent": 2, "max_epochs": 1, "grace_period": 1,
                "objectives": ["val_macro_f1", "size_mb"],
                "space": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}, "alpha": {"uniform": [0.0, 1.0]},
                          "temperature": 4.0, "batch_size": 64, "weight_decay": 1.0e-4, "class_weight_power": 0.0,
                          "precision": {"choice": ["int8", "fp32", "fp16"]}}})
    path = write_config(tmp, cfg)
    run = kdsearch("run", path, "--device", "cpu", cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    lasts = {}
    for f in (tmp / "out" / "ray" / "deploy").glob("*/result.json"):
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        lasts[lines[-1]["trial_id"]] = lines[-1]
    return tmp, path, run.stdout, lasts


def test_formats_are_searched_as_pairs_that_fit_and_each_trial_scores_its_shipped_file(searched):
    _, _, out, lasts = searched
    assert len(lasts) == 10
    pairs = {r["config"]["student_format"] for r in lasts.values()}
    assert pairs <= {"resnet34/int8", "resnet8/int8", "resnet8/fp32", "resnet8/fp16"}  # never resnet34 in float
    assert "resnet34/int8" in pairs
    for r in lasts.values():
        student, fmt = r["config"]["student_format"].split("/")
        assert r["format"] == fmt and r["scored"] == f"{fmt} file" and r["val_full"] and r["latency_ms"] > 0
        assert r["size_mb"] <= 25 and 0 <= r["val_macro_f1_float"] <= 1
    int8 = [r for r in lasts.values() if r["format"] == "int8" and r["config"]["student_format"].startswith("resnet34")]
    assert int8[0]["size_mb"] < 0.3 * 85.4  # a quarter of ResNet-34's fp32 file


def test_the_printed_front_is_the_non_dominated_finished_trials(searched):
    _, _, out, lasts = searched

    sizes = {}  # a student in a format has one size: the median of its trials' files (a few bytes of names apart)
    for r in lasts.values():
        sizes.setdefault(r["config"]["student_format"], []).append(r["size_mb"])

    def size(r):
        return statistics.median(sizes[r["config"]["student_format"]])

    def dominates(a, b):  # the search's objectives: val_macro_f1 up, size_mb down
        return (a["val_macro_f1"] >= b["val_macro_f1"] and size(a) <= size(b)
                and (a["val_macro_f1"], size(a)) != (b["val_macro_f1"], size(b)))

    expected = {i for i, r in lasts.items() if not any(dominates(o, r) for o in lasts.values())}
    table = out[out.index("Pareto front over val_macro_f1, size_mb"):]
    table = table[:table.index("└")]
    printed = set(re.findall(r"│ ([0-9a-f]{8}) ", table))
    assert printed == expected and expected
    assert re.search(r"importance for val_macro_f1 \(ped_anova, top quantile 0.30 = the best 3 of 10 finished "
                     r"trials\): ", out)
    assert "importance for size_mb: not fitted, it is fixed by the (student, format) pair" in out


def test_export_pareto_writes_each_member_and_an_int8_file_scores_what_its_trial_reported(searched):
    tmp, path, _, lasts = searched
    run = kdsearch("export-best", path, "--pareto", cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    members = sorted(p.name for p in (tmp / "out" / "best" / "pareto").iterdir())
    printed = re.findall(r"Pareto front: ([0-9a-f]{8}) ", run.stdout)
    assert members == sorted(printed) and members
    for trial_id in members:
        card = json.loads((tmp / "out" / "best" / "pareto" / trial_id / "model_card.json").read_text())
        assert card["trial_id"] == trial_id and card["shipped"]["format"] == lasts[trial_id]["format"]
        assert card["metrics"]["val_macro_f1"] == pytest.approx(lasts[trial_id]["val_macro_f1"], abs=1e-9)

    # an int8 ResNet-34 trial, exported by id: plain torch.jit.load in a fresh interpreter scores what it reported
    trial_id = next(i for i, r in lasts.items() if r["config"]["student_format"] == "resnet34/int8")
    out = tmp / "int8"
    run = kdsearch("export-best", path, "--trial", trial_id, "--out", out, cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["precision"] == "int8" and card["files"]["student.torchscript.pt"] <= 25e6
    shipped = card["shipped"]
    assert shipped["torch"] == torch.__version__ and shipped["latency_ms"] > 0 and shipped["cpu"]
    assert "student.onnx" not in card["files"]
    from kdsearch.config import load_config
    from kdsearch.data.dataset import load_dataset
    from kdsearch.data.transforms import to_input
    from kdsearch.models.students import student_spec

    cfg = load_config(path)
    data = load_dataset(cfg)
    torch.save(to_input(data.val.x, student_spec(cfg), 16), tmp / "val.pt")
    code = ("import sys, torch; m = torch.jit.load(sys.argv[1]); x = torch.load(sys.argv[2], weights_only=True);"
            "torch.save(m(x).argmax(1), sys.argv[3]); print(sorted(k for k in sys.modules if k.startswith(('kdsearch',"
            "'torchvision'))))")
    run = subprocess.run([sys.executable, "-c", code, str(out / "student.torchscript.pt"), str(tmp / "val.pt"),
                          str(tmp / "pred.pt")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr[-2000:]
    pred = torch.load(tmp / "pred.pt", weights_only=True).numpy()
    f1 = f1_score(data.val.y.numpy(), pred, average="macro")
    assert f1 == pytest.approx(lasts[trial_id]["val_macro_f1"], abs=1e-9)


def test_report_lists_the_importances(searched):
    tmp, path, _, _ = searched
    run = kdsearch("report", path, "--device", "cpu", cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp / "out" / "report" / "report.json").read_text())
    shown = report["importances"]["val_macro_f1"]
    assert "fanova" in shown  # PED-ANOVA is left out when it has nothing to separate, and the line says so
    for evaluator, values in shown.items():
        assert set(values) <= {"lr", "alpha", "student", "precision"} and "lr" in values
        assert sum(values.values()) == pytest.approx(1.0)
    assert "importance for val_macro_f1 (fanova, 10 finished trials): " in run.stdout
    assert ("ped_anova" in shown) != ("importance for val_macro_f1 (ped_anova, top quantile 0.30 = the best 3 of 10 "
                                      "finished trials): nothing to separate" in run.stdout)
    # the file's size is the (student, format) pair's: nothing to fit, and said so
    assert report["importances"]["size_mb"] == {}
    assert "importance for size_mb: not fitted, it is fixed by the (student, format) pair" in run.stdout


def test_int8_for_a_student_that_cannot_be_int8_is_refused_naming_it(tmp_path):
    cfg = tiny_config(tmp_path, student={"candidates": ["resnet8", "efficientnet_b0"], "precision": "int8"})
    run = kdsearch("validate", write_config(tmp_path, cfg), cwd=tmp_path, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "student.precision int8: efficientnet_b0 cannot be int8" in run.stderr
    assert not (tmp_path / "out").exists()

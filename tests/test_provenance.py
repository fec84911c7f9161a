"""Every figure carries where it comes from (kdsearch.core.figures), and the comparisons only combine figures whose
provenance matches: "best" takes finished trials only, "KD added" a control and its matched KD trial, both
finished, the Pareto front finished trials only. Property tests (hypothesis) over random sets of trials."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdsearch.core import figures
from kdsearch.core.figures import KD_MATCH, Figure, comparable

from conftest import KDSEARCH, tiny_config, write_config

MAX = 3


def result(value: float, epochs: int = MAX, *, images: int = 200, split: int = 200, fmt: str = "fp32",
           diverged: bool = False) -> dict:
    """A trial's last reported result as the Distiller writes it: the shipped file on the last epoch, else the float
    model."""
    last = epochs >= MAX
    return {"training_iteration": epochs, "val_macro_f1": value, "val_full": images == split, "val_images": images,
            "val_split_images": split, "scored": f"{fmt} file" if last else "float", "train_loss": 0.3,
            "val_loss": 0.4, "diverged": diverged}


def fig(trial: str, value: float, epochs: int = MAX, *, alpha: float = 0.9, student: str = "resnet8",
        fmt: str = "fp32", lr: float = 3e-3, cut: bool = False, temperature: float = 4.0, **kw) -> Figure:
    config = {"student": student, "precision": fmt, "lr": lr, "alpha": alpha, "temperature": temperature}
    return Figure.of_result(result(value, epochs, fmt=fmt, **kw), "val_macro_f1", MAX, trial=trial, config=config,
                            cut=cut)


def test_a_whole_split_score_after_one_of_three_epochs_is_not_a_finished_figure():
    """Case 1's cause: val (200 images) is no larger than the rung subset (2,000), so every epoch is scored on the
    whole split; that does not make an epoch before the last a finished trial's."""
    early = fig("c", 0.95, epochs=1, alpha=0.0)
    assert early.whole and not early.finished and early.model == "float model"
    assert early.where() == "float model, whole val split, 200 images, stopped by ASHA after 1 of 3 epochs"
    done = fig("k", 0.93)
    assert done.finished and done.text() == ("val_macro_f1 0.9300 (fp32 file, whole val split, 200 images, "
                                             "3 of 3 epochs)")
    cut = fig("b", 0.9, epochs=2, images=12, cut=True)
    assert cut.where() == "float model, rung subset: 12 of 200 val images, cut by the time budget after 2 of 3 epochs"


def test_kd_added_of_a_stopped_control_claims_no_gain_and_says_why():
    kd, control = fig("kd", 0.93), fig("control", 0.95, epochs=1, alpha=0.0)
    added = figures.kd_added([kd, control], "max")
    assert added.gain is None and added.kd is kd and "did not both finish" in added.why
    line = added.line()
    assert line.startswith("KD added: no gain claimed") and "stopped by ASHA after 1 of 3 epochs" in line
    finished_control = fig("control", 0.9851, alpha=0.0)
    added = figures.kd_added([fig("kd", 0.9491), finished_control], "max")
    assert added.gain == pytest.approx(-0.036)  # the true sign: the control is better here
    assert added.line().startswith("KD added -0.0360 val_macro_f1 in this search, resnet8 fp32 at lr 0.003")


def test_kd_added_never_pairs_a_control_with_another_student_format_or_lr():
    """Case 3: the best KD trial of the search (ResNet-18 fp16) is not the control's (ResNet-34 int8) match."""
    control = fig("control", 0.70, alpha=0.0, student="resnet34", fmt="int8")
    other = fig("best", 0.78, student="resnet18", fmt="fp16")
    other_lr = fig("lr", 0.75, student="resnet34", fmt="int8", lr=1e-3)
    added = figures.kd_added([other, other_lr, control], "max")
    assert added.kd is None and added.gain is None and "no KD trial shares" in added.why
    match = fig("match", 0.66, student="resnet34", fmt="int8")
    added = figures.kd_added([other, other_lr, match, control], "max")
    assert added.kd is match and added.gain == pytest.approx(-0.04)
    # for a loss, lower is better: a lower KD loss is a positive gain
    lo = [Figure.of_result({**result(0.0), "val_loss": v}, "val_loss", MAX, trial=t,
                           config={"student": "resnet8", "lr": 1e-3, "alpha": a})
          for t, v, a in (("kd", 0.3, 0.9), ("control", 0.5, 0.0))]
    assert figures.kd_added(lo, "min").gain == pytest.approx(0.2)


def test_best_is_a_finished_figure_and_a_stopped_float_score_never_outranks_a_finished_file():
    """Case 2: a float model after 1 of 6 epochs (0.94) against finished int8 files (0.90, 0.88)."""
    stopped = fig("float", 0.94, epochs=1, fmt="int8")
    int8 = [fig("a", 0.90, fmt="int8"), fig("b", 0.88, fmt="int8")]
    assert figures.best([stopped, *int8], "max").trial == "a"
    assert figures.best([stopped], "max") is None
    # no trial finished: the best of those that ran the most epochs, among themselves, said as such
    pool = [fig("one", 0.99, epochs=1, cut=True), fig("two", 0.80, epochs=2, cut=True),
            fig("two-b", 0.85, epochs=2, cut=True)]
    top = figures.chosen(pool, "max")
    assert top.trial == "two-b" and not top.finished and "cut by the time budget after 2 of 3 epochs" in top.where()


def test_a_diverged_or_nan_result_never_wins():
    nan = fig("nan", float("nan"))
    diverged = fig("diverged", 0.99, diverged=True)
    ok, worse = fig("ok", 0.5), fig("worse", 0.4)
    for order in ([nan, diverged, ok, worse], [worse, ok, diverged, nan]):
        assert figures.best(order, "max").trial == "ok"
        assert figures.chosen(order, "max").trial == "ok"
    assert figures.chosen([nan, diverged], "max") is None
    assert diverged.ending == "diverged" and not diverged.finished


def test_a_result_from_before_the_image_counts_keeps_its_reading():
    """A search saved before results carried val_split_images (or val_images) reads as it was reported."""
    old = Figure.of_result({"training_iteration": 3, "val_macro_f1": 0.8, "scored": "fp32 file", "val_full": True},
                           "val_macro_f1", MAX)
    assert old.whole and old.finished
    sub = Figure.of_result({"training_iteration": 1, "val_macro_f1": 0.8, "val_full": False, "val_images": 12},
                           "val_macro_f1", MAX)
    assert not sub.whole
    assert sub.where() == "float model, rung subset: 12 val images, stopped by ASHA after 1 of 3 epochs"


def test_a_figure_survives_its_json_round_trip():
    f = fig("t", 0.8, epochs=2, images=12, cut=True)
    assert Figure.from_dict(f.as_dict()) == f and Figure.from_dict(f.as_dict()).text() == f.text()


# ----------------------------------------------------------------------------------- the comparison rule, at random

STUDENTS, FORMATS, LRS, ALPHAS = ("resnet8", "resnet18"), ("fp32", "int8"), (1e-3, 3e-3), (0.0, 0.25, 0.9)


@st.composite
def trial_sets(draw):
    """Trials of random students, formats, lrs and alphas, stopped after any epoch, scored whole or on a subset,
    cut by the time budget or not, a few diverged. Values on a grid of 1/1000 (ties happen, and no subnormal float
    is drawn: kdsearch flushes denormals to zero in the processes it trains in)."""
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        epochs = draw(st.integers(1, MAX))
        subset = draw(st.booleans()) and epochs < MAX
        out.append(fig(f"t{i}", draw(st.integers(0, 1000)) / 1000, epochs, alpha=draw(st.sampled_from(ALPHAS)),
                       student=draw(st.sampled_from(STUDENTS)), fmt=draw(st.sampled_from(FORMATS)),
                       lr=draw(st.sampled_from(LRS)), cut=draw(st.booleans()), images=12 if subset else 200,
                       temperature=draw(st.sampled_from((2.0, 4.0))),
                       diverged=draw(st.integers(0, 9)) == 0))
    return out


@settings(max_examples=300, deadline=None)
@given(trial_sets(), st.sampled_from(["max", "min"]))
def test_best_only_ever_takes_a_finished_figure_and_the_best_of_them(trials, mode):
    top = figures.best(trials, mode)
    done = [t for t in trials if t.finished]
    if not done:
        assert top is None
        return
    pick = max if mode == "max" else min
    assert top.finished and top.value == pick(t.value for t in done)


@settings(max_examples=300, deadline=None)
@given(trial_sets(), st.sampled_from(["max", "min"]))
def test_an_unfinished_pick_is_compared_only_with_figures_of_its_epochs(trials, mode):
    top = figures.chosen(trials, mode)
    if top is None or top.finished:
        return
    assert not any(t.finished for t in trials)
    rivals = [t for t in trials if t.rankable and t.epochs == top.epochs]
    assert top.epochs == max(t.epochs for t in trials if t.rankable)
    pick = max if mode == "max" else min
    assert top.value == pick(t.value for t in rivals)


@settings(max_examples=300, deadline=None)
@given(trial_sets(), st.sampled_from(["max", "min"]))
def test_kd_added_only_ever_combines_a_finished_matched_pair(trials, mode):
    added = figures.kd_added(trials, mode)
    if added is None:
        assert all(t.config["alpha"] != 0 for t in trials)
        return
    assert added.control.config["alpha"] == 0
    if added.gain is None:
        assert added.why
        return
    c, k = added.control, added.kd
    assert c.finished and k.finished and comparable(c, k, KD_MATCH) and k.config["alpha"] > 0
    assert all(getattr(c, f) == getattr(k, f) for f in ("student", "format", "lr", "epochs"))
    # the control's configuration but for alpha (and feature hints): the start point it was made from
    assert {x: v for x, v in c.config.items() if x != "alpha"} == {x: v for x, v in k.config.items() if x != "alpha"}
    assert added.gain == pytest.approx((k.value - c.value) * (1 if mode == "max" else -1))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_pareto_front_holds_finished_trials_only(tmp_path_factory, seed):
    from kdsearch.config import Config
    from kdsearch.search.finished_study import rebuild

    cfg = Config.model_validate(tiny_config(tmp_path_factory.mktemp("front"), search={
        "max_epochs": MAX, "grace_period": 1,
        "space": {"lr": {"choice": list(LRS)}, "alpha": {"choice": list(ALPHAS)},
                  "precision": {"choice": list(FORMATS)}}}))
    rng = random.Random(seed)
    rows = []
    for i in range(rng.randint(1, 10)):
        epochs = rng.randint(1, MAX)
        fmt = rng.choice(FORMATS)
        last = {**result(rng.random(), epochs, fmt=fmt, images=rng.choice([12, 200]) if epochs < MAX else 200),
                "size_mb": rng.uniform(1, 20), "latency_ms": rng.uniform(0.5, 9)}
        rows.append({"id": f"t{i}", "config": {"student_format": f"{rng.choice(STUDENTS)}/{fmt}",
                                                "lr": rng.choice(LRS), "alpha": rng.choice(ALPHAS)}, "last": last})
    study = rebuild(rows, cfg, lambda r: r["id"], lambda r: r["config"], lambda r: r["last"])
    done = {r["id"] for r in rows if Figure.of_result(r["last"], "val_macro_f1", MAX, config=r["config"]).finished}
    assert set(study.front) <= done and (not done or study.front)
    assert all(math.isfinite(t.values[0]) for t in study.study.trials)


# ----------------------------------------------------------------------------------- as users run it (installed CLI)

ENV = {**os.environ, "COLUMNS": "200"}  # rich tables unwrapped


def kdsearch(*args, cwd, timeout=900):
    return subprocess.run([KDSEARCH, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=ENV)


def lasts(folder) -> dict[str, dict]:
    """Each trial's last reported result, as Ray Tune wrote it."""
    out = {}
    for f in folder.glob("*/result.json"):
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[lines[-1]["trial_id"]] = lines[-1]
    return out


@pytest.fixture(scope="module")
def kd_search(tmp_path_factory):
    """Digits at 8 px with 5 labels per class (the no-KD control trains on 50 images, far below the KD trial at the
    first rung), a val split (360) smaller than the rung subset (2,000: every epoch scored whole), int8, and an ASHA
    that stops three of four trials below its first rung's top: today's ASHA stops the control after 1 of 3 epochs."""
    tmp = tmp_path_factory.mktemp("kd-added")
    raw = tiny_config(tmp, name="kdadded", data={"source": "digits", "image_size": 8, "augment": "none",
                                                 "label_budget": 5},
                      teacher={"source": "train", "arch": "resnet8", "epochs": 4, "patience": 2},
                      student={"candidates": ["resnet8"], "precision": "int8"},
                      search={"num_samples": 3, "max_concurrent": 1, "max_epochs": 3, "grace_period": 1,
                              "reduction_factor": 4,
                              "space": {"alpha": {"uniform": [0.0, 1.0]}, "lr": 3.0e-3, "temperature": 4.0,
                                        "batch_size": 64, "weight_decay": 1.0e-4, "class_weight_power": 0.0}})
    path = write_config(tmp, raw)
    run = kdsearch("run", path, "--device", "cpu", cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp, path, raw, run.stdout, lasts(tmp / "out" / "ray" / "kdadded")


@pytest.mark.e2e
def test_kd_added_is_the_control_against_its_matched_kd_trial_both_run_to_the_end(kd_search):
    """Case 1: the control is kept to max_epochs, and the gain is the two finished int8 files' difference."""
    from mlflow.tracking import MlflowClient

    tmp, _, raw, out, results = kd_search
    control = next(r for r in results.values() if r["config"]["alpha"] == 0)
    kd = next(r for r in results.values() if r["config"]["alpha"] == 0.9)
    for r in (control, kd):
        assert r["training_iteration"] == 3 and r["scored"] == "int8 file" and r["val_images"] == 360
    gain = kd["val_macro_f1"] - control["val_macro_f1"]
    line = next(s for s in out.splitlines() if s.startswith("KD added"))
    assert line == (f"KD added {gain:+.4f} val_macro_f1 in this search, resnet8 int8 at lr 0.003: KD trial "
                    f"{kd['trial_id']} (alpha 0.9) val_macro_f1 {kd['val_macro_f1']:.4f} (int8 file, whole val split, "
                    f"360 images, 3 of 3 epochs) against no-KD control (alpha 0) {control['trial_id']} val_macro_f1 "
                    f"{control['val_macro_f1']:.4f} (int8 file, whole val split, 360 images, 3 of 3 epochs)")
    client = MlflowClient(raw["tracking"]["uri"])
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("kdadded").experiment_id])
                  if r.data.tags.get("kdsearch.kind") == "search")
    assert parent.data.metrics["kd_added_val_macro_f1"] == pytest.approx(gain, abs=1e-12)
    assert parent.data.tags["kdsearch.kd_added"] == line


@pytest.mark.e2e
def test_report_scores_both_arms_as_their_int8_files_with_the_float_figure_beside(kd_search):
    """Case 4: the report's arms are what ships. Each arm is `kdsearch train` at the same settings, so train's
    metrics.json (its int8 file, and its float model) must be the report's figures to the last digit."""
    tmp, path, _, out, _ = kd_search
    run = kdsearch("report", path, "--device", "cpu", cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    rep = json.loads((tmp / "out" / "report" / "report.json").read_text())
    f, arm = rep["cnn"], rep["arms"]["without_kd"]
    assert rep["format"] == "int8" and "students scored as their int8 files, the float model in brackets" in run.stdout
    train = kdsearch("train", path, "--device", "cpu", "--set", "search.space.alpha=0",
                     "--set", f"search.max_epochs={arm['epochs']}", cwd=tmp)
    assert train.returncode == 0, train.stderr[-3000:]
    final = json.loads((tmp / "out" / "train" / "metrics.json").read_text())["final"]
    assert final["scored"] == "int8 file"
    assert f["student_macro_f1_without_kd"] == pytest.approx(final["val_macro_f1"], abs=1e-12)
    assert f["student_macro_f1_without_kd_float"] == pytest.approx(final["val_macro_f1_float"], abs=1e-12)
    assert f["kd_gain_macro_f1"] == pytest.approx(f["student_macro_f1_with_kd"] - f["student_macro_f1_without_kd"])
    assert re.search(r"KD gain \(int8 files\) .* \([\d.-]+ float\)", run.stdout)
    # the search's own figure, labelled with its student and format, is the run's line
    assert rep["kd_added_in_search"]["line"] == next(s for s in out.splitlines() if s.startswith("KD added"))
    assert "In the search: " + rep["kd_added_in_search"]["line"] in " ".join(run.stdout.split("\n"))


@pytest.mark.e2e
def test_a_budget_cut_int8_search_shows_exports_and_logs_the_int8_file_after_k_of_n_epochs(tmp_path):
    """Case 2 and case 6 (int8): every trial cut by the time budget, val no larger than the rung subset. The search's
    figure is its best trial's int8 file on the whole split, said to be after k of 500 epochs and chosen on a float
    score; export writes that file; a stopped trial asked for by id exits 2, with --partial too (no int8 file)."""
    from mlflow.tracking import MlflowClient

    raw = tiny_config(tmp_path, name="cut8", student={"candidates": ["resnet8"], "precision": "int8"})
    raw["search"].update({"max_epochs": 500, "grace_period": 500, "num_samples": 2, "max_concurrent": 2,
                          "time_budget_s": 20})
    raw["search"]["space"]["lr"] = {"loguniform": [1.0e-3, 1.0e-2]}
    path = write_config(tmp_path, raw)
    run = kdsearch("run", path, "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    best = re.search(r"best trial (\w+): val_macro_f1 ([\d.]+) \(int8 file, whole val split, (\d+) images, cut by the "
                     r"time budget after (\d+) of 500 epochs\); no trial ran all its epochs: chosen on val_macro_f1 "
                     r"[\d.]+ \(float model, whole val split, \3 images, cut by the time budget after \4 of 500 "
                     r"epochs\), re-scored as it ships", run.stdout)
    assert best, run.stdout
    card = json.loads((tmp_path / "out" / "best" / "model_card.json").read_text())
    assert card["precision"] == "int8" and card["trial_id"] == best.group(1) and card["trial_finished"] is False
    assert card["trial_epochs"] == {"done": int(best.group(4)), "of": 500, "ended": "budget_cut"}
    assert card["metrics"]["val_macro_f1"] == pytest.approx(float(best.group(2)), abs=1e-4)
    assert card["metrics"]["trial_figure"]["model"] == "int8 file"
    assert card["shipped"]["onnx"].startswith("not written: ONNX export of eager int8")
    client = MlflowClient(raw["tracking"]["uri"])
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("cut8").experiment_id])
                  if r.data.tags.get("kdsearch.kind") == "search")
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(card["metrics"]["val_macro_f1"], abs=1e-12)
    assert "int8 file" in parent.data.tags["kdsearch.best"] and "of 500 epochs" in parent.data.tags["kdsearch.best"]
    version = client.get_model_version("cut8-student", "1")
    assert version.tags["kdsearch.trial_finished"] == "false" and version.description.startswith("NOT a finished")
    other = next(i for i in lasts(tmp_path / "out" / "ray" / "cut8") if i != best.group(1))
    for extra in ([], ["--partial"]):
        run = kdsearch("export-best", path, "--trial", other, "--out", tmp_path / "other", *extra, cwd=tmp_path)
        assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "other").exists()
    assert "did not finish" in kdsearch("export-best", path, "--trial", other, cwd=tmp_path).stderr


@pytest.mark.e2e
def test_train_teacher_twice_gives_the_same_teacher_to_the_last_digit(tmp_path):
    """Case 7: the teacher's initial weights and data order come from `seed`; the cache file is named by it."""
    raw = tiny_config(tmp_path, teacher={"source": "train", "arch": "resnet8", "epochs": 2, "patience": 2})
    weights = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        raw["output"]["dir"] = str(tmp_path / name)
        raw["seed"] = seed
        run = kdsearch("train-teacher", write_config(tmp_path, raw, f"{name}.yaml"), "--device", "cpu", cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        (cached,) = (tmp_path / name / "teacher").glob("trained-*.pt")
        weights[name] = (cached.name, torch.load(cached, weights_only=True)["state_dict"],
                         re.search(r"macro-F1 ([\d.]+)", run.stdout).group(1))
    (name_a, sd_a, f1_a), (name_b, sd_b, f1_b), (name_c, sd_c, _) = weights.values()
    assert name_a == name_b and f1_a == f1_b and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert name_c != name_a and any(not torch.equal(sd_a[k], sd_c[k]) for k in sd_a if sd_a[k].is_floating_point())


def test_int8_qat_epochs_without_int8_exits_2_with_one_line(tmp_path):
    raw = tiny_config(tmp_path)
    raw["search"]["space"]["int8_qat_epochs"] = {"int": [0, 2]}
    run = subprocess.run([KDSEARCH, "validate", str(write_config(tmp_path, raw))], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and "search.space.int8_qat_epochs" in run.stderr
    raw["student"]["precision"] = "int8"
    raw["student"]["candidates"] = ["resnet8"]
    assert subprocess.run([KDSEARCH, "validate", str(write_config(tmp_path, raw))], capture_output=True,
                          timeout=300).returncode == 0


def test_an_fp16_export_writes_its_onnx_file_in_fp16_and_none_over_the_limit(tmp_path):
    """Case 9: student.onnx in the shipped format (float16 weights, half an fp32 file), refused over the limit."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from kdsearch.deploy.export import _export_onnx
    from kdsearch.models.students import create_student

    torch.manual_seed(0)
    model = create_student("resnet8", 10, 16).eval()
    example = torch.zeros(1, 3, 16, 16)
    assert _export_onnx(model, example, tmp_path / "fp32.onnx", "fp32", 25).startswith("written in fp32")
    assert _export_onnx(model, example, tmp_path / "fp16.onnx", "fp16", 25).startswith("written in fp16")
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    assert {i.data_type for i in graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.55 * (tmp_path / "fp32.onnx").stat().st_size
    x = torch.rand(2, 3, 16, 16)
    (got,) = ReferenceEvaluator(str(tmp_path / "fp16.onnx")).run(None, {"image": x.half().numpy()})
    assert torch.allclose(torch.from_numpy(got).float(), model(x), atol=0.05)
    why = _export_onnx(model, example, tmp_path / "over.onnx", "fp32", 5)
    assert why == "not written: 19.6 MB in fp32, over student.max_size_mb 5" and not (tmp_path / "over.onnx").exists()


def test_batchnorm_and_int8_calibration_read_unaugmented_training_images(tmp_path):
    """Case 9: with `augment` on, the calibration sample is the training images themselves, not view 0 of the
    cached (augmented) views."""
    from kdsearch.config import Config
    from kdsearch.data.dataset import stratified_sample
    from kdsearch.distill.distiller import BN_SAMPLES, Distiller, Hparams, prepare

    cfg = Config.model_validate(tiny_config(tmp_path, data={"source": "digits", "image_size": 8,
                                                            "augment": "standard"}))
    prepared = prepare(cfg, "cpu")
    views = prepared.targets.views
    idx = stratified_sample(prepared.data.pool_labels(), BN_SAMPLES, cfg.seed)
    assert not torch.equal(views.pixels(0, idx), views.x[idx])  # view 0 is augmented
    d = Distiller(cfg, Hparams(student="resnet8", temperature=4.0, alpha=0.5, lr=1e-3, weight_decay=0.0,
                               batch_size=64, class_weight_power=0.0), prepared, "cpu")
    assert torch.equal(d._bn_images, views.x[idx])

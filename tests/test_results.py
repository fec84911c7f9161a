"""Seeing results after a real search: `kdsearch report`, the explore notebook, and a real MLflow server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from kdsearch.config import Config
from kdsearch.deploy.export import export_best
from kdsearch.deploy.report import run_report
from kdsearch.distill.distiller import Hparams, prepare, train_student
from kdsearch.engine.loop import evaluate
from kdsearch.models.students import student_spec
from kdsearch.search.tuner import run_search

from conftest import KDSEARCH, REPO, tiny_config, write_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier

PLOTS = {"learning_curves", "metric_vs_size", "parallel_coordinates", "confusion_matrix", "sample_predictions"}


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory):
    """A finished, exported tiny search on digits: 4 trials of up to 2 epochs, alpha searched."""
    tmp = tmp_path_factory.mktemp("results")
    raw = tiny_config(tmp, name="results", student={"candidates": ["shufflenet_v2_x0_5", "resnet8"]},
                      search={"num_samples": 4, "max_concurrent": 2, "max_epochs": 2, "grace_period": 1,
                              "reduction_factor": 2,
                              "space": {"lr": 3.0e-3, "alpha": {"uniform": [0.2, 1.0]}, "temperature": 4.0,
                                        "batch_size": 64, "weight_decay": 1e-4, "class_weight_power": 0.0}})
    cfg = Config.model_validate(raw)
    result = run_search(cfg, device="cpu")
    export_best(cfg)
    return tmp, cfg, write_config(tmp, raw), result


def test_report_measures_kd_against_the_same_config_without_kd(searched):
    tmp, cfg, _, result = searched
    rep = run_report(cfg, seeds=2, device="cpu")
    f = rep["cnn"]
    best = Hparams.from_mapping(result.best["config"])
    assert rep["best_config"] == best.as_dict() and rep["best_config_from"].startswith("search trial")
    assert rep["seeds"] == [0, 1] and rep["epochs"] == 2
    for key in ("teacher_accuracy", "student_accuracy_without_kd", "student_accuracy_with_kd", "teacher_macro_f1",
                "student_macro_f1_without_kd", "student_macro_f1_with_kd"):
        assert 0.0 <= f[key] <= 1.0, key
    assert "student_accuracy_with_kd_std" in f  # two seeds: a spread
    # the teacher figure is the teacher's; the without-KD figure is the best config trained with alpha = 0
    prepared = prepare(cfg, "cpu")
    assert f["teacher_accuracy"] == pytest.approx(prepared.teacher_metrics["val_accuracy"])
    accs = []
    for seed in (0, 1):
        d, _ = train_student(cfg, Hparams.from_mapping({**best.as_dict(), "alpha": 0.0}), prepared, "cpu", seed=seed)
        accs.append(evaluate(d.model, prepared.data.val.x, prepared.data.val.y, student_spec(cfg),
                             cfg.data.image_size, 10, "cpu").accuracy)
    assert f["student_accuracy_without_kd"] == pytest.approx(sum(accs) / 2, abs=1e-9)
    # ...and the with-KD figure is that config as the search ran it (its alpha, not 0)
    assert best.alpha > 0
    kd = [evaluate(train_student(cfg, best, prepared, "cpu", seed=seed)[0].model, prepared.data.val.x,
                   prepared.data.val.y, student_spec(cfg), cfg.data.image_size, 10, "cpu").accuracy for seed in (0, 1)]
    assert f["student_accuracy_with_kd"] == pytest.approx(sum(kd) / 2, abs=1e-9)
    assert rep["arms"]["with_kd"]["optimizer_steps"] == rep["arms"]["without_kd"]["optimizer_steps"]
    assert f["kd_gain_accuracy"] == pytest.approx(f["student_accuracy_with_kd"] - f["student_accuracy_without_kd"])
    # files: report.json and the five plots, real PNGs; the same on the search's MLflow parent run
    out = cfg.output_dir / "report"
    assert json.loads((out / "report.json").read_text())["cnn"] == f
    assert set(rep["plots"]) == PLOTS
    for p in rep["plots"].values():
        with Image.open(p) as img:
            assert img.format == "PNG" and img.width > 200
    client = MlflowClient(cfg.tracking.uri)
    assert rep["mlflow_run_id"] == result.parent_run_id
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/report.json", *(f"report/{p}.png" for p in PLOTS)} <= logged
    run = client.get_run(result.parent_run_id)
    assert run.data.metrics["report.student_accuracy_with_kd"] == pytest.approx(f["student_accuracy_with_kd"])


def test_notebook_runs_top_to_bottom_on_the_search(searched):
    import nbformat
    from nbclient import NotebookClient

    tmp, cfg, path, _ = searched
    nb = nbformat.read(REPO / "notebooks" / "explore_search.ipynb", as_version=4)
    env = {"KDSEARCH_CONFIG": str(path), "KDSEARCH_OUTPUT_DIR": str(cfg.output_dir),
           "MLFLOW_TRACKING_URI": cfg.tracking.uri}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"config results: tracking {cfg.tracking.uri}" in text
    assert "1 search run(s), 4 trials" in text
    assert "correct on these images" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the search plots and the prediction grid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, endpoint: str, **params) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def mlflow_server(uri: str):
    """A real `mlflow server` on loopback over `uri`; yields (base URL, the experiment "results")."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                exp = _get(base, "experiments/get-by-name", experiment_name="results")["experiment"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within 60 s")
        yield base, exp
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_server_shows_the_search(searched):
    """`mlflow server` on loopback over the search's sqlite store; the REST API holds search, trials, params, epochs."""
    _, cfg, _, result = searched
    with mlflow_server(cfg.tracking.uri) as (base, exp):
        runs = _post(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        parents = [r for r, t in zip(runs, tags) if t.get("kdsearch.kind") == "search"]
        children = [(r, t) for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == result.parent_run_id]
        assert [p["info"]["run_id"] for p in parents] == [result.parent_run_id]
        assert len(children) == 4
        for run, tag in children:
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert {"alpha", "lr", "temperature", "student"} <= set(params)
            history = _get(base, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_macro_f1")
            steps = sorted(m["step"] for m in history["metrics"])
            assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2  # one point per epoch
            assert tag["kdsearch.ended"] in ("completed", "stopped_early")


@contextlib.contextmanager
def kdsearch_ui(config: Path, cwd: Path):
    """A real `kdsearch ui CONFIG` process; yields (experiment URL, comparison URL) as it prints them."""
    ui = subprocess.Popen([KDSEARCH, "ui", str(config), "--port", str(_free_port())], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        experiment = ui.stdout.readline().strip()
        compare = ui.stdout.readline().strip()
        assert experiment.startswith("experiment results: http://127.0.0.1:"), (experiment, ui.stderr.read())
        yield experiment.split(": ", 1)[1], compare.split(": ", 1)[1]
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C stops the server cleanly
        assert ui.wait(timeout=60) == 0
        assert "MLflow UI stopped" in ui.stderr.read()


def test_kdsearch_ui_links_the_trials_best_first_and_the_model_training_view(searched):
    tmp, cfg, config, result = searched
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name("results")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    trials = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], "tags.`kdsearch.kind` = 'trial'")}
    with kdsearch_ui(config, tmp) as (experiment, compare):
        assert experiment.endswith(f"/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
        query = urllib.parse.parse_qs(compare.split("#/compare-runs?", 1)[1])
        ids = json.loads(query["runs"][0])
        assert json.loads(query["experiments"][0]) == [exp.experiment_id] and set(ids) == set(trials)
        scores = [trials[i].data.metrics.get("val_macro_f1") for i in ids]
        known = [v for v in scores if v is not None]
        assert known == sorted(known, reverse=True) and scores[:len(known)] == known  # best first
        with urllib.request.urlopen(experiment.split("#")[0] + "health", timeout=10) as r:
            assert r.read().strip() == b"OK"  # MLflow's own server is up behind the links


def test_kdsearch_ui_on_a_remote_server_prints_its_links_and_starts_nothing(searched):
    """tracking.uri on an MLflow server already running: `kdsearch ui` prints URLs on that server and returns."""
    tmp, cfg, config, _ = searched
    client = MlflowClient(cfg.tracking.uri)
    exp_id = client.get_experiment_by_name("results").experiment_id
    trials = {r.info.run_id for r in client.search_runs([exp_id], "tags.`kdsearch.kind` = 'trial'")}
    with mlflow_server(cfg.tracking.uri) as (base, _):
        done = subprocess.run([KDSEARCH, "ui", str(config), "--set", f"tracking.uri={base}"], cwd=tmp,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    experiment, compare = (line.split(": ", 1)[1] for line in done.stdout.strip().splitlines())
    assert experiment == f"{base}/#/experiments/{exp_id}?workflowType=machine_learning"
    assert compare.startswith(f"{base}/#/compare-runs?")
    query = urllib.parse.parse_qs(compare.split("?", 1)[1])
    assert set(json.loads(query["runs"][0])) == trials
    assert "MLflow UI" not in done.stderr  # no local server was started or stopped


def test_child_runs_last_as_long_as_their_trials(searched):
    """Each trial's MLflow run starts before its first epoch began and ends after its last was reported, so
    durations in the UI are the trials'."""
    _, cfg, _, _ = searched
    from ray import tune

    client = MlflowClient(cfg.tracking.uri)
    runs = {r.data.tags["kdsearch.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("results").experiment_id], "tags.`kdsearch.kind` = 'trial'")}
    analysis = tune.ExperimentAnalysis(str(cfg.output_dir / "ray" / "results"))
    for trial_id, df in analysis.trial_dataframes.items():
        run = runs[trial_id]
        first_epoch_began = (df["timestamp"].iloc[0] - df["time_this_iter_s"].iloc[0]) * 1000
        last_report = df["timestamp"].iloc[-1] * 1000
        assert run.info.start_time <= first_epoch_began + 1000, trial_id  # timestamps are whole seconds
        assert run.info.end_time >= last_report - 1000, trial_id
        assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_screenshot_of_the_trials_compare_view(searched, tmp_path):
    """Headless Chromium renders the comparison `kdsearch ui` links (apt-get install chromium), with the trials'
    run names. KDSEARCH_SCREENSHOT=docs/mlflow_compare.png keeps the picture (docs/results.md's)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("needs Chromium: apt-get install -y chromium")
    tmp, cfg, config, _ = searched
    client = MlflowClient(cfg.tracking.uri)
    names = {r.info.run_name for r in client.search_runs(
        [client.get_experiment_by_name("results").experiment_id], "tags.`kdsearch.kind` = 'trial'")}
    out = Path(os.environ.get("KDSEARCH_SCREENSHOT", tmp_path / "compare.png")).resolve()
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1500,1100",
              "--virtual-time-budget=20000"]
    with kdsearch_ui(config, tmp) as (_, compare):
        subprocess.run([*browse, f"--screenshot={out}", compare], check=True, capture_output=True, timeout=180)
        dom = subprocess.run([*browse, "--dump-dom", compare], check=True, capture_output=True, text=True,
                             timeout=180).stdout
    assert names and all(name in dom for name in names)  # a row per trial, by its run name
    with Image.open(out) as img:
        assert img.size == (1500, 1100)
        colours = img.convert("L").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # a rendered page, not a blank one


def test_report_on_few_labels_with_a_test_split_trains_both_arms_for_equal_steps(tmp_path):
    """`kdsearch report` through the console script, no search: digits as an .npz with its own test split and 5
    labels per class (the rest transfer images). The no-KD arm sees only the 50 labeled images an epoch, so it
    gets the epochs that give it the KD arm's optimizer steps; both splits are scored and shown."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images * 255 / 16).astype(np.uint8), digits.target
    np.savez(tmp_path / "digits.npz", train_images=x[:1200], train_labels=y[:1200], val_images=x[1200:1500],
             val_labels=y[1200:1500], test_images=x[1500:], test_labels=y[1500:])
    raw = tiny_config(tmp_path, name="report-few", data={"source": "npz", "root": str(tmp_path), "image_size": 8,
                                                          "augment": "none", "label_budget": 5})
    raw["search"].update(max_epochs=2)
    run = subprocess.run([KDSEARCH, "report", str(write_config(tmp_path, raw)), "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "COLUMNS": "200"})  # table rows unwrapped
    assert run.returncode == 0, run.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    kd, plain = rep["arms"]["with_kd"], rep["arms"]["without_kd"]
    assert kd == {"epochs": 2, "images_per_epoch": 1200, "optimizer_steps": 2 * 19}
    assert plain["images_per_epoch"] == 50 and plain["optimizer_steps"] == kd["optimizer_steps"]  # 38 epochs of 1
    assert rep["splits"] == ["val", "test"]
    f = rep["cnn"]
    for key in ("teacher_macro_f1_test", "student_macro_f1_without_kd_test", "student_macro_f1_with_kd_test"):
        assert 0.0 <= f[key] <= 1.0, key
    assert "test split" in run.stdout
    assert "student without KD (38 epochs x 50 images, 38 steps)" in run.stdout
    assert "student with KD (kd; 2 epochs x 1200 images, 38 steps)" in run.stdout

"""`kdsearch run` and `export-best` for real: Ray with 2 CPUs, Optuna, ASHA, a sqlite MLflow store, exported files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.deploy.export import export_best
from kdsearch.runtime.experiment import experiment_dir
from kdsearch.search.tuner import run_search
from kdsearch.tracking import _fluent_uri

from conftest import tiny_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier


def search_config(tmp, **search) -> Config:
    return Config.model_validate(tiny_config(
        tmp,
        name="search",
        # resnet18 (44.8 MB) is over the limit: it must be named and never trained
        student={"candidates": ["shufflenet_v2_x0_5", "mobilenet_v3_small", "resnet18"]},
        # rung decisions on 120 of digits' 360 val images; every trial's last epoch on all of them
        search={"num_samples": 6, "max_concurrent": 2, "max_epochs": 3, "grace_period": 1, "reduction_factor": 2,
                "rung_val_size": 120,
                "space": {"lr": {"choice": [3.0e-3, 2.0]},  # lr 2.0 trains badly or diverges
                          "alpha": {"uniform": [0.0, 1.0]}, "temperature": 4.0, "batch_size": 64,
                          "weight_decay": 1.0e-4, "class_weight_power": 0.0}, **search},
    ))



@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    cfg = search_config(tmp)
    return cfg, run_search(cfg, device="cpu")


def test_search_runs_every_trial_and_asha_stops_some(searched):
    cfg, result = searched
    assert sum(result.trials.values()) == 6 and result.trials["errored"] == 0
    assert result.trials["stopped_early"] >= 1, result.trials
    assert result.trials["completed"] >= 1
    assert result.best["metrics"]["val_macro_f1"] > 0.2  # chance is 0.1; 3 tiny epochs at 8 px


def test_size_filter_never_trains_an_over_limit_student(searched):
    cfg, result = searched
    assert result.students == ["shufflenet_v2_x0_5", "mobilenet_v3_small"]
    configs = [json.loads(p.read_text().splitlines()[0])["config"]
               for p in experiment_dir(cfg).glob("*/result.json") if p.read_text().strip()]
    assert len(configs) == 6 and {c["student"] for c in configs} <= set(result.students)


def test_rungs_score_a_fixed_subset_and_last_epochs_the_whole_split(searched):
    cfg, result = searched
    epochs = [json.loads(line) for p in experiment_dir(cfg).glob("*/result.json")
              for line in p.read_text().splitlines()]
    for e in epochs:
        assert (e["val_images"], e["val_full"]) == ((360, True) if e["epoch"] == 3 else (120, False))
    assert result.best["metrics"]["val_full"] and result.best["metrics"]["training_iteration"] == 3


def test_the_first_trial_starts_at_the_papers_settings(searched):
    cfg, result = searched
    # a trial's folder is <trainable>_<id>_<n>_<params>: n counts up in the order trials were suggested
    configs = {int(re.search(r"_[0-9a-f]{8}_(\d+)_",
                             p.parent.name).group(1)): json.loads(p.read_text().splitlines()[0])["config"]
               for p in experiment_dir(cfg).glob("*/result.json") if p.read_text().strip()}
    first = configs[min(configs)]
    # KD's T=4, alpha=0.9 enqueued before TPE's random start-up; a uniform draw never lands on 0.9 exactly
    assert (first["alpha"], first["lr"], first["student"]) == (0.9, 3.0e-3, "shufflenet_v2_x0_5")
    assert sum(c["alpha"] == 0.9 for c in configs.values()) == 1


def test_teacher_forward_passes_are_n_times_views_whatever_the_trials(searched):
    cfg, result = searched
    n = 1797  # digits: every image once (train views + val), computed before the trials
    assert result.teacher_forward_passes == n
    assert result.trial_epochs > 6  # many trial-epochs, still no teacher pass inside any trial


def test_mlflow_has_a_parent_and_one_child_per_trial_with_epoch_metrics(searched):
    cfg, result = searched
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdsearch.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert len(children) == 6
    assert parents[0].data.metrics["trials_stopped_early"] == result.trials["stopped_early"]
    assert parents[0].data.metrics["teacher_forward_passes"] == 1797
    ended = {c.data.tags["kdsearch.ended"] for c in children}
    assert ended <= {"completed", "stopped_early", "diverged"} and "stopped_early" in ended
    for child in children:
        assert {"alpha", "lr", "student", "temperature"} <= set(child.data.params)
        rung = [m.step for m in client.get_metric_history(child.info.run_id, "rung_val_macro_f1")]
        full = [m.step for m in client.get_metric_history(child.info.run_id, "val_macro_f1")]
        steps = sorted(rung + full)
        assert steps == list(range(1, len(steps) + 1)) and steps  # one value per epoch, no duplicates
        # MLflow's val_macro_f1 is only ever the whole split's: the last epoch of a completed trial
        assert full == ([3] if child.data.tags["kdsearch.ended"] == "completed" else []), (rung, full)
        assert child.data.tags["student"] in ("shufflenet_v2_x0_5", "mobilenet_v3_small")


def test_export_writes_every_file_and_reproduces_the_metric(searched, tmp_path):
    cfg, result = searched
    exported = export_best(cfg, out=tmp_path / "best")
    names = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert names == ["labels.json", "model_card.json", "student.onnx", "student.pt", "student.torchscript.pt"]
    card = json.loads((tmp_path / "best" / "model_card.json").read_text())
    assert card["student"] == result.best["config"]["student"]
    assert card["metrics"]["val_macro_f1"] == pytest.approx(result.best["metrics"]["val_macro_f1"], abs=1e-6)
    assert card["files"]["student.pt"] == (tmp_path / "best" / "student.pt").stat().st_size <= 25_000_000
    assert card["class_names"] == [str(i) for i in range(10)] and card["teacher"]["source"] == "train"
    labels = json.loads((tmp_path / "best" / "labels.json").read_text())
    assert labels == card["classes"] == [{"index": i, "class": str(i), "label_id": i} for i in range(10)]
    assert {"torch", "ray", "mlflow", "kdsearch"} <= set(card["versions"])
    assert exported.registered.startswith("search-student/")
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # registering did not leak its URI into the environment
    name, version = exported.registered.split("/")
    registered = MlflowClient(cfg.tracking.uri).get_model_version(name, version)
    assert registered.status == "READY" and registered.run_id == result.parent_run_id
    with _fluent_uri(cfg.tracking.uri):  # the registered version loads and computes what the exported file does
        loaded = mlflow.pytorch.load_model(f"models:/{exported.registered}")
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scripted = torch.jit.load(tmp_path / "best" / "student.torchscript.pt")
    assert torch.allclose(loaded(x), scripted(x), atol=1e-5)
    # student.onnx is the trained student too, not an untrained build (onnx's reference runtime, real images)
    from onnx.reference import ReferenceEvaluator

    from kdsearch.data.dataset import load_dataset
    from kdsearch.data.transforms import to_input
    from kdsearch.models.students import student_spec

    data = load_dataset(cfg)
    batch = to_input(data.val.x[:4], student_spec(cfg), 8)
    (onnx_logits,) = ReferenceEvaluator(str(tmp_path / "best" / "student.onnx")).run(None, {"image": batch.numpy()})
    assert torch.allclose(torch.from_numpy(onnx_logits), scripted(batch), atol=1e-4)

    # the TorchScript file alone, in a Python that cannot import kdsearch, reproduces the val metric
    torch.save({"x": to_input(data.val.x, student_spec(cfg), 8), "y": data.val.y}, tmp_path / "val.pt")
    script = (
        "import sys; sys.modules['kdsearch'] = None\n"
        "import torch; from sklearn.metrics import f1_score\n"
        f"m = torch.jit.load(r'{tmp_path / 'best' / 'student.torchscript.pt'}')\n"
        f"d = torch.load(r'{tmp_path / 'val.pt'}', weights_only=True)\n"
        "pred = m(d['x']).argmax(1)\n"
        "print(f1_score(d['y'].numpy(), pred.numpy(), average='macro'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert float(out.strip().splitlines()[-1]) == pytest.approx(card["metrics"]["val_macro_f1"], abs=1e-6)


def test_over_limit_export_is_refused_and_the_previous_export_survives(searched, tmp_path):
    cfg, result = searched
    out = tmp_path / "best"
    export_best(cfg, out=out, register=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tight = cfg.model_copy(update={"student": cfg.student.model_copy(update={"max_size_mb": 0.1})})
    with pytest.raises(KdsearchError, match="export refused"):
        export_best(tight, out=out, register=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@contextlib.contextmanager
def _tampered_best_checkpoint(cfg, change):
    """The best trial's shipped file (and float state) with `change(state_dict, final layer prefix)` applied after
    its trial, restored afterwards (the module's other tests share the search)."""
    from kdsearch.deploy.export import best_trial
    from kdsearch.models import deployed
    from kdsearch.models.students import create_student, final_linear
    from kdsearch.runtime.experiment import TRIAL_STATE_FILE

    trial = best_trial(cfg)
    files = [trial.checkpoint_dir / name for name in (TRIAL_STATE_FILE, deployed.FILE)]
    originals = [f.read_bytes() for f in files]
    state = torch.load(files[0], weights_only=True)
    model = create_student(trial.config["student"], 10, cfg.data.image_size)
    head = next(name for name, m in model.named_modules() if m is final_linear(model))
    change(state["model"], head)
    model.load_state_dict(state["model"])
    torch.save(state, files[0])
    files[1].write_bytes(deployed.script_bytes(model.eval(), cfg.data.image_size))
    try:
        yield
    finally:
        for f, original in zip(files, originals):
            f.write_bytes(original)


def test_an_export_that_does_not_reproduce_its_trial_is_refused(searched, tmp_path):
    cfg, _ = searched
    out = tmp_path / "best"
    export_best(cfg, out=out, register=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def swap_two_classes(weights, head):  # the file no longer is the student that was scored
        for key in (f"{head}.weight", f"{head}.bias"):
            weights[key][[0, 1]] = weights[key][[1, 0]]

    with _tampered_best_checkpoint(cfg, swap_two_classes):
        with pytest.raises(KdsearchError, match=r"the exported student scores val_macro_f1=.* but its trial reported "
                                                r".*; export refused"):
            export_best(cfg, out=out, register=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_the_trial_s_format_is_exported_whatever_student_precision_says_at_export(searched, tmp_path):
    """The search's trials shipped fp32 files and were scored on them: exporting with student.precision fp16 set
    afterwards exports the trial's fp32 file (its model card says fp32), not a file no trial scored."""
    cfg, _ = searched
    fp16 = cfg.model_copy(update={"student": cfg.student.model_copy(update={"precision": "fp16"})})
    export_best(fp16, out=tmp_path / "best", register=False)
    card = json.loads((tmp_path / "best" / "model_card.json").read_text())
    assert card["precision"] == card["shipped"]["format"] == "fp32"
    assert card["metrics"]["val_macro_f1"] == card["metrics"]["trial_val_macro_f1"]


def test_an_export_killed_outright_leaves_the_previous_one_and_the_next_export_clears_its_temp(searched, tmp_path):
    """A real SIGKILL mid-export (files written, loading them back), in a process of its own: no cleanup
    code runs, so its temp folder stays; the previous export is untouched, and the next export removes the temp."""
    import signal

    import yaml

    cfg, _ = searched
    out = tmp_path / "best"
    export_best(cfg, out=out, register=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    script = (
        "import os, signal, sys, yaml, torch\n"
        "from pathlib import Path\n"
        "from kdsearch.config import Config\n"
        "from kdsearch.deploy.export import export_best\n"
        f"cfg = Config.model_validate(yaml.safe_load(open(r'{tmp_path / 'cfg.yaml'}')))\n"
        "torch.jit.load = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"export_best(cfg, out=Path(r'{out}'), register=False)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".best.")]
    assert len(left) == 1 and (left[0] / "student.pt").is_file()  # the killed writer's half-written folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    export_best(cfg, out=out, register=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "cfg.yaml"]  # no temp folder left behind


def test_existing_search_is_not_overwritten(searched):
    cfg, _ = searched
    with pytest.raises(KdsearchError, match="already exists .*--resume"):
        run_search(cfg, device="cpu")


def test_export_without_a_search_exits_2(tmp_path, run_cli):
    from conftest import write_config

    path = write_config(tmp_path, tiny_config(tmp_path, name="never-run"))
    code, _, err = run_cli("export-best", path)
    assert code == 2 and "no search found" in err and "Traceback" not in err


def test_live_teacher_does_n_passes_per_trial_epoch(ray_cluster, tmp_path):
    """teacher.cache: false is the teacher-in-the-loop baseline: N forward passes per trial-epoch, and up front
    only the val split once (the teacher's own score)."""
    cfg = Config.model_validate(tiny_config(
        tmp_path, name="live", teacher={"source": "train", "arch": "resnet8", "epochs": 1, "cache": False},
        search={"num_samples": 2, "max_concurrent": 2, "max_epochs": 2, "grace_period": 2,
                "space": {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": 64, "weight_decay": 1e-4,
                          "class_weight_power": 0.0}}))
    result = run_search(cfg, device="cpu")
    assert result.trial_epochs == 4
    assert result.teacher_forward_passes == 4 * 1437 + 360  # digits train split per trial-epoch + val once

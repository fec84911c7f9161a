"""`kdsearch train`, `train-teacher` and `inspect-data` end to end: exact files written, a real MLflow sqlite store."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_config, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real `kdsearch train` run on digits, through the installed console script, shared by the checks below."""
    import subprocess

    from conftest import KDSEARCH

    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_config(tmp, search={"max_epochs": 2})
    path = write_config(tmp, cfg)
    run = subprocess.run([KDSEARCH, "train", str(path), "--set", "search.space.alpha=0.8", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, cwd=tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp, cfg, run.returncode


def test_train_exits_0_and_writes_exactly_the_outputs(trained):
    tmp, cfg, code = trained
    assert code == 0
    out = tmp / "out" / "train"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "student.pt",
                                                     "student.torchscript.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hparams"]["alpha"] == 0.8  # --set reached the run
    assert metrics["hparams"]["student"] == "shufflenet_v2_x0_5"
    assert len(metrics["history"]) == 2
    assert metrics["final"]["val_macro_f1"] > 0.2  # twice chance (0.1) after two epochs at 8 px
    # the size reported is the shipped TorchScript file's, the weights file holds the same tensors without the code
    assert (out / "student.torchscript.pt").stat().st_size == metrics["student"]["size_bytes"]
    assert (out / "student.pt").stat().st_size < metrics["student"]["size_bytes"]
    assert metrics["final"]["scored"] == "fp32 file" and metrics["final"]["val_full"]
    state = torch.load(out / "student.pt", weights_only=True)
    from kdsearch.models.students import create_student
    create_student("shufflenet_v2_x0_5", 10, 8).load_state_dict(state)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["search"]["space"]["alpha"] == 0.8


def test_train_logs_params_and_per_epoch_metrics_to_mlflow(trained):
    tmp, cfg, _ = trained
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg["tracking"]["uri"])
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["alpha"] == "0.8" and run.data.params["student"] == "shufflenet_v2_x0_5"
    assert run.data.tags["kdsearch.kind"] == "train"
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert sorted(m.step for m in history) == [1, 2]
    assert "teacher_val_accuracy" in run.data.metrics and "val_f1.3" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"student.pt", "metrics.json", "config.yaml"} <= artifacts


def test_teacher_and_data_caches_are_reused(trained, run_cli):
    tmp, cfg, _ = trained
    code, out, err = run_cli("train-teacher", write_config(tmp, cfg, "again.yaml"), "--device", "cpu")
    assert code == 0, err
    assert "; 0 forward passes (0.0 s) this run" in out  # logits came from the cache the train run wrote


def test_inspect_data(tmp_path, run_cli):
    root = tmp_path / "skin"
    for cls, n in {"melanoma": 3, "nevus": 12}.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (30 + i, 20), (i * 10, 50, 90)).save(root / cls / f"{i}.jpg")
    (root / "nevus" / "corrupt.jpg").write_bytes(b"garbage")
    path = write_config(tmp_path, tiny_config(tmp_path, data={"source": "image_folder", "root": str(root)}))
    code, out, err = run_cli("inspect-data", path)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "inspect" / "data.json").read_text())
    assert summary["classes"] == ["melanoma", "nevus"]
    assert sum(summary["train_counts"].values()) + sum(summary["val_counts"].values()) == 15
    counts = summary["train_counts"]
    assert summary["imbalance_ratio"] == pytest.approx(counts["nevus"] / counts["melanoma"])
    assert summary["original_sizes"]["width"] == {"min": 30, "median": 34, "max": 41}  # 30-32 and 30-41
    w = summary["suggested_class_weights"]["power_1.0"]
    assert w["melanoma"] > w["nevus"]
    assert any("corrupt.jpg" in u for u in summary["unreadable"]) and "corrupt.jpg" in out
    with Image.open(tmp_path / "out" / "inspect" / "samples.png") as grid:
        assert grid.size[1] > grid.size[0] / 8  # two rows of up to 8 samples


def test_train_with_no_fitting_student_writes_nothing(tmp_path, run_cli):
    path = write_config(tmp_path, tiny_config(tmp_path, student={"max_size_mb": 0.5}))
    code, _, err = run_cli("train", path)
    assert code == 2 and "student.max_size_mb" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "train").exists()


SECRETS = {"HF_TOKEN": "hf_sentinel_1a2b", "AWS_SECRET_ACCESS_KEY": "aws_sentinel_3c4d",
           "OPENAI_API_KEY": "key_sentinel_5e6f", "DB_PASSWORD": "pw_sentinel_7a8b",
           "MY_SECRET": "secret_sentinel_9c0d"}


def test_secret_environment_never_reaches_the_store_outputs_or_logs(tmp_path, run_cli, monkeypatch):
    """Variables whose names hold TOKEN, KEY, SECRET or PASSWORD: set sentinels, run `kdsearch train`,
    then grep every byte kdsearch wrote (MLflow store and artifacts, output.dir) and printed. (Searches:
    test_hf_teachers.py greps a whole Ray search for HF_TOKEN the same way.)"""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns: under tmp_path too
    cfg = tiny_config(tmp_path, search={"max_epochs": 1})
    code, out, err = run_cli("train", write_config(tmp_path, cfg), "--device", "cpu")
    assert code == 0, err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"mlflow.db", "metrics.json", "config.yaml"} <= names
    assert any("mlruns" in p.parts for p in written)  # the run's artifacts were searched too
    for value in SECRETS.values():
        assert value not in out + err
        assert [p for p in written if value.encode() in p.read_bytes()] == []

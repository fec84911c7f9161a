"""The teacher's once-per-search work on a Ray worker (teacher.resources), and teacher.dtype.

CPU-only here: the task asks for {gpu: 0, cpu: 1}, the same code path a GPU node runs with {gpu: 1}."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest
import torch

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.distill.distiller import prepare
from kdsearch.teachers.worker import on_worker, worker_resources

from conftest import KDSEARCH, resnet8_teacher, tiny_config, write_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier


def checkpoint_config(tmp_path, out: str, **teacher) -> dict:
    return tiny_config(tmp_path / out, data={"augment": "standard"},
                       teacher=resnet8_teacher(tmp_path, cache_views=2, **teacher))



def test_teacher_outputs_come_from_a_ray_task_and_match_the_drivers(ray_cluster, tmp_path, caplog):
    remote = Config.model_validate(checkpoint_config(tmp_path, "remote", resources={"gpu": 0, "cpu": 1}))
    local = Config.model_validate(checkpoint_config(tmp_path, "local"))
    assert worker_resources(local) is None  # no GPU anywhere: the default is this process
    with caplog.at_level(logging.INFO, logger="kdsearch"):
        far = prepare(remote, "cpu", teach_fn=on_worker(worker_resources(remote)))
    line = next(r.getMessage() for r in caplog.records if "Ray task" in r.getMessage())
    pid = int(line.split("pid ")[1].split(",")[0])
    assert pid != os.getpid()
    near = prepare(local, "cpu")
    n = len(near.data.pool_labels())
    assert far.targets.forward_passes == near.targets.forward_passes == 2 * n + len(near.data.val.y)
    assert far.teacher.forward_passes == far.targets.forward_passes  # the counts survive the models
    assert torch.allclose(far.targets.logits, near.targets.logits, atol=1e-5)
    assert torch.equal(far.targets.views.params, near.targets.views.params)  # views remade here from their seed
    assert far.teacher_metrics == pytest.approx(near.teacher_metrics)
    # the task wrote the cache: this process finds it and does no teacher work
    again = prepare(remote, "cpu")
    assert again.targets.forward_passes == 0 and torch.equal(again.targets.logits, far.targets.logits)


def test_a_teacher_refused_on_the_worker_exits_cleanly_and_caches_nothing(ray_cluster, tmp_path):
    cfg = Config.model_validate(checkpoint_config(tmp_path, "refused", resources={"gpu": 0, "cpu": 1},
                                                  min_val_macro_f1=0.99))  # a random-weight teacher
    with pytest.raises(KdsearchError, match=r"^teacher.min_val_macro_f1 0.99: .*scores val macro-F1"):
        prepare(cfg, "cpu", teach_fn=on_worker(worker_resources(cfg)))
    assert not list((tmp_path / "refused" / "out" / "teacher").glob("logits-*.pt"))


def test_asking_for_a_gpu_the_cluster_lacks_exits_2(ray_cluster, tmp_path):
    cfg = Config.model_validate(checkpoint_config(tmp_path, "nogpu", resources={"gpu": 1}))
    with pytest.raises(KdsearchError, match=r"teacher.resources.gpu 1: the Ray cluster has 0 GPUs"):
        worker_resources(cfg)


def test_train_teacher_on_a_worker_from_the_command_line(tmp_path):
    raw = tiny_config(tmp_path, teacher={"source": "train", "arch": "resnet8", "epochs": 1, "patience": 1,
                                         "resources": {"gpu": 0, "cpu": 1}})
    path = write_config(tmp_path, raw)
    proc = subprocess.run([KDSEARCH, "train-teacher", str(path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Ray task" in proc.stdout + proc.stderr and "val accuracy" in proc.stdout
    assert len(list((tmp_path / "out" / "teacher").glob("trained-resnet8-*.pt"))) == 1
    assert len(list((tmp_path / "out" / "teacher").glob("logits-*.pt"))) == 1
    raw["teacher"]["resources"] = {"gpu": 2}
    bad = subprocess.run([KDSEARCH, "train-teacher", str(write_config(tmp_path, raw, "bad.yaml"))], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "teacher.resources.gpu 2: the Ray cluster has 0 GPUs" in bad.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_teacher_dtype_runs_under_autocast_and_caches_apart(tmp_path, dtype):
    full = prepare(Config.model_validate(checkpoint_config(tmp_path, "same")), "cpu")
    half = prepare(Config.model_validate(checkpoint_config(tmp_path, "same", dtype=dtype)), "cpu")
    assert half.targets.forward_passes > 0  # not float32's cached outputs
    assert not torch.equal(half.targets.logits, full.targets.logits)
    agree = (half.targets.logits.argmax(-1) == full.targets.logits.argmax(-1)).float().mean()
    assert agree > 0.95 and torch.allclose(half.targets.logits, full.targets.logits, atol=0.1, rtol=0.05)

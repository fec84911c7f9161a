"""The GPU path, for real: skipped where torch sees no CUDA device. Run alone with `pytest -m gpu`.

A trial on CUDA, two fractional trials sharing one GPU and the export of a GPU trial, a half-precision
teacher, and the device-memory preflight. On the CPU-only CI machine the tier skips; the CPU suite covers the
same code on the CPU."""

from __future__ import annotations

import json

import pytest
import ray
import torch

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.deploy.export import export_best
from kdsearch.distill.distiller import Distiller, Hparams, prepare
from kdsearch.search.gpu_memory import check_fit
from kdsearch.search.tuner import run_search

from conftest import own_ray, resnet8_teacher, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.gpu

HP = Hparams(student="resnet8", temperature=4.0, alpha=0.9, lr=3e-3, weight_decay=1e-4, batch_size=64,
             class_weight_power=0.0)


def test_preflight_names_the_keys_to_change():  # runs everywhere: the rule itself
    check_fit(per_trial=2 * 2**30, trials=4, free=9 * 2**30)
    with pytest.raises(KdsearchError, match=r"resources_per_trial.gpu: 4 trials per GPU need about 2.0 GB each "
                                            r"\(8.0 GB\) but the GPU has 7.0 GB free; .*batch_size.*cache_views"):
        check_fit(per_trial=2 * 2**30, trials=4, free=7 * 2**30)


@cuda
def test_a_trial_on_cuda_trains_on_the_views_the_teacher_saw(tmp_path):
    cfg = Config.model_validate(tiny_config(tmp_path, data={"augment": "strong"},
                                            teacher=resnet8_teacher(tmp_path, cache_views=4), search={"max_epochs": 2}))
    prepared = prepare(cfg, "cuda")
    d = Distiller(cfg, HP, prepared, "cuda")
    assert d.views.x.is_cuda and d.logits.is_cuda
    idx = torch.arange(0, 64, device="cuda")
    on_gpu = d.views.pixels(torch.full_like(idx, 2), idx).cpu()
    on_cpu = prepared.targets.views.pixels(2, idx.cpu())
    assert (on_gpu.int() - on_cpu.int()).abs().max() <= 1  # float rounding across devices, nothing more
    history = [d.run_epoch(), d.run_epoch()]
    assert history[-1]["val_full"] and history[-1]["val_macro_f1"] > 0.3
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_teacher_on_cuda_agrees_with_float32(tmp_path, dtype):
    def prepared(**teacher):
        cfg = Config.model_validate(tiny_config(tmp_path, teacher=resnet8_teacher(tmp_path, **teacher)))
        return prepare(cfg, "cuda")

    full, half = prepared(cache_views=4), prepared(cache_views=4, dtype=dtype)
    assert half.targets.forward_passes > 0
    agree = (half.targets.logits.argmax(-1) == full.targets.logits.argmax(-1)).float().mean()
    assert agree > 0.95 and torch.allclose(half.targets.logits, full.targets.logits, atol=0.1, rtol=0.05)


@cuda
def test_two_fractional_trials_share_one_gpu_and_the_best_exports(tmp_path):
    raw = tiny_config(tmp_path, name="gpu", teacher=resnet8_teacher(tmp_path, cache_views=4),
                      student={"candidates": ["resnet8"]},
                      search={"num_samples": 2, "max_concurrent": 2, "max_epochs": 2, "grace_period": 2,
                              "resources_per_trial": {"cpu": 1, "gpu": 0.5},
                              "space": {"lr": {"loguniform": [1e-3, 1e-2]}, "alpha": 0.9, "temperature": 4.0,
                                        "batch_size": 64, "weight_decay": 1e-4, "class_weight_power": 0.0}})
    cfg = Config.model_validate(raw)
    own_ray()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        result = run_search(cfg, device="cuda")
    finally:
        ray.shutdown()
    assert result.trials == {"completed": 2, "stopped_early": 0, "budget_cut": 0, "diverged": 0, "errored": 0}
    epochs = [json.loads(line) for p in (tmp_path / "out" / "ray" / "gpu").glob("*/result.json")
              for line in p.read_text().splitlines()]
    assert {e["device"] for e in epochs} == {"cuda"} and len(epochs) == 4
    exported = export_best(cfg, out=tmp_path / "best")  # re-checked on the GPU it trained on
    card = json.loads((tmp_path / "best" / "model_card.json").read_text())
    assert abs(card["metrics"]["val_macro_f1"] - result.best["metrics"]["val_macro_f1"]) <= 0.01
    assert exported.registered.startswith("gpu-student/")


@cuda
def test_trials_that_cannot_fit_on_the_gpu_exit_2_before_any_starts(tmp_path):
    raw = tiny_config(tmp_path, name="crowded", teacher=resnet8_teacher(tmp_path, cache_views=4),
                      search={"num_samples": 2, "max_concurrent": 100_000,
                              "resources_per_trial": {"cpu": 1, "gpu": 0.00001}})
    with pytest.raises(KdsearchError, match=r"resources_per_trial.gpu: 100000 trials per GPU"):
        run_search(Config.model_validate(raw), device="cuda")
    assert not (tmp_path / "out" / "ray" / "crowded" / "kdsearch.json").exists()  # no search was started


def test_a_live_teachers_trial_holds_the_pool_and_the_teacher(tmp_path):  # runs everywhere: the estimate's parts
    from kdsearch.search.gpu_memory import resident_bytes

    cfg = Config.model_validate(tiny_config(tmp_path, teacher=resnet8_teacher(tmp_path, cache=False),
                                            data={"label_budget": 5}))
    prepared = prepare(cfg, "cpu")
    params = sum(p.numel() * 4 for p in prepared.teacher.members[0].model.parameters())
    assert resident_bytes(prepared) == prepared.data.pool().x.nbytes + params

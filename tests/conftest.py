"""Shared fixtures: tiny real configs on scikit-learn's digits, and an in-process CLI runner."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# Tests never reach the Hugging Face hub: models are built and saved locally (tests/hf_models.py), and a hub
# id fails fast instead of waiting on the network. Set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# kdsearch's user cache (student sizes, crash logs) is the tests' own, never the developer's ~/.cache/kdsearch.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="kdsearch-tests-cache-")

REPO = Path(__file__).resolve().parents[1]
KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))  # the installed entry point, as users run it
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A digits config small enough for seconds on a CPU: 8x8 images, one-epoch teacher and student."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "digits", "image_size": 8, "augment": "none"},
        "teacher": {"source": "train", "arch": "resnet8", "epochs": 1, "patience": 1},
        "student": {"candidates": ["shufflenet_v2_x0_5"]},
        "search": {"max_epochs": 1, "grace_period": 1,
                   "space": {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": 64,
                             "weight_decay": 1.0e-4, "class_weight_power": 0.0}},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "output": {"dir": str(tmp_path / "out")},
    }
    for key, value in sections.items():  # sections merge into the defaults; a teacher replaces the default one
        merge = isinstance(value, dict) and key != "teacher"
        cfg[key] = {**cfg.get(key, {}), **value} if merge else value
    return cfg


def resnet8_teacher(tmp_path: Path, **teacher) -> dict:
    """A `checkpoint` teacher section: a seeded, untrained ResNet-8 for digits at 8 px, saved once under tmp_path."""
    import torch

    from kdsearch.models.students import create_student

    weights = tmp_path / "r8.pt"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(create_student("resnet8", 10, 8).state_dict(), weights)
    return {"source": "checkpoint", "arch": "resnet8", "weights": str(weights), **teacher}


def write_config(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray runtime with 2 CPUs, shared by every module that asks for it: started on first use, left
    running for the next module, shut down at the end of the session. A module that needs a Ray of its own (two
    nodes, user code on PYTHONPATH, a GPU) calls `own_ray()` first."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    yield


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown_at_exit():
    yield
    import ray

    ray.shutdown()


def own_ray() -> None:
    """Shut down the shared Ray runtime, if one is running, before starting a differently shaped one."""
    import ray

    ray.shutdown()


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `kdsearch ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from kdsearch.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["kdsearch", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run

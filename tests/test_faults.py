"""Faults inside a real search: a trial that raises, a trial whose worker is SIGKILLed. Each is restarted from
its last checkpoint (FailureConfig(max_failures=2)); the search finishes; MLflow has each epoch once.

The fault is injected the way it happens in the wild: by user code running inside the trial (a live teacher
from a user module), not by a test hook in kdsearch."""

from __future__ import annotations

import math
import os
import textwrap

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from kdsearch.config import Config
from kdsearch.data.dataset import load_dataset
from kdsearch.runtime.experiment import experiment_dir
from kdsearch.search.tuner import run_search
from kdsearch.tracking import TRIAL_TAG

from conftest import own_ray, tiny_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier

FLAKY = textwrap.dedent('''
    import os, signal
    from torch import nn

    class FlakyNet(nn.Module):
        """A teacher that fails once, at its `fail_at`-th forward pass in a process, while `marker` exists."""

        def __init__(self, marker, fail_at, kind, classes=10):
            super().__init__()
            self.marker, self.fail_at, self.kind, self.calls = marker, fail_at, kind, 0
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
            self.head = nn.Linear(16, classes)

        def forward(self, x):
            self.calls += 1
            if self.kind == "batch32" and len(x) == 32:  # every trial that picked batch_size 32, every time
                raise RuntimeError("injected fault (batch of 32)")
            if self.calls == self.fail_at:
                try:
                    os.remove(self.marker)  # whoever removes it fails; the fault happens once per search
                except FileNotFoundError:
                    pass
                else:
                    if self.kind == "sigkill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError("injected fault")
            return self.head(self.body(x))

        def __setstate__(self, state):  # a trial's copy (through Ray's object store) counts its own passes
            super().__setstate__(state)
            self.calls = 0
''')


@pytest.fixture(scope="module")
def user_code(tmp_path_factory):
    """A user module on PYTHONPATH before Ray starts, so trial workers import it too."""
    folder = tmp_path_factory.mktemp("usercode")
    (folder / "flaky.py").write_text(FLAKY)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), old]))
    import sys
    sys.path.insert(0, str(folder))
    own_ray()  # trial workers must start after PYTHONPATH has the user module
    ray.init(num_cpus=2, include_dashboard=False)
    yield folder
    ray.shutdown()
    sys.path.remove(str(folder))
    os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)


@pytest.mark.parametrize("kind", ["raise", "sigkill"])
def test_a_failed_trial_resumes_from_its_checkpoint(user_code, tmp_path, kind):
    import flaky

    marker = tmp_path / "fail-once"
    marker.touch()
    # A live teacher does one pass per training batch; failing halfway through a trial's epoch 2 means the trial
    # has a checkpoint (epoch 1) to resume from, whatever the data's size.
    per_epoch = math.ceil(len(load_dataset(Config.model_validate(tiny_config(tmp_path))).train.y) / 64)
    kwargs = {"marker": str(marker), "fail_at": per_epoch + per_epoch // 2, "kind": kind}
    torch.save(flaky.FlakyNet(**kwargs).state_dict(), tmp_path / "w.pt")
    cfg = Config.model_validate(tiny_config(
        tmp_path, name=f"fault-{kind}",
        teacher={"source": "checkpoint", "arch": "flaky:FlakyNet", "weights": str(tmp_path / "w.pt"),
                 "arch_kwargs": kwargs, "cache": False},  # live: the teacher runs inside the trials
        search={"num_samples": 2, "max_concurrent": 2, "max_epochs": 2, "grace_period": 2,
                "space": {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": 64, "weight_decay": 1e-4,
                          "class_weight_power": 0.0}}))
    result = run_search(cfg, device="cpu")
    assert not marker.exists()  # the fault did happen
    assert result.trials == {"completed": 2, "stopped_early": 0, "budget_cut": 0, "diverged": 0, "errored": 0}
    analysis = tune.ExperimentAnalysis(str(experiment_dir(cfg)))
    assert sorted(t.num_failures for t in analysis.trials) == [0, 1]
    for trial_id, df in analysis.trial_dataframes.items():
        # resumed, not restarted: the distiller's own epoch counter continues from the checkpoint
        assert list(df["epoch"]) == list(df["training_iteration"]) == [1, 2], trial_id
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.name)
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(children) == 2
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_macro_f1")] == [1, 2]
        assert r.data.tags["kdsearch.ended"] == "completed"


def test_a_trial_that_keeps_failing_is_marked_errored_and_the_search_goes_on(user_code, tmp_path):
    import flaky

    kwargs = {"marker": str(tmp_path / "unused"), "fail_at": 0, "kind": "batch32"}
    torch.save(flaky.FlakyNet(**kwargs).state_dict(), tmp_path / "w.pt")
    cfg = Config.model_validate(tiny_config(
        tmp_path, name="fault-errored",
        teacher={"source": "checkpoint", "arch": "flaky:FlakyNet", "weights": str(tmp_path / "w.pt"),
                 "arch_kwargs": kwargs, "cache": False},
        search={"num_samples": 4, "max_concurrent": 2, "max_epochs": 1, "grace_period": 1,
                "space": {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": {"choice": [64, 32]},
                          "weight_decay": 1e-4, "class_weight_power": 0.0}}))
    result = run_search(cfg, device="cpu")
    analysis = tune.ExperimentAnalysis(str(experiment_dir(cfg)))
    failing = {t.trial_id for t in analysis.trials if t.config["batch_size"] == 32}
    assert failing and len(failing) < 4, "the seeded search must pick both batch sizes"
    assert {t.trial_id for t in analysis.trials if t.status == "ERROR"} == failing
    assert all(t.num_failures == 3 for t in analysis.trials if t.trial_id in failing)  # 1 + max_failures=2 retries
    assert result.trials["errored"] == len(failing) and result.trials["completed"] == 4 - len(failing)
    assert result.best is not None and result.best["config"]["batch_size"] == 64
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.name)
    ended = {r.data.tags[TRIAL_TAG]: (r.data.tags["kdsearch.ended"], r.info.status)
             for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id}
    assert ended == {t.trial_id: ("errored", "FAILED") if t.trial_id in failing else ("completed", "FINISHED")
                     for t in analysis.trials}  # the UI shows an errored trial's run as failed

"""A student whose loss turns NaN or infinite (sgd at lr 100): it stops at that epoch, says so, is never the best
trial, and every JSON file kdsearch writes stays valid JSON."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from kdsearch.config import Config
from kdsearch.search.tuner import run_search

from conftest import tiny_config, write_config


@pytest.mark.e2e  # a whole `kdsearch train` run
def test_train_that_diverges_says_so_and_writes_strict_json(tmp_path, run_cli):
    path = write_config(tmp_path, tiny_config(tmp_path, search={"max_epochs": 3, "space": {
        "optimizer": "sgd", "lr": 100.0, "alpha": 0.5, "temperature": 4.0, "batch_size": 64, "weight_decay": 0.0,
        "class_weight_power": 0.0}}))
    code, _, err = run_cli("train", path, "--device", "cpu")
    assert code == 0, err
    text = (tmp_path / "out" / "train" / "metrics.json").read_text()

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")
    metrics = json.loads(text, parse_constant=reject)  # NaN / Infinity are not JSON
    epoch = metrics["diverged_at_epoch"]
    assert epoch is not None and len(metrics["history"]) == epoch  # stopped at that epoch
    assert metrics["history"][-1]["diverged"] is True and metrics["final"]["train_loss"] is None
    assert f"the student diverged at epoch {epoch}" in err


@pytest.mark.e2e
def test_a_diverging_trial_stops_is_marked_and_never_best(ray_cluster, tmp_path):
    cfg = Config.model_validate(tiny_config(tmp_path, name="diverge", search={
        "num_samples": 2, "max_concurrent": 2, "max_epochs": 3, "grace_period": 3, "start_points": False,
        "space": {"optimizer": "sgd", "lr": {"choice": [0.05, 100.0]}, "alpha": 0.5, "temperature": 4.0,
                  "batch_size": 64, "weight_decay": 0.0, "class_weight_power": 0.0}}))
    result = run_search(cfg, device="cpu")
    assert result.trials == {"completed": 1, "stopped_early": 0, "budget_cut": 0, "diverged": 1, "errored": 0}
    assert result.best["config"]["lr"] == 0.05
    client = MlflowClient(cfg.tracking.uri)
    children = {r.data.params["lr"]: r for r in client.search_runs(
        [client.get_experiment_by_name("diverge").experiment_id], "tags.`kdsearch.kind` = 'trial'")}
    bad = children["100.0"]
    assert bad.data.tags["kdsearch.ended"] == "diverged"
    assert len(client.get_metric_history(bad.info.run_id, "train_loss")) < 3  # stopped at the epoch it diverged

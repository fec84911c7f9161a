"""A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and a worker raylet, separate
processes and object stores): `run_search --address` spreads trials over both, and every result reaches MLflow."""

from __future__ import annotations

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from kdsearch.config import Config
from kdsearch.deploy.report import search_trials
from kdsearch.search.tuner import run_search

from conftest import own_ray, tiny_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier


@pytest.fixture
def two_nodes():
    own_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_search_runs_trials_on_both_nodes(two_nodes, tmp_path):
    cfg = Config.model_validate(tiny_config(
        tmp_path, name="two-nodes",
        search={"num_samples": 4, "max_concurrent": 2, "max_epochs": 2, "grace_period": 2,
                "resources_per_trial": {"cpu": 1},  # one trial fills a node: two at once must use both
                "space": {"lr": 3.0e-3, "alpha": {"uniform": [0.0, 1.0]}, "temperature": 4.0, "batch_size": 64,
                          "weight_decay": 1e-4, "class_weight_power": 0.0}}))
    result = run_search(cfg, address=two_nodes.address, device="cpu")
    assert len(ray.nodes()) == 2
    assert result.trials == {"completed": 4, "stopped_early": 0, "budget_cut": 0, "diverged": 0, "errored": 0}
    trials = search_trials(cfg)
    nodes = {t["last"]["node_id"] for t in trials}
    assert nodes == {n["NodeID"] for n in ray.nodes()}  # both nodes ran trials
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name("two-nodes")
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(children) == 4
    assert {r.data.tags["kdsearch.node_id"] for r in children} == nodes
    for r in children:  # every epoch of every trial reached the driver's store
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_macro_f1")] == [1, 2]

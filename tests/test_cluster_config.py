"""ray_cluster.yaml passes Ray's own cluster-config validation and carries no credentials."""

from __future__ import annotations

import re

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO


def _load() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_ray_cluster_yaml_validates():
    config = prepare_config(_load())  # what `ray up` does first: fill the provider's defaults (offline)
    validate_config(config)  # Ray's schema check; raises on any error
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("kdsearch" in c for c in config["setup_commands"])


def test_validation_catches_a_typo():
    config = _load()
    config["available_node_types"]["gpu_worker"]["min_workrs"] = 0
    with pytest.raises(Exception, match="min_workrs"):
        validate_config(prepare_config(config))


def test_ray_cluster_yaml_holds_no_credentials():
    text = (REPO / "ray_cluster.yaml").read_text()
    config = yaml.safe_load(text)
    keys = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                keys.add(str(k).lower())
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    assert not {k for k in keys if re.search(r"secret|password|token|access_key|ssh_private_key", k)}
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # no AWS access key id anywhere

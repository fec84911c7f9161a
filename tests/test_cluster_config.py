"""ray_cluster.yaml passes the cluster-config schema Ray ships (the one `ray up` checks) and carries no
credentials."""

from __future__ import annotations

import importlib.resources
import json
import re

import jsonschema
import pytest
import yaml

from conftest import REPO


def _load() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def _validate(config: dict) -> None:
    """Ray's published JSON schema for cluster configs (ray/autoscaler/ray-schema.json), through jsonschema."""
    schema = json.loads((importlib.resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_ray_cluster_yaml_validates():
    config = _load()
    _validate(config)
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("kdsearch" in c for c in config["setup_commands"])


def test_validation_catches_a_typo():
    config = _load()
    config["available_node_types"]["gpu_worker"]["min_workrs"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_workrs"):
        _validate(config)


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

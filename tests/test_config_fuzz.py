"""The config loader and --set under random input (hypothesis): every input gives a Config or a one-line
KdsearchError (exit 2), never another exception (exit 1), and each within seconds (hypothesis's deadline: 10 s, for
loaded CI machines; an input takes milliseconds)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdsearch.config import Config, load_config
from kdsearch.core.errors import KdsearchError

KEYS = ["name", "seed", "data", "source", "image_size", "root", "manifest", "class_names", "label_budget", "teacher",
        "arch", "epochs", "weights", "members", "student", "candidates", "max_size_mb", "precision", "search",
        "space", "lr", "alpha", "temperature", "num_samples", "max_epochs", "metric", "mode", "tracking", "uri",
        "output", "dir", "submit", "url", "uniform", "loguniform", "choice", "unlabeled", "augment"]
SOURCES = ["digits", "image_folder", "csv", "npz", "idx", "cifar10", "train", "checkpoint", "huggingface", "ensemble"]

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_subnormal=False)
           | st.sampled_from(SOURCES) | st.text(max_size=20))
keys = st.sampled_from(KEYS) | st.text(min_size=1, max_size=10)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                         max_leaves=25)
dotted = st.lists(st.sampled_from(KEYS) | st.text(max_size=6), min_size=1, max_size=4).map(".".join)
overrides = st.lists(st.tuples(dotted, st.text(max_size=15)).map(lambda kv: f"{kv[0]}={kv[1]}")
                     | st.text(max_size=20), max_size=3)

FUZZ = settings(max_examples=500, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load(path, sets) -> None:
    try:
        cfg = load_config(path, sets)
    except KdsearchError as e:
        assert "\n" not in str(e).strip() or str(e).count("\n") < 3, str(e)  # a line, not a traceback
        return
    assert isinstance(cfg, Config)
    assert math.isfinite(cfg.student.max_size_mb) and cfg.search.num_samples >= 1


@FUZZ
@given(doc=documents, sets=overrides)
def test_random_yaml_documents_and_overrides(tmp_path_factory, doc, sets):
    path = tmp_path_factory.mktemp("fuzz") / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _load(path, sets)


@FUZZ
@given(text=st.text(max_size=300), sets=overrides)
@example(text="name: 2001-13-45", sets=[])  # YAML parses a timestamp, then cannot build a 13th month
@example(text="name: x", sets=["seed=2001-13-45"])
@example(text="[" * 2000, sets=[])  # nesting deeper than the parser's recursion
def test_random_text(tmp_path_factory, text, sets):
    path = tmp_path_factory.mktemp("fuzz") / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    _load(path, sets)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "cfg.yaml"
    path.write_bytes(data)
    _load(path, [])


def test_not_utf8_and_empty_configs_name_the_problem(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"\xffname: x\n")
    with pytest.raises(KdsearchError) as e:
        load_config(bad)
    assert str(e.value) == f"{bad}: not UTF-8 text (byte 0xff at 0); save the config as UTF-8"
    empty = tmp_path / "empty.yaml"
    empty.write_text("  \n")
    with pytest.raises(KdsearchError) as e:
        load_config(empty)
    assert "empty config" in str(e.value) and "search_spaces/" in str(e.value)

"""Config loading: every shipped YAML validates; each class of bad config exits 2 naming the key."""

from __future__ import annotations

import json

import pytest
import yaml

from kdsearch.config import Config, Dist, load_config
from kdsearch.core.errors import KdsearchError

from conftest import REPO, SHIPPED, tiny_config, write_config


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name and cfg.student.candidates
    # every top-level section of the contract is spelled out in the shipped file
    assert set(yaml.safe_load(path.read_text())) == {"name", "seed", "data", "teacher", "student", "search",
                                                      "tracking", "output"}


def test_shipped_configs_cover_the_contract_set():
    assert {p.name for p in SHIPPED} >= {"digits.yaml", "skin.yaml", "cifar10_resnet.yaml", "cifar10_vit.yaml",
                                         "fashion_mnist.yaml", "dermamnist.yaml"}


def test_skin_config_is_the_medsiglip_headline():
    cfg = load_config(REPO / "search_spaces" / "skin.yaml")
    assert cfg.teacher.source == "huggingface" and cfg.teacher.model == "google/medsiglip-448"
    assert cfg.teacher.mode == "linear_probe" and cfg.search.metric == "val_macro_f1"
    assert cfg.data.source == "image_folder" and str(cfg.data.root) == "data/skin"
    derma = load_config(REPO / "search_spaces" / "dermamnist.yaml")
    assert len(derma.data.class_names) == 7 and derma.teacher == cfg.teacher


def test_digits_validate_command_passes(run_cli):
    code, out, err = run_cli("validate", "search_spaces/digits.yaml")
    assert code == 0, err
    assert "efficientnet_b1" in out  # named as over the limit


def test_set_and_environment_precedence(tmp_path, monkeypatch):
    path = write_config(tmp_path, tiny_config(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    monkeypatch.setenv("KDSEARCH_OUTPUT_DIR", str(tmp_path / "env-out"))
    cfg = load_config(path, ["search.num_samples=4", "data.augment=strong", "output.dir=/tmp/from-set"])
    assert cfg.search.num_samples == 4 and cfg.data.augment == "strong"
    assert cfg.tracking.uri == "sqlite:///from-env.db"  # env beats YAML
    assert str(cfg.output_dir) == "/tmp/from-set"  # --set beats env


def test_space_distributions_and_fixed_point(tmp_path):
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, search={"space": {
        "lr": {"loguniform": [1e-4, 1e-2]}, "alpha": {"uniform": [0.2, 0.6]}, "batch_size": {"choice": [32, 64]},
        "temperature": {"int": [2, 6]}}})))
    space = cfg.search.space
    assert isinstance(space.lr, Dist) and space.lr.kind == "loguniform"
    fixed = space.fixed()
    assert fixed["lr"] == pytest.approx(1e-3)  # geometric midpoint
    assert fixed["alpha"] == pytest.approx(0.4)
    assert fixed["batch_size"] == 32
    assert fixed["temperature"] == 4


def test_json_schema_has_every_section(run_cli):
    code, out, _ = run_cli("validate", "--schema")
    assert code == 0
    schema = json.loads(out)
    assert set(schema["properties"]) == set(Config.model_fields)
    assert "description" in schema["$defs"]["DataConfig"]["properties"]["image_size"]


BAD = [
    # (id, change to the tiny config or raw YAML text, words the one-line message must contain)
    ("yaml-syntax", "name: [unclosed\n", ["YAML syntax error", "line"]),
    ("top-level-list", "- a\n- b\n", ["mapping"]),
    ("unknown-top-key", {"nmae": "x"}, ["nmae", "did you mean 'name'"]),
    ("unknown-nested-key", {"search": {"space": {"temprature": 2.0}}}, ["search.space.temprature", "temperature"]),
    ("unknown-dist-key", {"search": {"space": {"lr": {"log_uniform": [1e-4, 1e-2]}}}}, ["search.space.lr",
                                                                                        "loguniform"]),
    ("wrong-type", {"search": {"num_samples": "many"}}, ["search.num_samples", "integer"]),
    ("alpha-out-of-range", {"search": {"space": {"alpha": {"uniform": [0.0, 1.5]}}}}, ["search.space.alpha", "1.5"]),
    ("temperature-zero", {"search": {"space": {"temperature": 0.0}}}, ["search.space.temperature", "outside"]),
    ("lr-negative", {"search": {"space": {"lr": -0.1}}}, ["search.space.lr"]),
    ("low-above-high", {"search": {"space": {"lr": {"loguniform": [1e-2, 1e-4]}}}}, ["search.space.lr", "below"]),
    ("empty-choice", {"search": {"space": {"batch_size": {"choice": []}}}}, ["search.space.batch_size", "empty"]),
    ("two-dists", {"search": {"space": {"alpha": {"uniform": [0, 1], "choice": [0.5]}}}}, ["search.space.alpha",
                                                                                           "exactly one"]),
    ("unknown-student", {"student": {"candidates": ["mobilenet_v3_smal"]}}, ["student.candidates",
                                                                             "mobilenet_v3_small"]),
    ("unknown-optimizer", {"search": {"space": {"optimizer": "adam"}}}, ["search.space.optimizer", "adamw"]),
    ("unknown-teacher-source", {"teacher": {"source": "magic"}}, ["teacher", "magic", "checkpoint"]),
    ("unknown-data-source", {"data": {"source": "webdataset"}}, ["data.source", "image_folder"]),
    ("folder-without-root", {"data": {"source": "image_folder"}}, ["data.root"]),
    ("csv-without-manifest", {"data": {"source": "csv", "root": "."}}, ["data.manifest"]),
    ("mode-contradicts-metric", {"search": {"metric": "val_accuracy", "mode": "min"}}, ["search", "contradicts"]),
    ("grace-over-max", {"search": {"grace_period": 5, "max_epochs": 2}}, ["grace_period"]),
    ("bad-name", {"name": "my experiment!"}, ["name"]),
    ("checkpoint-without-weights", {"teacher": {"source": "checkpoint", "arch": "resnet8"}}, ["teacher.weights",
                                                                                              "missing"]),
    ("hf-without-mode", {"teacher": {"source": "huggingface", "model": "m"}}, ["teacher.mode", "missing"]),
    ("hf-unknown-mode", {"teacher": {"source": "huggingface", "model": "m", "mode": "few_shot"}},
     ["teacher.mode", "zero_shot", "linear_probe"]),
    ("prompt-without-label", {"teacher": {"source": "huggingface", "model": "m", "mode": "zero_shot",
                                          "prompt": "a photo"}}, ["teacher.prompt", "{label}"]),
    ("ensemble-of-one", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8"}]}},
     ["teacher.members", "at least 2"]),
    ("ensemble-weights-count", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8"}, {"arch": "resnet8"}],
                                            "weights": [1.0]}}, ["teacher", "1 weights for 2 members"]),
    ("ensemble-member-typo", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8", "epochz": 2},
                                                                            {"arch": "resnet8"}]}},
     ["teacher.members.0.epochz", "did you mean 'epochs'"]),
    ("ensemble-member-cache", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8", "cache": False},
                                                                             {"arch": "resnet8"}]}},
     ["members[0]", "set them on the ensemble"]),
    ("teacher-weights-without-ensemble", {"search": {"space": {"teacher_weights": [0.5, 0.5]}}},
     ["search.space.teacher_weights", "ensemble"]),
    ("teacher-weights-count", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8"}, {"arch": "resnet8"}]},
                               "search": {"space": {"teacher_weights": [1.0]}}},
     ["search.space.teacher_weights", "1 entries for 2"]),
    ("feature-weight-negative", {"search": {"space": {"feature_weight": -1.0}}},
     ["search.space.feature_weight", "outside"]),
    ("feature-loss-unknown", {"search": {"space": {"feature_loss": "l1"}}}, ["search.space.feature_loss", "cosine"]),
    ("loss-unknown", {"search": {"space": {"loss": {"choice": ["kd", "crd"]}}}}, ["search.space.loss", "'crd'", "dkd"]),
    ("dkd-beta-zero", {"search": {"space": {"dkd_beta": 0.0}}}, ["search.space.dkd_beta", "outside"]),
    ("label-budget-zero", {"data": {"label_budget": 0}}, ["data.label_budget", "greater than or equal to 1"]),
    ("unlabeled-without-root", {"data": {"unlabeled": {"source": "image_folder"}}}, ["data.unlabeled.root", "missing"]),
    ("unlabeled-csv-without-manifest", {"data": {"unlabeled": {"source": "csv", "root": "."}}},
     ["data.unlabeled.manifest"]),
    ("min-f1-on-a-member", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8", "min_val_macro_f1": 0.5},
                                                                          {"arch": "resnet8"}]}},
     ["members[0]", "min_val_macro_f1", "on the ensemble"]),
    ("resources-on-a-live-teacher", {"teacher": {"source": "train", "cache": False, "resources": {"gpu": 1}}},
     ["teacher: resources", "cache: true"]),
    ("resources-on-a-member", {"teacher": {"source": "ensemble", "members": [{"arch": "resnet8",
                                                                              "resources": {"gpu": 1}},
                                                                             {"arch": "resnet8"}]}},
     ["members[0]", "resources", "on the ensemble"]),
    ("teacher-dtype", {"teacher": {"source": "train", "dtype": "int8"}}, ["teacher.dtype", "bfloat16"]),
    ("rung-val-size-zero", {"search": {"rung_val_size": 0}}, ["search.rung_val_size"]),
    ("submit-url-scheme", {"submit": {"url": "server.example:9000"}}, ["submit.url", "http"]),
    ("submit-format", {"submit": {"url": "http://127.0.0.1:9", "format": "onnx"}}, ["submit.format", "torchscript"]),
    ("submit-token-in-config", {"submit": {"url": "http://127.0.0.1:9", "token": "abc"}},
     ["submit.token", "unknown key", "token_env"]),
]


@pytest.mark.parametrize("case_id,change,words", BAD, ids=[b[0] for b in BAD])
def test_bad_config_exits_2_naming_the_key(tmp_path, run_cli, case_id, change, words):
    if isinstance(change, str):
        path = tmp_path / "bad.yaml"
        path.write_text(change)
    else:
        cfg = tiny_config(tmp_path)
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict) and key != "teacher":
                merged = dict(cfg[key])
                for k, v in value.items():
                    merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
                cfg[key] = merged
            else:
                cfg[key] = value
        path = write_config(tmp_path, cfg, "bad.yaml")
    code, out, err = run_cli("validate", path)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    line = err.strip()
    assert len(line.splitlines()) == 1, line
    assert str(path) in line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("argv,words", [
    (["validate", "does/not/exist.yaml"], ["does/not/exist.yaml", "not found"]),
    (["validate", "search_spaces/digits.yaml", "--set", "search.num_samples"], ["--set", "KEY=VALUE"]),
    (["validate", "search_spaces/skin.yaml"], ["data.root", "data/skin", "subfolder per class", "--set data.root"]),
    (["train", "search_spaces/skin.yaml"], ["data.root", "data/skin", "subfolder per class", "--set data.root"]),
    (["validate", "search_spaces/dermamnist.yaml"], ["data.root", "dermamnist_224.npz", "not found", "MedMNIST"]),
    (["validate", "search_spaces/digits.yaml", "--set", "student.max_size_mb=1"], ["student.max_size_mb",
                                                                                   "no candidate fits"]),
    (["train", "search_spaces/digits.yaml", "--set", "search.space.alpha=2"], ["search.space.alpha"]),
])
def test_bad_invocations_exit_2(run_cli, argv, words):
    code, _, err = run_cli(*argv)
    assert code == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_load_config_raises_kdsearch_error(tmp_path):
    with pytest.raises(KdsearchError, match="search.space.alpha"):
        load_config(write_config(tmp_path, tiny_config(tmp_path, search={"space": {"alpha": 3}})))


def test_hparams_and_the_space_list_the_same_keys():
    """A new hyperparameter is a Space field and an Hparams field; forgetting either fails here."""
    from kdsearch.config import Space
    from kdsearch.distill.distiller import Hparams

    assert set(Hparams.model_fields) == set(Space.model_fields)
    hp = Hparams.from_mapping({"student": "resnet8", "temperature": "4", "alpha": 0.5, "lr": 1e-3, "weight_decay": 0,
                               "batch_size": 64.0, "class_weight_power": 0, "teacher_weight_1": 0.25,
                               "teacher_weight_0": 0.75, "trial_id": "ignored"})
    assert hp.temperature == 4.0 and hp.batch_size == 64 and isinstance(hp.batch_size, int)
    assert hp.teacher_weights == (0.75, 0.25)  # ordered by member index, not by key order
    assert Hparams.from_mapping(hp.as_dict()) == hp and hp.replace(alpha=0.0).alpha == 0.0


def test_an_integer_range_keeps_both_ends_through_tune_and_optuna():
    """{int: [16, 18]} means 16, 17 or 18: Tune's randint excludes its upper bound, so the space adds one; Optuna
    (through OptunaSearch) gets the inclusive [16, 18]."""
    from optuna.distributions import IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    from kdsearch.config import Space
    from kdsearch.search.tune_space import tune_space

    space = tune_space(Space.model_validate({"batch_size": {"int": [16, 18]}}), [("resnet8", "fp32")])
    assert set(space["batch_size"].sample(size=300)) == {16, 17, 18}
    optuna_space = OptunaSearch.convert_search_space({"batch_size": space["batch_size"]})
    assert optuna_space["batch_size"] == IntDistribution(16, 18)


@pytest.mark.parametrize("metric,mode", [("val_macro_f1", "max"), ("val_accuracy", "max"), ("val_loss", "min")])
def test_each_metric_gets_its_direction(tmp_path, metric, mode):
    raw = tiny_config(tmp_path)
    raw["search"]["metric"] = metric
    raw["search"].pop("mode", None)
    assert Config.model_validate(raw).search.resolved_mode == mode

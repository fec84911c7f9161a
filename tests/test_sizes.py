"""Student sizes: the exact bytes of the exported file, known with no weights built, cached per library version."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdsearch.core.errors import KdsearchError
from kdsearch.models import sizes
from kdsearch.models.deployed import WEIGHTS_FILE, cast_state_dict
from kdsearch.models.sizes import state_dict_bytes, student_size
from kdsearch.models.students import STUDENTS, create_student, list_students


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty size cache, and no sizes remembered in this process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    student_size.cache_clear()
    yield sizes.cache_path()
    student_size.cache_clear()


def saved_bytes(model: nn.Module, precision: str, path) -> int:
    torch.save(cast_state_dict(model, precision), path)
    return path.stat().st_size


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", list_students())
def test_reported_size_is_the_saved_file(tmp_path, fresh_cache, name, precision):
    """Measured cold (meta device), then read back from the cache: both are the exported file's size."""
    real = saved_bytes(create_student(name, num_classes=10, image_size=32), precision, tmp_path / WEIGHTS_FILE)
    assert student_size(name, 10, 32).bytes(precision) == real
    assert fresh_cache.is_file()
    student_size.cache_clear()
    assert student_size(name, 10, 32).bytes(precision) == real


def test_size_limit_verdicts():
    assert not student_size("efficientnet_b1", 10, 224).fits(25, "fp32")
    assert student_size("efficientnet_b1", 10, 224).fits(25, "fp16")
    assert not student_size("resnet18", 10, 32).fits(25, "fp32")
    assert student_size("resnet8", 10, 32).fits(25, "fp32")


def test_sizes_build_no_weights(fresh_cache, monkeypatch):
    """Every parameter created while sizing is on the meta device: nothing is allocated or initialised."""
    devices = []
    register = nn.Module.register_parameter

    def spy(self, name, param):
        if param is not None:
            devices.append(param.device.type)
        return register(self, name, param)

    monkeypatch.setattr(nn.Module, "register_parameter", spy)
    size = student_size("efficientnet_b0", 7, 64)
    assert devices and set(devices) == {"meta"}
    assert size.params == sum(p.numel() for p in create_student("efficientnet_b0", 7, 64).parameters())


def test_meta_and_real_models_count_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    real = create_student("mobilenet_v3_small", 5, 32)
    with torch.device("meta"):
        meta = create_student("mobilenet_v3_small", 5, 32)
    for precision in ("fp32", "fp16"):
        expected = saved_bytes(real, precision, tmp_path / WEIGHTS_FILE)
        assert state_dict_bytes(meta, precision) == state_dict_bytes(real, precision) == expected


def test_a_cached_size_is_used_only_under_the_same_versions(fresh_cache, monkeypatch):
    true = student_size("resnet8", 10, 32)
    data = json.loads(fresh_cache.read_text())
    (key,) = data
    assert "torchvision" in key and "students.py" in key
    data[key]["params"] = 123  # a cached entry is what later processes read
    fresh_cache.write_text(json.dumps(data))
    student_size.cache_clear()
    assert student_size("resnet8", 10, 32).params == 123
    monkeypatch.setattr(sizes, "_code_version", lambda: "torchvision 99.0")  # another install: measured again
    student_size.cache_clear()
    assert student_size("resnet8", 10, 32) == true


def test_a_broken_or_unwritable_cache_is_not_an_error(fresh_cache, tmp_path, monkeypatch):
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("{not json")
    true = student_size("resnet8", 10, 32)
    data = json.loads(fresh_cache.read_text())  # rewritten whole
    assert true.params > 0 and len(data) == 1
    for damaged in ({"params": "many"}, {"fp32_bytes": -1}, {"name": "resnet18"}, {"params": 1.5}):
        fresh_cache.write_text(json.dumps({key: {**entry, **damaged} for key, entry in data.items()}))
        student_size.cache_clear()
        assert student_size("resnet8", 10, 32) == true, damaged  # an edited entry is measured again
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # its folder cannot be created
    student_size.cache_clear()
    assert student_size("resnet8", 10, 32) == true


def test_a_plugins_student_is_never_cached(fresh_cache):
    @STUDENTS.register("plugin_linear")
    def plugin_linear(num_classes: int, image_size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, num_classes))

    try:
        assert student_size("plugin_linear", 4, 8).params == 3 * 64 * 4 + 4
        assert not fresh_cache.exists()
    finally:
        STUDENTS._entries.pop("plugin_linear")


def test_the_limit_is_in_mb_of_a_million_bytes_not_mib():
    """EfficientNet-B1 (10 classes, 224 px) is 26.51 MB in fp32: over a 26 MB limit, though under 26 MiB (27.26 MB);
    and the fp16 file (13.33 MB) is over 13.0 MB but under 13.0 MiB (13.63 MB)."""
    b1 = student_size("efficientnet_b1", 10, 224)
    assert 26.0e6 < b1.bytes("fp32") < 26.0 * 2**20 and 13.0e6 < b1.bytes("fp16") < 13.0 * 2**20
    assert not b1.fits(26.0, "fp32") and b1.fits(26.6, "fp32")
    assert not b1.fits(13.0, "fp16") and b1.fits(13.4, "fp16")
    assert b1.fits(b1.bytes("fp32") / 1e6, "fp32")  # a file of exactly the limit fits


@pytest.mark.parametrize("precision,fits", [("fp32", ["resnet8"]), ("fp16", ["resnet8", "efficientnet_b1"])])
def test_the_students_that_fit_are_chosen_in_the_configs_precision(tmp_path, precision, fits):
    """The size filter reads student.precision both ways: an fp16 file fits where its fp32 one would not, and an
    fp32 one is never let in on its fp16 size."""
    from kdsearch.config import Config
    from kdsearch.models.sizes import select_deployments

    from conftest import tiny_config

    cfg = Config.model_validate(tiny_config(tmp_path, data={"source": "digits", "image_size": 224},
                                            student={"candidates": ["resnet8", "efficientnet_b1"], "max_size_mb": 25,
                                                     "precision": precision}))
    chosen = select_deployments(cfg, 10)
    assert chosen.students == fits and chosen.pairs == [(n, precision) for n in fits]
    assert [n for n, _, _ in chosen.over] == [n for n in ("resnet8", "efficientnet_b1") if n not in fits]


def test_a_searched_format_pairs_each_student_with_the_formats_it_fits_and_can_be(tmp_path):
    """ResNet-34 (85 MB fp32, 43 MB fp16) enters only as int8; EfficientNet, which has no int8 twin, only as float;
    offering int8 alone to a student that cannot be int8 is refused, naming it and why."""
    from kdsearch.config import Config
    from kdsearch.models.sizes import select_deployments

    from conftest import tiny_config

    def config(precision, candidates):
        return Config.model_validate(tiny_config(tmp_path, data={"source": "digits", "image_size": 16},
                                                 student={"candidates": candidates, "max_size_mb": 25},
                                                 search={"space": {"precision": precision}}))

    d = select_deployments(config({"choice": ["fp32", "fp16", "int8"]}, ["resnet34", "efficientnet_b0"]), 10)
    assert d.pairs == [("resnet34", "int8"), ("efficientnet_b0", "fp32"), ("efficientnet_b0", "fp16")]
    assert [(n, f) for n, f, _ in d.over] == [("resnet34", "fp32"), ("resnet34", "fp16")]
    assert list(d.not_int8) == ["efficientnet_b0"] and "EfficientNet" in d.not_int8["efficientnet_b0"]
    with pytest.raises(KdsearchError, match=r"search.space.precision int8: efficientnet_b0 cannot be int8 "
                                            r"\(efficientnet_b0: torchvision has no quantizable EfficientNet"):
        select_deployments(config("int8", ["resnet8", "efficientnet_b0"]), 10)

"""Teachers of every source load through the user's code path; bad teachers exit 2; outputs are computed once."""

from __future__ import annotations

import textwrap

import pytest
import torch

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.data.dataset import load_dataset
from kdsearch.teachers import build_teacher, build_teachers
from kdsearch.teachers.cache import teacher_targets

from conftest import tiny_config

USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, classes=10, hidden=16):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, classes)

        def forward(self, x):
            return self.head(self.body(x))
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop("my_models", None)
    return importlib.import_module("my_models")


def cfg_with(tmp_path, teacher) -> Config:
    return Config.model_validate(tiny_config(tmp_path, teacher=teacher))


def test_module_class_checkpoint_teacher_loads(tmp_path, user_module):
    torch.manual_seed(0)
    net = user_module.TinyNet(classes=10, hidden=16)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "my_models:TinyNet", "weights": str(tmp_path / "tiny.pt"),
                              "arch_kwargs": {"classes": 10, "hidden": 16}})
    data = load_dataset(cfg)
    teacher = build_teacher(cfg, data, "cpu")
    assert torch.equal(teacher.model.head.weight, net.head.weight)  # the saved weights, not a fresh init
    assert teacher.outputs(data.val.x[:4])[0].shape == (4, 10)


def test_class_count_mismatch_names_both_counts(tmp_path, user_module):
    torch.save(user_module.TinyNet(classes=7).state_dict(), tmp_path / "seven.pt")
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "my_models:TinyNet",
                              "weights": str(tmp_path / "seven.pt"),
                              "arch_kwargs": {"classes": 7}})
    with pytest.raises(KdsearchError, match=r"outputs \(7,\) classes but the data has 10"):
        build_teacher(cfg, load_dataset(cfg), "cpu")


def test_registry_checkpoint_with_other_class_count(tmp_path):
    from kdsearch.models.students import create_student

    torch.save(create_student("resnet8", 5, 8).state_dict(), tmp_path / "r8.pt")
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "resnet8", "weights": str(tmp_path / "r8.pt")})
    with pytest.raises(KdsearchError, match="checkpoint has 5 classes .* data has 10"):
        build_teacher(cfg, load_dataset(cfg), "cpu")


@pytest.mark.parametrize("legacy_format", [False, True])
def test_validate_checks_a_checkpoint_with_no_weights_built(tmp_path, monkeypatch, legacy_format):
    """`validate`'s teacher check builds the architecture on the meta device and maps the file (a legacy-format
    file, which cannot be mapped, is read), and still refuses what a real load refuses."""
    from kdsearch.models.students import create_student
    from kdsearch.preflight import check_teacher_files

    for name, arch, classes in [("good", "resnet8", 10), ("other_arch", "shufflenet_v2_x0_5", 10),
                                ("five", "resnet8", 5)]:
        torch.save(create_student(arch, classes, 8).state_dict(), tmp_path / f"{name}.pt",
                   _use_new_zipfile_serialization=not legacy_format)
    from kdsearch.teachers import checkpoint

    devices = []
    build = checkpoint.model_from_arch

    def spy(*args, **kwargs):
        model = build(*args, **kwargs)
        devices.extend(p.device.type for p in model.parameters())
        return model

    monkeypatch.setattr(checkpoint, "model_from_arch", spy)

    def check(weights):
        check_teacher_files(cfg_with(tmp_path, {"source": "checkpoint", "arch": "resnet8",
                                                "weights": str(tmp_path / weights)}), 10)

    check("good.pt")
    assert devices and set(devices) == {"meta"}
    with pytest.raises(KdsearchError, match="does not match teacher.arch resnet8"):
        check("other_arch.pt")
    with pytest.raises(KdsearchError, match="checkpoint has 5 classes .* data has 10"):
        check("five.pt")


def test_timm_checkpoint_teacher(tmp_path):
    import timm

    net = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "timm.pt")  # wrapped checkpoints are unwrapped
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "resnet10t", "weights": str(tmp_path / "timm.pt"),
                              "input": {"size": 32}})
    data = load_dataset(cfg)
    teacher = build_teacher(cfg, data, "cpu")
    assert teacher.spec.size == 32
    net.eval()
    from kdsearch.data.transforms import to_input
    expected = net(to_input(data.val.x[:3], teacher.spec, 32))
    assert torch.allclose(teacher.outputs(data.val.x[:3])[0], expected, atol=1e-5)


def test_garbage_weights_exit_2(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04 definitely not a checkpoint")
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "resnet8", "weights": str(tmp_path / "junk.pt")})
    with pytest.raises(KdsearchError, match="teacher.weights .*not a loadable PyTorch weights file"):
        build_teacher(cfg, load_dataset(cfg), "cpu")


def test_unknown_arch_exit_2(tmp_path):
    torch.save({}, tmp_path / "w.pt")
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "not_a_model_anywhere",
                              "weights": str(tmp_path / "w.pt")})
    with pytest.raises(KdsearchError, match="teacher.arch 'not_a_model_anywhere': unknown"):
        build_teacher(cfg, load_dataset(cfg), "cpu")


def test_torchscript_teacher_with_its_own_grayscale_input(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12 * 12, 10))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "t.pt"))
    cfg = cfg_with(tmp_path, {"source": "torchscript", "path": str(tmp_path / "t.pt"),
                              "input": {"size": 12, "channels": 1, "mean": [0.0], "std": [1.0]}})
    data = load_dataset(cfg)
    teacher = build_teacher(cfg, data, "cpu")
    x = data.val.x[:2]
    expected = net(torch.nn.functional.interpolate(x.float() / 255, size=(12, 12), mode="bilinear", antialias=True))
    assert torch.allclose(teacher.outputs(x)[0], expected, atol=1e-5)


def test_trained_teacher_is_cached(tmp_path, monkeypatch):
    cfg = cfg_with(tmp_path, {"source": "train", "arch": "resnet8", "epochs": 1})
    data = load_dataset(cfg)
    first = build_teacher(cfg, data, "cpu")
    import kdsearch.teachers.train as trained

    def no_training(*a, **k):
        raise AssertionError("teacher trained twice")

    monkeypatch.setattr(trained, "fit_teacher", no_training)
    second = build_teacher(cfg, data, "cpu")
    assert first.fingerprint == second.fingerprint
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])


@pytest.mark.parametrize("augment,views", [("none", 3), ("standard", 3)])
def test_teacher_outputs_computed_once_per_view(tmp_path, user_module, augment, views):
    torch.save(user_module.TinyNet().state_dict(), tmp_path / "tiny.pt")
    cfg = Config.model_validate(tiny_config(
        tmp_path, data={"augment": augment},
        teacher={"source": "checkpoint", "arch": "my_models:TinyNet", "weights": str(tmp_path / "tiny.pt"),
                 "cache_views": views}))
    data = load_dataset(cfg)
    teachers = build_teachers(cfg, data, "cpu")
    n, n_val = len(data.train.y), len(data.val.y)
    expect_views = 1 if augment == "none" else views
    first = teacher_targets(cfg, data, teachers, "cpu")
    assert first.forward_passes == n * expect_views + n_val
    assert (first.views.num_views, len(first.views)) == (expect_views, n)
    assert first.logits.shape == (expect_views, n, 1, 10)
    # the cached logits are the teacher's on exactly the pixels the views remake
    assert torch.allclose(first.logits[-1, :5, 0], teachers.members[0].outputs(first.views.pixels(-1, slice(0, 5)))[0],
                          atol=1e-5)
    if augment != "none":
        assert not torch.equal(first.views.pixels(0, slice(None)), first.views.pixels(1, slice(None)))
    again = teacher_targets(cfg, data, build_teachers(cfg, data, "cpu"), "cpu")
    assert again.forward_passes == 0
    assert torch.equal(again.logits, first.logits)
    assert torch.equal(again.views.pixels(views - 1, slice(None)), first.views.pixels(views - 1, slice(None)))


def _flip_byte_in_the_middle(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_teacher_cache_is_detected_and_rebuilt(tmp_path, user_module, damage):
    """A truncated file fails to load; a flipped byte in tensor data loads fine, and only the SHA-256
    recorded beside the file catches it. Either way the outputs are recomputed, never used."""
    torch.save(user_module.TinyNet().state_dict(), tmp_path / "tiny.pt")
    cfg = cfg_with(tmp_path, {"source": "checkpoint", "arch": "my_models:TinyNet",
                              "weights": str(tmp_path / "tiny.pt")})
    data = load_dataset(cfg)
    teacher = build_teachers(cfg, data, "cpu")
    first = teacher_targets(cfg, data, teacher, "cpu")
    (cache,) = (cfg.output_dir / "teacher").glob("logits-*.pt")
    assert (cache.parent / (cache.name + ".sha256")).is_file()
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[:100])
    else:
        _flip_byte_in_the_middle(cache)
        assert torch.load(cache, weights_only=True)["logits"].shape == first.logits[:, :, 0].shape  # still loads
    again = teacher_targets(cfg, data, teacher, "cpu")
    assert again.forward_passes > 0 and torch.equal(again.logits, first.logits)
    assert teacher_targets(cfg, data, teacher, "cpu").forward_passes == 0  # the rebuilt file is trusted again


def test_corrupted_data_cache_is_decoded_again(tmp_path):
    cfg = cfg_with(tmp_path, {"source": "train", "arch": "resnet8", "epochs": 1})
    first = load_dataset(cfg)
    (cache,) = (cfg.output_dir / "cache").glob("data-*.pt")
    _flip_byte_in_the_middle(cache)
    again = load_dataset(cfg)
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.val.y, first.val.y)


def test_a_checkpoint_that_declares_its_normalisation_is_warned_about_when_it_differs(tmp_path, caplog):
    """A training script that saved {"state_dict", "mean", "std"}: the teacher fed the student's 0.5/0.5 gets a
    warning naming the teacher.input to set; set to match, no warning."""
    import logging

    import torch

    from kdsearch.config import Config
    from kdsearch.data.dataset import load_dataset
    from kdsearch.models.students import create_student
    from kdsearch.teachers import build_teacher

    from conftest import tiny_config

    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.save({"state_dict": create_student("resnet8", 10, 8).state_dict(), **imagenet}, tmp_path / "t.pt")
    teacher = {"source": "checkpoint", "arch": "resnet8", "weights": str(tmp_path / "t.pt")}
    cfg = Config.model_validate(tiny_config(tmp_path, teacher=teacher))
    data = load_dataset(cfg)
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        build_teacher(cfg, data, "cpu")
    assert "trained with normalisation mean [0.485, 0.456, 0.406]" in caplog.text
    assert "set teacher.input: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}" in caplog.text
    caplog.clear()
    matched = Config.model_validate(tiny_config(tmp_path, teacher={**teacher, "input": imagenet}))
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        build_teacher(matched, data, "cpu")
    assert "normalisation" not in caplog.text

"""Every registered student: forward + backward at the sizes the configs use; `list-models` (sizes: test_sizes.py)."""

from __future__ import annotations

import json

import pytest
import torch

from kdsearch.config import load_config
from kdsearch.models.deployed import cast_state_dict
from kdsearch.models.students import create_student, list_students, vit_patch_size

from conftest import SHIPPED

CONFIG_SIZES = sorted({load_config(p).data.image_size for p in SHIPPED})


def test_registry_has_the_zoo():
    assert set(list_students()) == {
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
        "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
        "resnet8", "resnet18", "resnet34", "vit_student"}


@pytest.mark.parametrize("size", CONFIG_SIZES)
@pytest.mark.parametrize("name", list_students())
def test_forward_backward(name, size):
    torch.manual_seed(0)
    model = create_student(name, num_classes=7, image_size=size)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resnet8_has_the_cifar_stem_and_one_block_per_stage():
    model = create_student("resnet8", 10, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]


def test_vit_student_shape():
    model = create_student("vit_student", 10, 224)
    assert len(model.blocks) == 6 and model.embed_dim == 192 and model.blocks[0].attn.num_heads == 3
    assert (vit_patch_size(224), vit_patch_size(32), vit_patch_size(28)) == (16, 4, 4)


def test_list_models_command(run_cli, tmp_path):
    code, out, _ = run_cli("list-models", "--image-size", "32", "--json")
    assert code == 0
    rows = {r["student"]: r for r in json.loads(out)}
    assert set(rows) == set(list_students())
    assert not rows["efficientnet_b1"]["fits_fp32"] and rows["efficientnet_b1"]["fits_fp16"]  # fp32 over 25 MB
    assert not rows["resnet18"]["fits_fp32"]
    assert rows["resnet8"]["fits_fp32"]
    for precision in ("fp32", "fp16"):  # the bytes shown are a saved file's, not the sizing function's own figure
        torch.save(cast_state_dict(create_student("resnet8", 10, 32), precision), tmp_path / "student.pt")
        assert rows["resnet8"][f"{precision}_bytes"] == (tmp_path / "student.pt").stat().st_size
    assert rows["resnet34"]["fits"] == {"fp32": False, "fp16": False, "int8": True}  # only its int8 file fits
    assert rows["efficientnet_b0"]["files"]["int8"] is None and "EfficientNet" in rows["efficientnet_b0"]["int8"]
    code, table, _ = run_cli("list-models", "--image-size", "32")  # the table a person reads names every student
    assert code == 0 and all(name in table for name in rows)
    r34 = next(line for line in table.splitlines() if "resnet34" in line)
    assert r34.count(" over") == 2 and f"{rows['resnet34']['files']['int8'] / 1e6:.2f} " in r34

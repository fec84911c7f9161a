"""int8 students (kdsearch.quantize): a trained float student converted by static post-training quantization into
a TorchScript file that a fresh interpreter with only torch loads and runs on a CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kdsearch.engine import recalibrate_bn
from kdsearch.quantize import int8_model, latency_ms, save_torchscript, why_not_int8
from kdsearch.students import create_student


def digits(size: int = 16):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1).expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, torch.tensor(d.target)


def trained(name: str, x: torch.Tensor, y: torch.Tensor, epochs: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_student(name, 10, x.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    recalibrate_bn(model, x[:512].split(128))  # as every kdsearch student is before it is scored
    return model.eval()


@pytest.mark.parametrize("name, most", [("resnet8", 0.30), ("mobilenet_v3_large", 0.30), ("shufflenet_v2_x1_0", 0.35)])
def test_an_int8_file_is_a_fraction_of_fp32_loads_with_torch_alone_and_keeps_the_predictions(tmp_path, name, most):
    x, y = digits()
    train, val = slice(0, 1400), slice(1400, None)
    model = trained(name, x[train], y[train])
    q = int8_model(model, name, 10, x[train][torch.randperm(1400, generator=torch.Generator().manual_seed(0))[:512]]
                   .split(128))
    fp32 = save_torchscript(model, x[:1], tmp_path / "fp32.pt")
    save_torchscript(q, x[:1], tmp_path / "int8.pt")
    assert (tmp_path / "int8.pt").stat().st_size <= most * (tmp_path / "fp32.pt").stat().st_size
    torch.save(x[val], tmp_path / "val.pt")
    # a fresh interpreter that imports torch and nothing of kdsearch or torchvision
    code = ("import sys, torch; m = torch.jit.load(sys.argv[1]); x = torch.load(sys.argv[2], weights_only=True);"
            "torch.save(m(x).argmax(1), sys.argv[3]); print(sorted(k for k in sys.modules if k.startswith(('kdsearch',"
            "'torchvision'))))")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "int8.pt"), str(tmp_path / "val.pt"),
                          str(tmp_path / "pred.pt")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
    pred, float_pred = torch.load(tmp_path / "pred.pt", weights_only=True), fp32(x[val]).argmax(1)
    assert (pred == q(x[val]).argmax(1)).all()  # the file is the model
    float_acc, int8_acc = (float_pred == y[val]).float().mean(), (pred == y[val]).float().mean()
    assert float_acc > 0.6 and int8_acc >= float_acc - 0.05, (float_acc, int8_acc)


def test_students_without_an_int8_twin_are_named_with_the_reason():
    assert why_not_int8("resnet34") is None and why_not_int8("shufflenet_v2_x0_5") is None
    assert "EfficientNet" in why_not_int8("efficientnet_b0")
    assert "LayerNorm" in why_not_int8("vit_student")
    with pytest.raises(ValueError, match="vit_student cannot be int8"):
        int8_model(create_student("vit_student", 10, 16), "vit_student", 10, [])


def test_latency_is_the_median_of_single_image_runs_on_one_thread(tmp_path):
    model = save_torchscript(create_student("resnet8", 10, 16).eval(), torch.rand(1, 3, 16, 16), tmp_path / "m.pt")
    threads = torch.get_num_threads()
    ms = latency_ms(model, 16, runs=5, warmup=1)
    assert 0 < ms < 5000 and torch.get_num_threads() == threads

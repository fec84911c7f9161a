"""int8 students (kdsearch.models.quantize): a trained float student converted by static post-training quantization into
a TorchScript file that a fresh interpreter with only torch loads and runs on a CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kdsearch.engine.loop import recalibrate_bn
from kdsearch.models.deployed import latency_ms, load, script_bytes
from kdsearch.models.quantize import int8_model, why_not_int8
from kdsearch.models.students import create_student


def digits(size: int = 16):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1).expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, torch.tensor(d.target)


def save_torchscript(model: torch.nn.Module, example: torch.Tensor, path) -> torch.jit.ScriptModule:
    path.write_bytes(script_bytes(model, example.shape[-1]))
    return load(path)


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


# ShuffleNetV2-x2.0: at x1.0 the file's ~0.35 MB of traced code alone makes int8 34% of fp32 (1.87 / 5.53 MB)
@pytest.mark.parametrize("name, most", [("resnet8", 0.30), ("mobilenet_v3_large", 0.30), ("shufflenet_v2_x2_0", 0.30)])
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


def test_the_size_limit_reads_the_shipped_file_in_each_format(tmp_path):
    """file_bytes is the TorchScript file as_format + script_bytes write (the limit's figure), at least the weights
    file's size; ResNet-34 fits 25 MB only as int8, and a student without an int8 twin has no int8 size."""
    from kdsearch.models.deployed import as_format, cast_state_dict
    from kdsearch.models.sizes import file_bytes, fits, student_size

    for fmt in ("fp32", "fp16", "int8"):
        model = create_student("resnet8", 10, 16).eval()
        real = len(script_bytes(as_format(model, "resnet8", fmt, 10, [torch.rand(4, 3, 16, 16)]), 16))
        # TorchScript names a class traced again in one process ___torch_mangle_N: a few kB of names, not weights
        assert abs(file_bytes("resnet8", 10, 16, fmt) - real) < 20_000, fmt
    torch.save(cast_state_dict(create_student("resnet8", 10, 16), "fp16"), tmp_path / "student.pt")
    assert file_bytes("resnet8", 10, 16, "fp16") > (tmp_path / "student.pt").stat().st_size == \
        student_size("resnet8", 10, 16).fp16_bytes
    assert [fits("resnet34", 10, 16, f, 25) for f in ("fp32", "fp16", "int8")] == [False, False, True]
    assert file_bytes("efficientnet_b0", 10, 16, "int8") is None and not fits("efficientnet_b0", 10, 16, "int8", 25)


def test_latency_is_the_median_of_single_image_runs_on_one_thread(tmp_path):
    model = save_torchscript(create_student("resnet8", 10, 16).eval(), torch.rand(1, 3, 16, 16), tmp_path / "m.pt")
    threads = torch.get_num_threads()
    ms = latency_ms(model, 16, runs=5, warmup=1)
    assert 0 < ms < 5000 and torch.get_num_threads() == threads


def test_a_trial_in_int8_scores_its_int8_file_and_quantization_aware_epochs_change_it(tmp_path):
    """Distiller's last epoch converts the student to int8 (calibrated on the BatchNorm sample) and scores that file
    on the whole val split; with int8_qat_epochs the teacher keeps teaching the fake-quantized student first, so
    the file that ships is another one, and still a working classifier."""
    from kdsearch.config import Config
    from kdsearch.distill.distiller import default_hparams, prepare, train_student
    from kdsearch.engine.loop import evaluate
    from kdsearch.models.deployed import load
    from kdsearch.models.students import student_spec

    from conftest import tiny_config

    cfg = Config.model_validate(tiny_config(tmp_path, student={"candidates": ["resnet8"], "precision": "int8"},
                                            search={"max_epochs": 2}))
    prepared = prepare(cfg, "cpu")
    hp = default_hparams(cfg, prepared.pairs)
    assert hp.precision == "int8" and prepared.pairs == [("resnet8", "int8")]
    ptq, history = train_student(cfg, hp, prepared, "cpu")
    last = history[-1]
    assert last["scored"] == "int8 file" and last["val_full"] and last["size_mb"] == len(ptq.shipped) / 1e6
    data = prepared.data
    m = evaluate(load(ptq.shipped), data.val.x, data.val.y, student_spec(cfg), 8, 10, "cpu")
    assert m.macro_f1 == last["val_macro_f1"] and abs(m.macro_f1 - last["val_macro_f1_float"]) < 0.1
    qat, qat_history = train_student(cfg, hp.replace(int8_qat_epochs=1), prepared, "cpu")
    assert qat.shipped != ptq.shipped and len(qat.shipped) == pytest.approx(len(ptq.shipped), rel=0.01)
    assert qat_history[-1]["val_macro_f1"] > 0.3  # three times chance: QAT kept a classifier

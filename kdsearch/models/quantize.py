"""int8 students: static post-training quantization into a TorchScript file that plain `torch.jit.load` runs on a CPU.

The flow is PyTorch's eager one (`torch.ao.quantization`: fuse conv-bn-relu, observe calibration images, convert),
on the x86 engine. It is marked deprecated but ships in torch 2.14, and it is the one that gives a loadable int8
TorchScript file; PT2E (now in torchao) produces an exported program, not a TorchScript file (pytorch#111902).

A student can be int8 when torchvision ships a quantizable twin of it: the same modules under the same names (so a
trained float student's state_dict loads into it unchanged), plus quant/dequant stubs and `FloatFunctional` adds,
concatenations and multiplications that become int8 kernels. Those are ResNet (BasicBlock; the CIFAR stem of
ResNet-8/18/34 is a plain conv-bn-relu, fused like torchvision's), ShuffleNetV2 and MobileNetV3. The others cannot
(`why_not_int8` says why), and are never silently left in float.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Callable, Iterable

import torch
from torch import nn

ENGINE = "x86"  # torch's default server/desktop CPU engine (fbgemm + onednn kernels)


def _resnet(layers: list[int]) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models.quantization.resnet import QuantizableBasicBlock, QuantizableResNet

        model = QuantizableResNet(QuantizableBasicBlock, layers, num_classes=num_classes)
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # students.py's CIFAR stem
        model.maxpool = nn.Identity()
        return model

    return build


def _shufflenet(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models import quantization

        model = getattr(quantization, name)(weights=None, quantize=False, num_classes=num_classes)
        model.__class__ = _make_pooled(type(model))
        return model

    return build


@cache  # one subclass per torchvision class, not one per build
def _make_pooled(cls: type) -> type:
    """torchvision's quantizable ShuffleNetV2 with its global pool as adaptive_avg_pool2d instead of `mean([2, 3])`:
    the same float numbers, but the quantized `mean` fails on a 1x1 map (images of 32 px or less) with "required
    rank 4 tensor to use channels_last format" in torch 2.14."""

    class PooledShuffleNetV2(cls):  # type: ignore[misc, valid-type]
        def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.conv1(x))
            x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return PooledShuffleNetV2


def _mobilenet_v3(arch: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from torchvision.models.mobilenetv3 import _mobilenet_v3_conf
        from torchvision.models.quantization.mobilenetv3 import _mobilenet_v3_model

        setting, last_channel = _mobilenet_v3_conf(arch)
        return _mobilenet_v3_model(setting, last_channel, None, False, False, num_classes=num_classes)

    return build


TWINS: dict[str, Callable[[int], nn.Module]] = {
    "resnet8": _resnet([1, 1, 1, 1]),
    "resnet18": _resnet([2, 2, 2, 2]),
    "resnet34": _resnet([3, 4, 6, 3]),
    **{n: _shufflenet(n) for n in ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                                    "shufflenet_v2_x2_0")},
    "mobilenet_v3_small": _mobilenet_v3("mobilenet_v3_small"),
    "mobilenet_v3_large": _mobilenet_v3("mobilenet_v3_large"),
}
"""Students with an int8 twin: name -> builder(num_classes) of torchvision's quantizable version."""

WHY_NOT = {
    "efficientnet": "torchvision has no quantizable EfficientNet (SiLU, stochastic depth and squeeze-excitation "
                    "have no eager int8 kernels)",
    "vit": "LayerNorm, GELU and softmax attention have no eager static int8 kernels",
}


def why_not_int8(student: str) -> str | None:
    """None when `student` can be int8, else the reason it cannot."""
    if student in TWINS:
        return None
    for prefix, reason in WHY_NOT.items():
        if student.startswith(prefix):
            return reason
    return "no quantizable twin in torchvision (only ResNet, ShuffleNetV2 and MobileNetV3 have one)"


def _twin(model: nn.Module, student: str, num_classes: int) -> nn.Module:
    """The quantizable twin of `student` holding the float `model`'s weights (strict: same names, same shapes)."""
    if (reason := why_not_int8(student)) is not None:
        raise ValueError(f"{student} cannot be int8: {reason}")
    torch.backends.quantized.engine = ENGINE  # process-wide: the converted model runs on this engine's kernels
    twin = TWINS[student](num_classes)
    twin.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return twin.cpu()


def int8_model(model: nn.Module, student: str, num_classes: int, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """The trained float `model` as an int8 CPU model: its weights in the quantizable twin, conv-bn-relu fused,
    activation ranges observed on `calibration` (model inputs, float), then converted."""
    twin = _twin(model, student, num_classes).eval()
    twin.fuse_model(is_qat=False)
    twin.qconfig = torch.ao.quantization.get_default_qconfig(ENGINE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager flow's deprecation notices: known, see the module docstring
        prepared = torch.ao.quantization.prepare(twin)
        with torch.no_grad():
            for x in calibration:
                prepared(x.cpu().float())
        return torch.ao.quantization.convert(prepared)


def qat_model(model: nn.Module, student: str, num_classes: int) -> nn.Module:
    """The trained float `model` ready for quantization-aware training (fused, fake-quantized, in train mode): train
    it like the float student, then `int8_from_qat` converts it."""
    twin = _twin(model, student, num_classes).train()
    twin.fuse_model(is_qat=True)
    twin.qconfig = torch.ao.quantization.get_default_qat_qconfig(ENGINE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.prepare_qat(twin)


def int8_from_qat(model: nn.Module) -> nn.Module:
    """A quantization-aware trained model (`qat_model`) converted to int8, on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.convert(model.cpu().eval())

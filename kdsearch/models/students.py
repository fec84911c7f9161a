"""The student zoo: one registry, `create_student(name, num_classes, image_size)`.

Every entry point is a small function whose name is the public key (timm's
style). Students are built from scratch (no pretrained weights: nothing is
downloaded) and take 3-channel input at the data's image_size.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..core.errors import KdsearchError
from ..core.registry import Registry, import_object
from .input_spec import InputSpec

STUDENTS: Registry[Callable[..., nn.Module]] = Registry("student")
register_student = STUDENTS.register()


def list_students() -> list[str]:
    return STUDENTS.names()


def student_spec(cfg) -> InputSpec:
    """Students take RGB at the config's data.image_size with mean/std 0.5: they train from scratch."""
    return InputSpec(size=cfg.data.image_size)


def create_student(name: str, num_classes: int, image_size: int) -> nn.Module:
    model = STUDENTS[name](num_classes=num_classes, image_size=image_size)
    # torchvision's MobileNetV3/EfficientNet use BatchNorm momentum 0.01, tuned for long ImageNet runs; over
    # the few hundred steps of a search trial their running stats barely move and eval accuracy collapses.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model


# --------------------------------------------------------------------------- torchvision


def _torchvision(name: str, num_classes: int) -> nn.Module:
    """torchvision's model `name`, from scratch. Imported here, not at the top: importing torchvision takes about a
    second (it loads torch._dynamo), which `validate` and `list-models` need not pay when sizes are cached."""
    import torchvision.models

    return getattr(torchvision.models, name)(num_classes=num_classes)


@register_student
def shufflenet_v2_x0_5(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("shufflenet_v2_x0_5", num_classes)


@register_student
def shufflenet_v2_x1_0(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("shufflenet_v2_x1_0", num_classes)


@register_student
def shufflenet_v2_x1_5(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("shufflenet_v2_x1_5", num_classes)


@register_student
def shufflenet_v2_x2_0(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("shufflenet_v2_x2_0", num_classes)


@register_student
def mobilenet_v3_small(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("mobilenet_v3_small", num_classes)


@register_student
def mobilenet_v3_large(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("mobilenet_v3_large", num_classes)


@register_student
def efficientnet_b0(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("efficientnet_b0", num_classes)


@register_student
def efficientnet_b1(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("efficientnet_b1", num_classes)


@register_student
def efficientnet_b2(num_classes: int, image_size: int) -> nn.Module:
    return _torchvision("efficientnet_b2", num_classes)


# --------------------------------------------------------------------------- CIFAR-style ResNets


def _cifar_resnet(layers: list[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem: 3x3 conv, stride 1, no max-pool (small images keep their pixels)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, layers, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_student
def resnet8(num_classes: int, image_size: int) -> nn.Module:
    return _cifar_resnet([1, 1, 1, 1], num_classes)


@register_student
def resnet18(num_classes: int, image_size: int) -> nn.Module:
    return _cifar_resnet([2, 2, 2, 2], num_classes)


@register_student
def resnet34(num_classes: int, image_size: int) -> nn.Module:
    """21.3 M parameters: over 25 MB in fp32 (85 MB) and fp16 (43 MB); its int8 TorchScript file is 21.7 MB."""
    return _cifar_resnet([3, 4, 6, 3], num_classes)


# --------------------------------------------------------------------------- ViT


def vit_patch_size(image_size: int) -> int:
    """Largest of 16/8/4/2/1 that divides the image and leaves at least 7 patches a side (224 -> 16, 32 -> 4, 28 ->
    4)."""
    for p in (16, 8, 4, 2, 1):
        if image_size % p == 0 and image_size // p >= 7:
            return p
    return 1


@register_student
def vit_student(num_classes: int, image_size: int) -> nn.Module:
    """A 6-layer ViT (192 dim, 3 heads: ViT-Tiny's width at half its depth)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=image_size, patch_size=vit_patch_size(image_size), embed_dim=192, depth=6, num_heads=3,
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------- sizes


def final_linear(model: nn.Module) -> nn.Linear | None:
    """The layer that produces the logits: timm's classifier, else the last nn.Linear registered."""
    get = getattr(model, "get_classifier", None)
    if callable(get) and isinstance(get(), nn.Linear):
        return get()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def forward_with_features(model: nn.Module, head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model(x), the input `head` received during that call, flattened): logits and penultimate features."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return logits, captured[-1].flatten(1)


class FeatureStudent(nn.Module):
    """A student that also returns its penultimate features mapped to the teacher's width (for FitNets hints).

    forward(x) -> (logits, adapter(features)), where features are the input of
    the student's final linear layer. Only `student` is exported; the adapter
    exists for training.
    """

    def __init__(self, student: nn.Module, teacher_dim: int):
        super().__init__()
        self.student = student
        self.head = final_linear(student)
        self.adapter = nn.Linear(self.head.in_features, teacher_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = forward_with_features(self.student, self.head, x)
        return logits, self.adapter(feats)


def model_from_arch(arch: str, num_classes: int, image_size: int, kwargs: dict | None = None) -> nn.Module:
    """A registry name, a timm name, or `package.module:ClassName` (called with `kwargs`)."""
    if ":" in arch:
        return import_object(arch, "teacher.arch")(**(kwargs or {}))
    if arch in list_students():
        return create_student(arch, num_classes, image_size)
    import timm

    if timm.is_model(arch):
        extra = {"img_size": image_size} if "vit" in arch or "deit" in arch else {}
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)
    raise KdsearchError(f"teacher.arch {arch!r}: unknown; use a kdsearch model ({', '.join(list_students())}), "
                        "a timm model name, or package.module:ClassName")

"""The student zoo: one registry, `create_student(name, num_classes, image_size)`.

Every entry point is a small function whose name is the public key (timm's
style). Students are built from scratch (no pretrained weights: nothing is
downloaded) and take 3-channel input at the data's image_size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from .errors import KdsearchError
from .input_spec import InputSpec
from .registry import Registry, import_object

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


@register_student
def shufflenet_v2_x0_5(num_classes: int, image_size: int) -> nn.Module:
    return tvm.shufflenet_v2_x0_5(num_classes=num_classes)


@register_student
def shufflenet_v2_x1_0(num_classes: int, image_size: int) -> nn.Module:
    return tvm.shufflenet_v2_x1_0(num_classes=num_classes)


@register_student
def shufflenet_v2_x1_5(num_classes: int, image_size: int) -> nn.Module:
    return tvm.shufflenet_v2_x1_5(num_classes=num_classes)


@register_student
def shufflenet_v2_x2_0(num_classes: int, image_size: int) -> nn.Module:
    return tvm.shufflenet_v2_x2_0(num_classes=num_classes)


@register_student
def mobilenet_v3_small(num_classes: int, image_size: int) -> nn.Module:
    return tvm.mobilenet_v3_small(num_classes=num_classes)


@register_student
def mobilenet_v3_large(num_classes: int, image_size: int) -> nn.Module:
    return tvm.mobilenet_v3_large(num_classes=num_classes)


@register_student
def efficientnet_b0(num_classes: int, image_size: int) -> nn.Module:
    return tvm.efficientnet_b0(num_classes=num_classes)


@register_student
def efficientnet_b1(num_classes: int, image_size: int) -> nn.Module:
    return tvm.efficientnet_b1(num_classes=num_classes)


@register_student
def efficientnet_b2(num_classes: int, image_size: int) -> nn.Module:
    return tvm.efficientnet_b2(num_classes=num_classes)


# --------------------------------------------------------------------------- CIFAR-style ResNets


def _cifar_resnet(layers: list[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem: 3x3 conv, stride 1, no max-pool (small images keep their pixels)."""
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


def cast_state_dict(model: nn.Module, precision: str) -> dict[str, torch.Tensor]:
    """The state_dict as exported: floating tensors in `precision`, integer buffers untouched."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()}


def state_dict_bytes(model: nn.Module, precision: str) -> int:
    """Exact byte count of `torch.save(cast_state_dict(model, precision))`: the exported file's size."""
    buf = io.BytesIO()
    torch.save(cast_state_dict(model, precision), buf)
    return buf.getbuffer().nbytes


@dataclass(frozen=True)
class StudentSize:
    name: str
    params: int
    fp32_bytes: int
    fp16_bytes: int

    def bytes(self, precision: str) -> int:
        return self.fp32_bytes if precision == "fp32" else self.fp16_bytes

    def fits(self, max_size_mb: float, precision: str) -> bool:
        return self.bytes(precision) <= max_size_mb * 1_000_000


@lru_cache(maxsize=None)
def student_size(name: str, num_classes: int, image_size: int) -> StudentSize:
    """Parameters and exported sizes, known from the architecture before any training."""
    model = create_student(name, num_classes, image_size)
    return StudentSize(
        name=name,
        params=sum(p.numel() for p in model.parameters()),
        fp32_bytes=state_dict_bytes(model, "fp32"),
        fp16_bytes=state_dict_bytes(model, "fp16"),
    )


def fitting_students(candidates: list[str], num_classes: int, image_size: int, max_size_mb: float,
                     precision: str) -> tuple[list[str], list[StudentSize]]:
    """Split candidates into names that fit the limit and sizes of those that don't."""
    fit, over = [], []
    for name in candidates:
        size = student_size(name, num_classes, image_size)
        (fit.append(name) if size.fits(max_size_mb, precision) else over.append(size))
    return fit, over


def select_students(cfg, num_classes: int) -> tuple[list[str], list[StudentSize]]:
    """Candidates (or space.student's choices) that fit max_size_mb in student.precision; none -> exit 2."""
    s = cfg.student
    chosen = cfg.search.space.student
    if chosen is None:
        names = s.candidates
    else:  # a search_space.Dist over students, or one fixed student
        names = chosen.values_to_check() if hasattr(chosen, "values_to_check") else [chosen]
    fit, over = fitting_students(list(names), num_classes, cfg.data.image_size, s.max_size_mb, s.precision)
    if not fit:
        sizes = ", ".join(f"{o.name} {o.bytes(s.precision) / 1e6:.1f} MB" for o in over)
        raise KdsearchError(f"student.max_size_mb {s.max_size_mb:g}: no candidate fits in {s.precision} ({sizes}); "
                            "raise the limit, set student.precision: fp16, or add smaller student.candidates")
    return fit, over


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

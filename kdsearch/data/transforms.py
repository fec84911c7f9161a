"""Batched tensor transforms: augmentation (uint8 -> uint8) and per-model preprocessing.

Augmentation works on whole uint8 batches with one `grid_sample`, so it runs on
the GPU next to the model and a cached view is exactly the pixels both the
teacher and the student see.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import InputSpec

# One row of augmentation parameters per image: the whole recipe of a view, 48 bytes against 3·H·W of pixels.
# shift x/y (normalised, whole pixels), flip (±1), angle (rad), scale, brightness, contrast, erased rectangle (4
# uniforms: height, width, top, left), erase on (1) / off (0)
PARAMS = 12


def augment(x: torch.Tensor, level: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random views of a uint8 batch [B, C, H, W].

    standard: shift up to 1/8 of the side, horizontal flip (p=0.5) — the usual
    CIFAR/ImageNet recipe. strong: also rotation (±15°), scale (0.9-1.1),
    brightness/contrast jitter (±20%) and one erased rectangle (p=0.5).
    """
    if level == "none":
        return x
    return apply_augment(x, augment_params(len(x), x.shape[-2:], level, generator).to(x.device), level)


def augment_params(b: int, hw: tuple[int, int] | torch.Size, level: str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """float32 [B, PARAMS]: the random draws of `augment` for B images of size hw, made on the generator's device."""
    h, w = hw
    dev = generator.device if generator is not None else "cpu"

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev)

    p = torch.zeros(b, PARAMS, device=dev)
    half = torch.tensor([w / 2, h / 2], device=dev)
    p[:, 0:2] = torch.round((rand(b, 2) * 2 - 1) * 0.25 * half) / half  # 0.25 = 1/8 of the side, whole pixels
    p[:, 2] = torch.where(rand(b) < 0.5, -1.0, 1.0)
    p[:, 4:7] = 1.0  # scale, brightness, contrast: identity
    if level == "strong":
        p[:, 3] = (rand(b) * 2 - 1) * math.radians(15)
        p[:, 4] = 0.9 + rand(b) * 0.2
        p[:, 5:7] = 1 + (rand(b, 2) * 2 - 1) * 0.2
        p[:, 7:11] = rand(b, 4)
        p[:, 11] = (rand(b) < 0.5).float()  # erase with p=0.5
    return p


def apply_augment(x: torch.Tensor, params: torch.Tensor, level: str) -> torch.Tensor:
    """The view of each image in x (uint8 [B, C, H, W]) that its row of `params` describes: deterministic per
    image, whatever the batch, so a view can be remade anywhere from its parameters."""
    if level == "none":
        return x
    p = params.to(x.device)
    shift, flip, angle, scale = p[:, 0:2], p[:, 2], p[:, 3], p[:, 4]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]],
                                                                                      1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if level == "strong":
        brightness, contrast = p[:, 5, None, None, None], p[:, 6, None, None, None]
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean * brightness
        out = _erase(out, p[:, 7:11], p[:, 11] > 0)
    return out.round().clamp(0, 255).to(torch.uint8)


def _erase(x: torch.Tensor, r: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """Zero one rectangle (a quarter to a half of each side) per selected image."""
    b, _, h, w = x.shape
    eh, ew = (h * (0.25 + r[:, 0] * 0.25)).long(), (w * (0.25 + r[:, 1] * 0.25)).long()
    top, left = (r[:, 2] * (h - eh)).long(), (r[:, 3] * (w - ew)).long()
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    mask = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None]) &
            (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) & on[:, None, None])
    return x.masked_fill(mask[:, None], 0.0)


def to_input(x: torch.Tensor, spec: InputSpec, size: int) -> torch.Tensor:
    """uint8 [B, C, H, W] -> the float tensor a model expects: its channels, size and normalisation."""
    out = x.float().div_(255.0)
    channels = out.shape[1]
    if spec.channels == 3 and channels == 1:
        out = out.expand(-1, 3, -1, -1)
    elif spec.channels == 1 and channels == 3:
        out = (out * _constant((0.299, 0.587, 0.114), out.device)).sum(1, keepdim=True)
    if out.shape[-1] != size or out.shape[-2] != size:
        out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = _constant(tuple(_per_channel(spec.mean, spec.channels)), out.device)
    std = _constant(tuple(_per_channel(spec.std, spec.channels)), out.device)
    return (out - mean) / std


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A per-channel constant [1, C, 1, 1] on `device`, built once (not a host-to-device copy per batch)."""
    return torch.tensor(values, device=device)[None, :, None, None]


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values[:channels])


@dataclass
class Views:
    """Cached augmented views of images, kept as recipes: the images once plus each view's parameters.

    Memory is O(images) whatever the number of views (V × N × PARAMS floats on top of the images); the pixels of a
    view are remade per batch on the device that uses them, exactly the pixels the teacher scored (same device;
    within float rounding across devices).
    """

    x: torch.Tensor
    """uint8 [N, C, H, W]: the images."""
    params: torch.Tensor | None
    """float32 [V, N, PARAMS]: each view's augmentation; None = no augmentation, one view (the images)."""
    level: str

    @classmethod
    def make(cls, x: torch.Tensor, level: str, views: int, seed: int) -> "Views":
        """`views` seeded views of every image: the same on every machine for the same seed."""
        if level == "none":
            return cls(x, None, level)
        params = torch.stack([augment_params(len(x), x.shape[-2:], level, torch.Generator().manual_seed(
            seed * 1_000_003 + v)) for v in range(views)])
        return cls(x, params, level)

    @property
    def num_views(self) -> int:
        return 1 if self.params is None else self.params.shape[0]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: torch.Tensor) -> "Views":
        """The views of the images at idx."""
        return Views(self.x[idx], None if self.params is None else self.params[:, idx], self.level)

    def to(self, device) -> "Views":
        return Views(self.x.to(device), None if self.params is None else self.params.to(device), self.level)

    def pixels(self, view: torch.Tensor | int, idx: torch.Tensor | slice) -> torch.Tensor:
        """uint8 pixels of images idx, each in view `view` (an int, or one view index per image)."""
        if self.params is None:
            return self.x[idx]
        params = self.params[view, idx] if isinstance(view, torch.Tensor) else self.params[view][idx]
        return apply_augment(self.x[idx], params, self.level)

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + (0 if self.params is None else self.params.nbytes)

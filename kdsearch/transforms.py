"""Batched tensor transforms: augmentation (uint8 -> uint8) and per-model preprocessing.

Augmentation works on whole uint8 batches with one `grid_sample`, so it runs on
the GPU next to the model and a cached view is exactly the pixels both the
teacher and the student see.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import InputSpec


def augment(x: torch.Tensor, level: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random views of a uint8 batch [B, C, H, W].

    standard: shift up to 1/8 of the side, horizontal flip (p=0.5) — the usual
    CIFAR/ImageNet recipe. strong: also rotation (±15°), scale (0.9-1.1),
    brightness/contrast jitter (±20%) and one erased rectangle (p=0.5).
    """
    if level == "none":
        return x
    b, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device if generator else "cpu").to(dev)

    shift = (rand(b, 2) * 2 - 1) * 0.25  # normalised coords: 0.25 = 1/8 of the side
    shift = torch.round(shift * torch.tensor([w / 2, h / 2], device=dev)) / torch.tensor([w / 2, h / 2], device=dev)
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
    angle = torch.zeros(b, device=dev)
    scale = torch.ones(b, device=dev)
    if level == "strong":
        angle = (rand(b) * 2 - 1) * math.radians(15)
        scale = 0.9 + rand(b) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if level == "strong":
        brightness = 1 + (rand(b, 1, 1, 1) * 2 - 1) * 0.2
        contrast = 1 + (rand(b, 1, 1, 1) * 2 - 1) * 0.2
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean * brightness
        out = _erase(out, rand(b, 4), rand(b) < 0.5)
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
        out = (out * torch.tensor([0.299, 0.587, 0.114], device=out.device)[None, :, None, None]).sum(1, keepdim=True)
    if out.shape[-1] != size or out.shape[-2] != size:
        out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(_per_channel(spec.mean, spec.channels), device=out.device)[None, :, None, None]
    std = torch.tensor(_per_channel(spec.std, spec.channels), device=out.device)[None, :, None, None]
    return (out - mean) / std


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values[:channels])

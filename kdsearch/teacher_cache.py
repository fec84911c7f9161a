"""Teacher outputs, computed once per (teacher, data, views) and kept on disk.

With augmentation on, `teacher.cache_views` seeded augmented views of every
training image are made once; the teacher scores each view once; the student
then trains on exactly those pixels. Every run and search with the same key
reuses the file and does no teacher forward passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .config import Config
from ._io import fingerprint, load_cache, save_atomic
from .data import Dataset
from .teachers import Teacher
from .transforms import augment

log = logging.getLogger("kdsearch")


@dataclass
class TeacherTargets:
    views: torch.Tensor
    """uint8 [V, N, C, H, W]: the training images as the student will see them."""
    logits: torch.Tensor
    """float32 [V, N, K]: the teacher's logits for each view."""
    val_logits: torch.Tensor
    """float32 [N_val, K]: the teacher on the (unaugmented) validation split."""
    forward_passes: int
    """Teacher forward passes (images) this call made: 0 when the cache was hit."""


def num_views(cfg: Config) -> int:
    """Views per image: identical copies add nothing without augmentation."""
    return 1 if cfg.data.augment == "none" else cfg.teacher.cache_views


def make_views(x: torch.Tensor, level: str, views: int, seed: int, chunk: int = 1024) -> torch.Tensor:
    """Seeded augmented copies [V, N, ...] of uint8 images, made on the CPU so they are the same on every machine."""
    if level == "none":
        return x.unsqueeze(0)
    out = torch.empty((views, *x.shape), dtype=torch.uint8)
    for v in range(views):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + v)
        for i in range(0, len(x), chunk):
            out[v, i:i + chunk] = augment(x[i:i + chunk], level, gen)
    return out


def teacher_targets(cfg: Config, data: Dataset, teacher: Teacher, device, batch_size: int = 256) -> TeacherTargets:
    """Load or compute the teacher's logits for every cached view and the val split."""
    n_views = num_views(cfg)
    views_key = {"data": data.fingerprint, "augment": cfg.data.augment, "views": n_views, "seed": cfg.seed}
    path = cfg.output_dir / "teacher" / f"logits-{fingerprint({'teacher': teacher.fingerprint, **views_key})}.pt"
    views = make_views(data.train.x, cfg.data.augment, n_views, cfg.seed)
    cached = load_cache(path)
    if cached is not None and cached["logits"].shape[:2] == views.shape[:2]:
        log.info("teacher outputs from cache %s", path)
        return TeacherTargets(views, cached["logits"], cached["val_logits"], forward_passes=0)
    before = teacher.forward_passes
    logits = torch.stack([_score(teacher, v, device, batch_size) for v in views])
    val_logits = _score(teacher, data.val.x, device, batch_size)
    save_atomic({"logits": logits, "val_logits": val_logits}, path)
    log.info("teacher outputs computed (%d forward passes) and cached at %s", teacher.forward_passes - before, path)
    return TeacherTargets(views, logits, val_logits, forward_passes=teacher.forward_passes - before)


def _score(teacher: Teacher, x: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    return torch.cat([teacher.logits(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])

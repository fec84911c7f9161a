"""Teacher outputs, computed once per (teacher, data, views) and kept on disk.

With augmentation on, `teacher.cache_views` seeded augmented views of every
training image are drawn once, as augmentation parameters (`transforms.Views`);
each teacher (each ensemble member, separately) scores each view once; the
student then trains on exactly those pixels, remade per batch on its own
device. Memory stays O(images) whatever the number of views. Every run and
search with the same key reuses the files and does no teacher forward passes;
changing an ensemble's weights reuses them too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ._io import fingerprint, load_cache, save_atomic
from .config import Config
from .data import Dataset
from .teachers import Teacher, Teachers
from .transforms import Views, apply_augment

log = logging.getLogger("kdsearch")


@dataclass
class TeacherTargets:
    views: Views
    """The student's training images (`Dataset.pool()`: labeled and transfer) and the V views of each it will see."""
    logits: torch.Tensor
    """float32 [V, N, M, K]: each member's logits for each view (M = 1 for a single teacher)."""
    val_logits: torch.Tensor
    """float32 [N_val, M, K]: the members on the (unaugmented) validation split."""
    features: torch.Tensor | None
    """float32 [V, N, D]: penultimate features, members concatenated; None unless feature distillation may run."""
    forward_passes: int
    """Teacher forward passes (images) this call made: 0 when every cache was hit."""
    seconds: float
    """Wall seconds of those forward passes."""


def num_views(cfg: Config) -> int:
    """Views per image: identical copies add nothing without augmentation."""
    return 1 if cfg.data.augment == "none" else cfg.teacher.cache_views


def cached_views(cfg: Config, data: Dataset) -> Views:
    """The views of the student's training images that the teacher scores: seeded, the same on every machine."""
    return Views.make(data.pool().x, cfg.data.augment, num_views(cfg), cfg.seed)


def teacher_targets(cfg: Config, data: Dataset, teachers: Teachers, device, features: bool | None = None,
                    check: Callable[[torch.Tensor], None] | None = None) -> TeacherTargets:
    """Load or compute every member's logits (and features, when `features`) for every cached view and val.

    `check` sees the val logits [N_val, M, K] before anything new is written: a teacher it refuses (by raising)
    leaves no cache behind."""
    features = cfg.search.space.may_use_features if features is None else features
    views = cached_views(cfg, data)
    passes, seconds = teachers.forward_passes, teachers.seconds
    outs = [_member_targets(cfg, data, m, views, device, features) for m in teachers.members]
    val_logits = torch.stack([o["val_logits"] for o in outs], dim=1)
    if check is not None:
        check(val_logits)
    for out in outs:
        path = out.pop("_write", None)  # set where this call computed the outputs
        if path is not None:
            save_atomic(out, path)
            log.info("teacher outputs computed and cached at %s", path)
    return TeacherTargets(
        views,
        torch.stack([o["logits"] for o in outs], dim=2),
        val_logits,
        torch.cat([o["features"] for o in outs], dim=-1) if features else None,
        forward_passes=teachers.forward_passes - passes,
        seconds=teachers.seconds - seconds,
    )


# Bumped whenever the same seed would draw different views (the outputs on disk would then be for other pixels).
VIEWS_RECIPE = 2


def _member_targets(cfg: Config, data: Dataset, teacher: Teacher, views: Views, device, features: bool) -> dict:
    key = {"teacher": teacher.fingerprint, "data": data.pool_fingerprint, "augment": cfg.data.augment,
           "views": views.num_views, "seed": cfg.seed, "recipe": VIEWS_RECIPE}
    path = cfg.output_dir / "teacher" / f"logits-{fingerprint(key)}.pt"
    cached = load_cache(path)
    if (cached is not None and cached["logits"].shape[:2] == (views.num_views, len(views))
            and (not features or cached.get("features") is not None)):
        log.info("teacher outputs from cache %s", path)
        if cached.get("head") is not None and teacher.fit_head is not None:
            teacher.head.load_state_dict(cached["head"])  # the fitted probe, for anything scored later (a test split)
            teacher.fit_head = None
        teacher.identity.update(cached.get("fit") or {})
        return cached
    before = teacher.forward_passes
    need = features or teacher.fit_head is not None  # a probe is fitted on the features of the first view
    scored = [_score(teacher, views, device, need, v) for v in range(views.num_views)]
    val_logits, val_feats = _score(teacher, Views(data.val.x, None, "none"), device, need)
    logits = torch.stack([s[0] for s in scored])
    feats = torch.stack([s[1] for s in scored]) if need else None
    fit = None
    if teacher.fit_head is not None:
        fit = _fit(teacher, feats[0][:len(data.train.y)], data.train.y)  # fitted here: on every train label
        with torch.no_grad():
            dev = teacher.head.weight.device
            logits = torch.stack([teacher.head(f.to(dev)).float().cpu() for f in feats])
            val_logits = teacher.head(val_feats.to(dev)).float().cpu()
    head = {k: v.detach().cpu() for k, v in teacher.head.state_dict().items()} if fit is not None else None
    log.info("teacher outputs computed: %d forward passes", teacher.forward_passes - before)
    return {"logits": logits, "val_logits": val_logits, "features": feats if features else None, "fit": fit,
            "head": head, "_write": path}


def fit_heads(teachers: Teachers, data: Dataset, device) -> None:
    """Fit the heads that are fitted here (linear probes) on the unaugmented train split: for a live teacher."""
    for m in teachers.members:
        if m.fit_head is not None:
            _fit(m, _score(m, Views(data.train.x, None, "none"), device, True)[1], data.train.y)


def _fit(teacher: Teacher, feats: torch.Tensor, y: torch.Tensor) -> dict:
    fit = teacher.fit_head(feats, y)
    teacher.fit_head = None
    teacher.identity.update(fit)
    log.info("teacher head fitted: %s", fit)
    return fit


def _score(teacher: Teacher, views: Views, device, features: bool,
           view: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher on one view of every image, a batch at a time; the view's pixels are made on `device`."""
    bs, outs = teacher.batch_size, []
    for i in range(0, len(views), bs):
        xb = views.x[i:i + bs].to(device)
        if views.params is not None:
            xb = apply_augment(xb, views.params[view, i:i + bs], views.level)
        outs.append(teacher.outputs(xb, features))
    logits = torch.cat([o[0].cpu() for o in outs])
    return logits, (torch.cat([o[1].cpu() for o in outs]) if features else None)

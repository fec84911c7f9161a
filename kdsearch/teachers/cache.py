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

from ..config import Config
from ..core.io import fingerprint, load_cache, save_atomic
from ..data.dataset import Dataset
from ..data.transforms import Views, apply_augment
from . import Teacher, Teachers

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


# Bumped whenever the same key would give other outputs (other views for the same seed, another probe rule).
VIEWS_RECIPE = 3  # 3: a probe fitted on unaugmented images, out-of-fold outputs on them


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
    need = features or teacher.fit_head is not None
    scored = [_score(teacher, views, device, need, v) for v in range(views.num_views)]
    val_logits, val_feats = _score(teacher, Views(data.val.x, None, "none"), device, need)
    logits = torch.stack([s[0] for s in scored])
    feats = torch.stack([s[1] for s in scored]) if need else None
    fit = None
    if teacher.fit_head is not None:
        n = len(data.train.y)
        # Fitted on the unaugmented train images, whatever the views (and as a live teacher's is: fit_heads), so the
        # teacher is the same whether or not its outputs are cached; with augment none, view 0 is those images.
        plain = feats[0][:n] if views.params is None else _plain_features(teacher, data, device)
        fit, cross = _fit(teacher, plain, data.train.y)
        with torch.no_grad():
            dev = teacher.head.weight.device
            logits = torch.stack([teacher.head(f.to(dev)).float().cpu() for f in feats])
            val_logits = teacher.head(val_feats.to(dev)).float().cpu()
            in_sample = teacher.head(plain.to(dev)).float().cpu()
        for v in range(len(feats)):  # the probe's own training images get out-of-fold outputs (cross-fitting)
            logits[v, :n] = cross.logits(feats[v][:n])
        fit.update(probe_confidence(in_sample, cross.logits(plain), data.train.y, val_logits, data.val.y))
        log.info("teacher probe on its own train images: in-sample mean p(true) %.3f, NLL %.3f; out-of-fold (what the "
                 "student learns from) %.3f, %.3f; val %.3f, %.3f", fit["probe_train_p_true_in_sample"],
                 fit["probe_train_nll_in_sample"], fit["probe_train_p_true_out_of_fold"],
                 fit["probe_train_nll_out_of_fold"], fit["probe_val_p_true"], fit["probe_val_nll"])
        teacher.identity.update(fit)
    head = {k: v.detach().cpu() for k, v in teacher.head.state_dict().items()} if fit is not None else None
    log.info("teacher outputs computed: %d forward passes", teacher.forward_passes - before)
    return {"logits": logits, "val_logits": val_logits, "features": feats if features else None, "fit": fit,
            "head": head, "_write": path}


def probe_confidence(in_sample: torch.Tensor, out_of_fold: torch.Tensor, y: torch.Tensor, val_logits: torch.Tensor,
                     val_y: torch.Tensor) -> dict[str, float]:
    """Mean p(true class) and NLL of a probe's outputs: on its own train images in-sample and out-of-fold, and on
    val. Out-of-fold should look like val; in-sample is what a student would have learned from without
    cross-fitting."""
    def pair(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        logp = torch.log_softmax(logits.double(), 1).gather(1, labels[:, None]).squeeze(1)
        return float(logp.exp().mean()), float(-logp.mean())

    out = {}
    for name, (lg, lb) in {"train_{}_in_sample": (in_sample, y), "train_{}_out_of_fold": (out_of_fold, y),
                           "val_{}": (val_logits, val_y)}.items():
        p, nll = pair(lg, lb)
        out[f"probe_{name.format('p_true')}"], out[f"probe_{name.format('nll')}"] = p, nll
    return out


def _plain_features(teacher: Teacher, data: Dataset, device) -> torch.Tensor:
    return _score(teacher, Views(data.train.x, None, "none"), device, True)[1]


def fit_heads(teachers: Teachers, data: Dataset, device) -> None:
    """Fit the heads that are fitted here (linear probes) on the unaugmented train split: for a live teacher."""
    for m in teachers.members:
        if m.fit_head is not None:
            fit, _ = _fit(m, _plain_features(m, data, device), data.train.y)
            m.identity.update(fit)


def _fit(teacher: Teacher, feats: torch.Tensor, y: torch.Tensor):
    fit, cross = teacher.fit_head(feats, y)
    teacher.fit_head = None
    log.info("teacher head fitted: %s", fit)
    return dict(fit), cross


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

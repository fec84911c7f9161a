"""teacher.source train: a teacher trained here on the train split, with early stopping, cached under output.dir."""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..config import Config, InputSpec, TrainTeacher
from ..core.io import fingerprint, load_cache, save_atomic
from ..data.dataset import Dataset, val_subset
from ..engine.batches import epoch_generator, live_batches
from ..engine.loop import evaluate, train_one_epoch
from ..losses import cross_entropy_loss
from ..models.students import final_linear, model_from_arch
from .base import SOURCES, Teacher, teacher_spec

log = logging.getLogger("kdsearch")

WEIGHT_DECAY = 1e-4  # AdamW's decoupled decay for a teacher trained from scratch: the usual CIFAR/ImageNet value


@SOURCES.register("train")
def _build_trained(t: TrainTeacher, cfg: Config, data: Dataset, device) -> Teacher:
    spec = teacher_spec(t, cfg)
    settings = t.model_dump(mode="json", exclude={"cache", "cache_views", "dtype", "resources"})  # what training sees
    fp = fingerprint({"teacher": settings, "spec": spec.model_dump(mode="json"), "data": data.fingerprint,
                      "augment": cfg.data.augment, "seed": cfg.seed, "early_stop_val": cfg.search.rung_val_size})
    path = cfg.output_dir / "teacher" / f"trained-{t.arch.replace(':', '_')}-{fp}.pt"
    torch.manual_seed(cfg.seed)  # the initial weights are the seed's: two runs of one config train one teacher
    model = model_from_arch(t.arch, data.num_classes, spec.size).to(device)
    identity = {"source": "train", "arch": t.arch, "file": str(path), "fingerprint": fp}
    saved = load_cache(path)
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
    else:
        fit_teacher(model, t, spec, data, cfg.data.augment, cfg.seed, device,
                    val_idx=val_subset(data, cfg.search.rung_val_size, cfg.seed))
        save_atomic({"state_dict": model.state_dict()}, path)
    return Teacher(model.eval(), spec, fp, identity, head=final_linear(model))


def fit_teacher(model: nn.Module, t: TrainTeacher, spec: InputSpec, data: Dataset, augment_level: str, seed: int,
                device, on_epoch: Callable[[int, dict], None] | None = None,
                val_idx: torch.Tensor | None = None) -> dict[str, float]:
    """Cross-entropy on the train split; keeps the weights of the best val accuracy; stops after `patience` flat epochs.

    `val_idx`: the val images that decide (the rung subset); None = all of them."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=WEIGHT_DECAY)
    loss = cross_entropy_loss()
    x, y = data.train.x.to(device), data.train.y.to(device)
    val_x, val_y = (data.val.x, data.val.y) if val_idx is None else (data.val.x[val_idx], data.val.y[val_idx])
    best, best_state, flat = -1.0, None, 0
    best_metrics: dict[str, float] = {}
    for epoch in range(t.epochs):
        batches = live_batches(x, y, t.batch_size, augment_level, spec, spec.size, epoch_generator(seed, epoch))
        stats = train_one_epoch(model, batches, loss, optimizer)
        m = evaluate(model, val_x, val_y, spec, spec.size, data.num_classes, device)
        log.info("teacher epoch %d: train_loss %.4f val_accuracy %.4f (%.1fs)", epoch + 1, stats.train_loss,
                 m.accuracy, stats.seconds)
        if on_epoch:
            on_epoch(epoch, {"train_loss": stats.train_loss, "val_accuracy": m.accuracy, "val_macro_f1": m.macro_f1})
        if m.accuracy > best:
            best, flat = m.accuracy, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_metrics = {"val_accuracy": m.accuracy, "val_macro_f1": m.macro_f1, "epochs": epoch + 1}
        else:
            flat += 1
            if flat >= t.patience:
                break
    model.load_state_dict(best_state)
    return best_metrics



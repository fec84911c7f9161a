"""`kdsearch train`: one distillation run with fixed hyperparameters, no Ray.

Writes `output.dir/train/` (student.pt and student.torchscript.pt in the run's format, as its last epoch scored
them; metrics.json, config.yaml) atomically and logs the run to MLflow.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..config import Config
from ..core.io import atomic_dir, json_safe
from ..models import deployed
from ..models.deployed import WEIGHTS_FILE, cast_state_dict
from ..models.sizes import student_size
from ..preflight import Plan, preflight
from ..tracking import check_store, log_train_run
from .distiller import Hparams, Prepared, default_hparams, prepare, train_student


@dataclass
class TrainResult:
    hparams: Hparams
    teacher_metrics: dict[str, float]
    history: list[dict[str, Any]]
    out_dir: Path
    run_id: str
    seconds: float


def run_train(cfg: Config, device: torch.device, on_start: Callable[[Hparams, Prepared], None] | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None, plan: Plan | None = None) -> TrainResult:
    start = time.perf_counter()
    # config, data, teacher files, size limit, output.dir, MLflow: before any write (the command's plan)
    plan = plan or preflight(cfg, search=False)
    prepared = prepare(cfg, device, plan=plan)
    check_store(cfg)
    hp = default_hparams(cfg, prepared.pairs)
    if on_start:
        on_start(hp, prepared)
    distiller, history = train_student(cfg, hp, prepared, device, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    size = student_size(hp.student, prepared.data.num_classes, cfg.data.image_size)
    fmt, shipped_bytes = distiller.format, len(distiller.shipped) if distiller.shipped else distiller.file_bytes
    summary = {
        **{f"teacher_{k}": v for k, v in prepared.teacher_metrics.items()},  # incl. the class-order check's
        "baseline_val_macro_f1": prepared.baseline_metrics["val_macro_f1"],
        "teacher_forward_passes": prepared.teacher.forward_passes,
        "teacher_seconds": prepared.teacher.seconds,
        "wall_seconds": seconds,
    }
    report = {
        "hparams": hp.as_dict(),
        "final": dict(history[-1]),
        "history": history,
        "teacher": {**prepared.teacher.identity, **prepared.teacher_metrics},
        "student": {"name": hp.student, "params": size.params, "precision": fmt, "size_bytes": shipped_bytes},
        "diverged_at_epoch": history[-1]["epoch"] if history[-1]["diverged"] else None,
        "class_names": prepared.data.class_names,
        "images": prepared.data.counts(),
        "data_fingerprint": prepared.data.fingerprint,
        **summary,
    }
    out = cfg.output_dir / "train"
    with atomic_dir(out) as tmp:
        if distiller.shipped is not None:  # the last epoch made the files that ship, and scored them
            torch.save(distiller.weights, tmp / WEIGHTS_FILE)
            (tmp / deployed.FILE).write_bytes(distiller.shipped)
        else:  # it diverged before its last epoch: its float weights, for debugging
            torch.save(cast_state_dict(distiller.model, "fp32"), tmp / WEIGHTS_FILE)
        (tmp / "metrics.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
        tags = {"student": hp.student, "format": fmt, "size_mb": f"{shipped_bytes / 1e6:.3f}",
                "teacher": prepared.teacher.name,
                "data_fingerprint": prepared.data.fingerprint}
        run_id = log_train_run(cfg, hp.as_dict(), tags, history, summary, prepared.data.class_names, tmp)
    return TrainResult(hp, prepared.teacher_metrics, history, out, run_id, seconds)

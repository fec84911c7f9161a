"""Checks that run before any work and write nothing: a typo fails in a second, not after an hour.

`preflight(cfg)` is called by `validate`, `run`, `train`, `train-teacher` and `report`, once: what it finds is
the command's `Plan`, handed down so that nothing is found twice. Each failure is a
KdsearchError (exit 2) naming the key or path and the fix. What needs real
work to know (decoding every image, loading a hub model) is checked where that
work happens, still before any output is written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import CheckpointTeacher, Config, EnsembleTeacher, TorchscriptTeacher, TrackingConfig, TrainTeacher
from .core.errors import KdsearchError
from .data.sources import SourceListing, list_sources
from .models.sizes import Deployments, arch_params, select_deployments, student_size
from .runtime.locks import check_output_folder

HEADROOM = 1.2  # free disk wanted over the estimate of what a run writes


@dataclass(frozen=True)
class Plan:
    """What the checks found, made once per command: `validate` prints it, and `run`, `train`, `train-teacher` and
    `report` hand it down (to the data load, the decode and the size filter) instead of finding it again."""

    sources: SourceListing
    """The data's files (each folder listed once), their counts and the class table read from their labels."""
    deployments: Deployments
    """The (student, format) pairs that fit the size limit, with each pair's file size, measured once."""
    disk: dict[str, int]
    """What the run will write under output.dir, in bytes, by kind (`disk_estimate`)."""


def preflight(cfg: Config, search: bool = True, tracked: bool = True) -> Plan:
    """Every check below, each fact found once; returns the plan. `search`: the disk a search needs (False: `train`,
    `train-teacher`, `report`); `tracked`: the command logs to MLflow, whose store must answer (`train-teacher`
    does not)."""
    sources = list_sources(cfg.data)
    classes = len(sources.classes.names)
    if classes < 2:
        raise KdsearchError(f"data.root {cfg.data.root}: found {classes} class; a classifier needs at least two "
                            "(one subfolder or label per class)")
    check_teacher_files(cfg, classes)
    deployments = select_deployments(cfg, classes)
    disk = disk_estimate(cfg, sources, deployments.students, search)
    check_output_dir(cfg, disk)
    if tracked:
        check_store_reachable(cfg.tracking)
    return Plan(sources, deployments, disk)


def disk_estimate(cfg: Config, sources: SourceListing, students: list[str], search: bool = True) -> dict[str, int]:
    """Bytes a run writes under output.dir, from the config's real numbers (documented in docs/troubleshooting.md):

    - data cache: every image once, uint8 RGB at image_size (labeled and data.unlabeled);
    - teacher outputs: cache_views x pool images x members x classes float32 logits, plus val;
    - teacher checkpoint: a `train` teacher's float32 weights;
    - trial checkpoints: each trial keeps its latest one: a student's weights and AdamW's two moments (3 x float32
      parameters, averaged over the fitting students), times search.num_samples;
    - export: student.pt, TorchScript, ONNX, and the copy MLflow registers (4 x the largest fitting student).

    `search=False` (`kdsearch train`): no trial checkpoints; student.pt and its copy in MLflow as the export.
    """
    t, classes = cfg.teacher, len(sources.classes.names)
    members = len(t.members) if isinstance(t, EnsembleTeacher) else 1
    labeled = sources.data.images
    extra = sources.unlabeled.images if sources.unlabeled else 0
    sizes = [student_size(s, classes, cfg.data.image_size).fp32_bytes for s in students] or [0]
    out = {
        "data cache": (labeled + extra) * 3 * cfg.data.image_size ** 2,
        "teacher outputs": (t.cache_views * (labeled + extra) + labeled) * members * classes * 4 if t.cache else 0,
        "teacher checkpoint": _train_teacher_bytes(cfg, classes),
        "trial checkpoints": 3 * sum(sizes) / len(sizes) * cfg.search.num_samples if search else 0,
        "export": (4 if search else 2) * max(sizes),
    }
    return {k: int(v * HEADROOM) for k, v in out.items()}


def _train_teacher_bytes(cfg: Config, classes: int) -> int:
    """A `train` teacher's float32 weights, counted on PyTorch's meta device (no memory, no download); 0 for an
    arch that cannot be built there (its check comes later)."""
    if not isinstance(cfg.teacher, TrainTeacher):
        return 0
    return 4 * (arch_params(cfg.teacher.arch, classes, cfg.data.image_size) or 0)


def check_output_dir(cfg: Config, need: dict[str, int] | None = None) -> None:
    """output.dir (or its nearest existing parent) is a writable folder with room for what the run writes."""
    out = cfg.output_dir
    base = check_output_folder(out)
    if not need:
        return
    free = shutil.disk_usage(base).free
    if sum(need.values()) > free:
        parts = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in need.items() if v)
        raise KdsearchError(f"output.dir {out}: {free / 1e6:.0f} MB free, this run writes about "
                            f"{sum(need.values()) / 1e6:.0f} MB ({parts}); free some space, point output.dir "
                            "elsewhere, or lower data.image_size / search.num_samples")


def check_teacher_files(cfg: Config, num_classes: int) -> None:
    """Checkpoint weights load (weights_only) into their architecture with `num_classes` outputs, checked on the
    meta device with the file memory-mapped; TorchScript files exist."""
    t = cfg.teacher
    members = [(f"teacher.members.{i}", m) for i, m in enumerate(t.members)] if isinstance(t, EnsembleTeacher) \
        else [("teacher", t)]
    for where, m in members:
        if isinstance(m, CheckpointTeacher):
            from .teachers import load_checkpoint_model, teacher_spec  # only here: teachers import the data stack

            load_checkpoint_model(m, num_classes, teacher_spec(m, cfg).size, where, check_only=True)
        elif isinstance(m, TorchscriptTeacher) and not Path(m.path).is_file():
            raise KdsearchError(f"{where}.path {m.path}: file not found; give a model saved with torch.jit.save")


def check_store_reachable(tracking: TrackingConfig) -> None:
    """The MLflow store can be reached and written, checked without creating anything."""
    uri = tracking.uri
    hint = "set tracking.uri (or MLFLOW_TRACKING_URI) to a reachable store, e.g. sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        target = db if db.exists() else db.parent
        if not target.is_dir() and not db.exists():  # sqlite creates the file, never its folder
            raise KdsearchError(f"tracking.uri {uri}: folder {db.parent} does not exist; create it or {hint}")
        if not os.access(target, os.W_OK):
            raise KdsearchError(f"tracking.uri {uri}: {target} is not writable; {hint}")
    elif tracking.remote:
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as e:
            reason = type(e).__name__ if e.response is None else f"HTTP {e.response.status_code}"
            raise KdsearchError(f"tracking.uri {uri}: no MLflow server answers ({reason}); start one "
                                f"(mlflow server --host 127.0.0.1) or {hint}") from None

"""Checks that run before any work and write nothing: a typo fails in a second, not after an hour.

`preflight(cfg)` is called by `run`, `train` and `validate`. Each failure is a
KdsearchError (exit 2) naming the key or path and the fix. What needs real
work to know (decoding every image, loading a hub model) is checked where that
work happens, still before any output is written.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from .config import CheckpointTeacher, Config, EnsembleTeacher, TorchscriptTeacher
from .errors import KdsearchError
from .locks import check_output_folder
from .sources import (
    check_sources,
    check_unlabeled,
    empty_class_folders,
    num_classes_hint,
    source_image_count,
    unlabeled_image_count,
)

HEADROOM = 1.2  # free disk wanted over the data cache's estimated size


def preflight(cfg: Config) -> tuple[list[str], list]:
    """Every check below; returns (students that fit, those over the limit) for callers that report them."""
    check_sources(cfg.data)
    empty_class_folders(cfg.data)  # warns
    if cfg.data.unlabeled is not None:
        check_unlabeled(cfg.data.unlabeled)
    classes = num_classes_hint(cfg.data)
    if classes < 2:
        raise KdsearchError(f"data.root {cfg.data.root}: found {classes} class; a classifier needs at least two "
                            "(one subfolder or label per class)")
    check_teacher_files(cfg, classes)
    from .distill import select_students

    students = select_students(cfg, classes)
    check_output_dir(cfg)
    check_store_reachable(cfg.tracking.uri)
    return students


def check_output_dir(cfg: Config) -> None:
    """output.dir (or its nearest existing parent) is a writable folder with room for the data cache."""
    out = cfg.output_dir
    base = check_output_folder(out)
    images = source_image_count(cfg.data) + (unlabeled_image_count(cfg.data.unlabeled) if cfg.data.unlabeled else 0)
    need = images * 3 * cfg.data.image_size ** 2 * HEADROOM  # uint8 RGB per image
    free = shutil.disk_usage(base).free
    if need > free:
        raise KdsearchError(f"output.dir {out}: {free / 1e9:.1f} GB free, the decoded images need about "
                            f"{need / 1e9:.1f} GB; free some space, point output.dir elsewhere, or lower "
                            f"data.image_size")


def check_teacher_files(cfg: Config, num_classes: int) -> None:
    """Checkpoint weights load (weights_only) into their architecture with `num_classes` outputs; TorchScript
    files exist."""
    from .teachers import load_checkpoint_model, teacher_spec

    t = cfg.teacher
    members = [(f"teacher.members.{i}", m) for i, m in enumerate(t.members)] if isinstance(t, EnsembleTeacher) \
        else [("teacher", t)]
    for where, m in members:
        if isinstance(m, CheckpointTeacher):
            load_checkpoint_model(m, num_classes, teacher_spec(m, cfg).size, where)
        elif isinstance(m, TorchscriptTeacher) and not Path(m.path).is_file():
            raise KdsearchError(f"{where}.path {m.path}: file not found; give a model saved with torch.jit.save")


def check_store_reachable(uri: str) -> None:
    """The MLflow store can be reached and written, checked without creating anything."""
    hint = "set tracking.uri (or MLFLOW_TRACKING_URI) to a reachable store, e.g. sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        target = db if db.exists() else db.parent
        if not target.is_dir() and not db.exists():  # sqlite creates the file, never its folder
            raise KdsearchError(f"tracking.uri {uri}: folder {db.parent} does not exist; create it or {hint}")
        if not os.access(target, os.W_OK):
            raise KdsearchError(f"tracking.uri {uri}: {target} is not writable; {hint}")
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise KdsearchError(f"tracking.uri {uri}: no MLflow server answers ({reason}); start one "
                                f"(mlflow server --host 127.0.0.1) or {hint}") from None

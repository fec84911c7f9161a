"""The teacher step, once per command: the teacher built, checked against the data (its class order, the
majority-class baseline, teacher.min_val_macro_f1) and its outputs cached.

`teach` runs here or, for a driver without a GPU, as a Ray task (`worker.py`); `distill.prepare` and
`kdsearch train-teacher` call it.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch

from ..config import Config
from ..core.errors import KdsearchError
from ..data.dataset import Dataset
from ..engine.loop import Metrics, classification_metrics
from .base import Teachers, build_teachers
from .cache import TeacherTargets, fit_heads, teacher_targets

log = logging.getLogger("kdsearch")

TEACHER_MARGIN = 0.05  # a teacher within this much macro-F1 of the majority-class baseline gets a warning


class Taught(NamedTuple):
    teacher: Teachers
    targets: TeacherTargets | None
    """Cached teacher outputs; None when teacher.cache is false (the teacher runs live)."""
    scores: dict[str, float]
    """The teacher's val figures (and its class-order recalls)."""
    baseline: Metrics
    """The majority-class baseline on val, computed once here for the checks and for `Prepared`."""


def teach(cfg: Config, data: Dataset, device) -> Taught:
    """The teacher, checked against the data and the majority baseline, and its cached outputs (None when it runs
    live). Nothing is cached for a teacher the check refuses."""
    teacher = build_teachers(cfg, data, device)
    if cfg.search.space.may_use_features and not teacher.has_features:
        kinds = ", ".join(m.identity["source"] for m in teacher.members if m.head is None)
        raise KdsearchError(f"search.space.feature_weight: the teacher ({kinds}) exposes no penultimate features "
                            "(TorchScript, or a model whose last linear layer is not its output); "
                            "set feature_weight: 0")
    scores: dict[str, float] = {}
    baseline = majority_baseline(data)

    def score_and_check(val: torch.Tensor) -> None:
        m, _ = teacher.score(val, data.val.y, data.num_classes)
        scores.update(val_accuracy=m.accuracy, val_macro_f1=m.macro_f1)
        scores.update(check_class_order(cfg, teacher, val, data))
        check_teacher(cfg, scores, baseline)

    if cfg.teacher.cache:
        targets = teacher_targets(cfg, data, teacher, device, check=score_and_check)
    else:
        targets = None
        fit_heads(teacher, data, device)
        score_and_check(teacher.predict(data.val.x, device))
    return Taught(teacher, targets, scores, baseline)


CLASS_ORDER_MARGIN = 0.3
"""A class whose val images go to another teacher output by this much more recall than to its own output is taken
to be in another class order (per class, so a swap of two small classes shows as plainly as one of two big ones)..."""
CLASS_ORDER_MIN_IMAGES = 10
"""...when the classes that moved so hold at least this many val images together (fewer could move by chance;
eleven classes of 3 val images each, all moved by one place, cannot)..."""
CLASS_ORDER_MIN_MATCHED = 0.5
"""...and the matching's mean per-class recall reaches this: an untrained or weak teacher's arbitrary outputs can
always be matched to the classes somewhat better than their own order, which says nothing about a permutation."""


def check_class_order(cfg: Config, teacher: Teachers, logits: torch.Tensor, data: Dataset) -> dict[str, float]:
    """Each member not trained here, scored on val by per-class recall in its own output order and in the one-to-one
    matching of its outputs to the classes that maximises the mean recall (scipy's linear_sum_assignment on the
    row-normalised confusion matrix); exit 2 naming the moved classes when classes that gain CLASS_ORDER_MARGIN
    recall there hold CLASS_ORDER_MIN_IMAGES val images together, unless teacher.allow_class_mismatch. Returns
    the mean recalls (balanced accuracies; MLflow logs them with the teacher's scores)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import confusion_matrix

    out: dict[str, float] = {}
    y = data.val.y.numpy()
    k, outputs = data.num_classes, logits.shape[-1]
    for j, member in enumerate(teacher.members):
        if member.identity.get("source") == "train":
            continue  # trained here on these labels: its output i is class i by construction
        pred = logits[:, j].argmax(1).numpy()
        confusion = confusion_matrix(y, pred, labels=range(max(k, outputs)))[:k, :outputs]  # data class x output
        counts = confusion.sum(1)
        recall = confusion / np.maximum(counts, 1)[:, None]
        present = counts > 0
        rows, cols = linear_sum_assignment(-recall)
        own_recall = np.array([recall[c, c] if c < outputs else 0.0 for c in range(k)])
        matched_recall = np.zeros(k)
        matched_recall[rows] = recall[rows, cols]
        identity, matched = float(own_recall[present].mean()), float(matched_recall[present].mean())
        suffix = "" if len(teacher.members) == 1 else f"_{j}"
        out.update({f"val_mean_recall_own_order{suffix}": identity,
                    f"val_mean_recall_best_matching{suffix}": matched})
        moved = [(c, r) for r, c in zip(rows, cols) if r != c and recall[r, c] - own_recall[r] >= CLASS_ORDER_MARGIN]
        evidence = sum(int(counts[r]) for _, r in moved)
        permuted = evidence >= CLASS_ORDER_MIN_IMAGES and matched >= CLASS_ORDER_MIN_MATCHED
        if permuted and not cfg.teacher.allow_class_mismatch:
            said = ", ".join(f"teacher output {c} looks like data class {data.class_names[r]!r} (recall "
                             f"{recall[r, c]:.2f} there, {own_recall[r]:.2f} at output {r})" for c, r in moved[:4])
            raise KdsearchError(
                f"teacher{'' if suffix == '' else f'.members.{j}'}: its outputs are in another class order than the "
                f"data's: {said}{', ...' if len(moved) > 4 else ''} (val mean per-class recall {identity:.3f} as it "
                f"is, {matched:.3f} matched). Order data.class_names (or teacher.label_map for a Hugging Face "
                "classifier) as the teacher was trained, or set teacher.allow_class_mismatch: true")
    return out


def majority_baseline(data: Dataset) -> Metrics:
    """Every val image predicted as the train split's most frequent class. Counted on every train label, not the
    student's: under data.label_budget the labeled counts tie by design and say nothing of which class is common."""
    pred = torch.full_like(data.val.y, int(torch.bincount(data.train.y, minlength=data.num_classes).argmax()))
    return classification_metrics(data.val.y.numpy(), pred.numpy(), data.num_classes, float("nan"))


def check_teacher(cfg: Config, teacher: dict[str, float], baseline: Metrics) -> None:
    """Say how the teacher compares with the majority baseline; refuse one under teacher.min_val_macro_f1."""
    log.info("teacher val accuracy %.4f, macro-F1 %.4f; majority-class baseline accuracy %.4f, macro-F1 %.4f",
             teacher["val_accuracy"], teacher["val_macro_f1"], baseline.accuracy, baseline.macro_f1)
    floor = cfg.teacher.min_val_macro_f1
    if floor is not None and teacher["val_macro_f1"] < floor:
        raise KdsearchError(f"teacher.min_val_macro_f1 {floor:g}: the teacher scores val macro-F1 "
                            f"{teacher['val_macro_f1']:.4f} (majority-class baseline {baseline.macro_f1:.4f}); "
                            "distillation would copy its mistakes. Check that its classes are in the data's order "
                            "and that it was trained for these images, or lower teacher.min_val_macro_f1")
    if teacher["val_macro_f1"] <= baseline.macro_f1 + TEACHER_MARGIN:
        log.warning("the teacher (val macro-F1 %.4f) is no better than predicting the majority class (%.4f): "
                    "distillation will copy its mistakes. Check its class order and input preprocessing; set "
                    "teacher.min_val_macro_f1 to stop such runs", teacher["val_macro_f1"], baseline.macro_f1)

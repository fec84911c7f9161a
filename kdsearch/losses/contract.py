"""The contract's loss, `(1 - alpha) * CE_w(s, y) + alpha * D(s, t)`, and its class weights w."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.labels import UNLABELED
from .terms import TERMS


def class_weights(counts: torch.Tensor, power: float) -> torch.Tensor:
    """w_c ∝ (1/n_c)^power, normalised to mean 1. power 0 = unweighted, 1 = balanced.

    A class absent from the counts gets the weight of a class with one image.
    """
    w = counts.clamp(min=1).double().reciprocal().pow(power)
    return (w / w.mean()).float()


class DistillationLoss(nn.Module):
    """The contract's loss, over a batch of labeled and transfer images::

        loss = (1 - alpha) * (n_L / B) * CE_w(s_L, y_L) + (1 / B) * sum_i c_i * D_i,
        c_i = alpha for a labeled image, 1 for a transfer image

    CE_w is torch's class-weighted mean over the batch's labeled images (L);
    with no transfer images this is exactly (1 - alpha) * CE_w + alpha * mean D.
    alpha = 0 is the student without distillation and needs no teacher.
    """

    def __init__(self, term: nn.Module | None, alpha: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.term, self.alpha = term, float(alpha)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, student: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        labeled = target != UNLABELED
        n_labeled = int(labeled.sum())
        if n_labeled == len(target):
            ce = F.cross_entropy(student, target, weight=self.weight)
        elif n_labeled:
            ce = F.cross_entropy(student[labeled], target[labeled], weight=self.weight) * (n_labeled / len(target))
        else:
            ce = student.sum() * 0.0  # a batch of transfer images only: no CE, a zero gradient from it
        if self.alpha == 0.0 or self.term is None:
            return ce
        if teacher is None:
            raise ValueError("a distillation loss with alpha > 0 needs teacher logits")
        if n_labeled < len(target):  # transfer images: the teacher's prediction stands in for the label
            predicted = self.term.teacher_log_probs(teacher, 1.0).argmax(-1)
            target = torch.where(labeled, target, predicted)
        coef = 1.0 - (1.0 - self.alpha) * labeled.to(student.dtype)  # alpha for a labeled image, 1 for a transfer one
        return (1.0 - self.alpha) * ce + (coef * self.term(student, teacher, target)).mean()


def create_loss(name: str, alpha: float, temperature: float = 1.0, weight: torch.Tensor | None = None,
                teacher_weights: torch.Tensor | None = None, **term_kwargs) -> DistillationLoss:
    """`(1 - alpha) * CE_w + alpha * D` with the registered term `name` (kd | dist | kd_ls | dkd)."""
    term = TERMS[name](temperature=temperature, teacher_weights=teacher_weights, **term_kwargs)
    return DistillationLoss(term, alpha, weight)


def cross_entropy_loss(weight: torch.Tensor | None = None) -> DistillationLoss:
    """Plain (class-weighted) cross-entropy: training a teacher, or a student with alpha 0."""
    return DistillationLoss(None, 0.0, weight)

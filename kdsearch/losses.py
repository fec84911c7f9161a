"""Distillation losses: small registered modules; the training loop never knows which one runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str):
    def wrap(cls):
        _LOSSES[name] = cls
        return cls
    return wrap


def create_loss(name: str, **kwargs) -> nn.Module:
    return _LOSSES[name](**kwargs)


def class_weights(counts: torch.Tensor, power: float) -> torch.Tensor:
    """w_c ∝ (1/n_c)^power, normalised to mean 1. power 0 = unweighted, 1 = balanced.

    A class absent from the counts gets the weight of a class with one image.
    """
    w = counts.clamp(min=1).double().reciprocal().pow(power)
    return (w / w.mean()).float()


def teacher_log_probs(teacher: torch.Tensor, temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(t/T) of one teacher [B, K], or of an ensemble's members [B, M, K] combined as

        p = sum_m w_m softmax(t_m / T)       (weights normalised to sum 1)

    Averaging probabilities, not logits, keeps the ensemble's own predictive
    distribution: a member that is unsure stays unsure instead of being
    sharpened by another member's large logits (Hinton et al. 2015, sec. 1).
    """
    if teacher.ndim == 2:
        return F.log_softmax(teacher / temperature, dim=-1)
    members = teacher.shape[1]
    if members == 1:
        return F.log_softmax(teacher[:, 0] / temperature, dim=-1)
    w = torch.full((members,), 1.0 / members, device=teacher.device) if weights is None else weights / weights.sum()
    return torch.logsumexp(F.log_softmax(teacher / temperature, dim=-1) + w.log()[None, :, None], dim=1)


@register_loss("kd")
class KDLoss(nn.Module):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)::

        loss = (1 - alpha) * CE_w(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))

    CE_w is cross-entropy with per-class weights (torch's weighted mean over the
    batch); the KL term is averaged over the batch. T^2 keeps the gradient scale
    of the soft term independent of T. alpha = 0 is the student without
    distillation and needs no teacher logits. An ensemble's logits [B, M, K]
    give the target softmax(t/T) = sum_m w_m softmax(t_m/T) (`teacher_log_probs`).
    """

    def __init__(self, alpha: float, temperature: float, weight: torch.Tensor | None = None,
                 teacher_weights: torch.Tensor | None = None):
        super().__init__()
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("teacher_weights", teacher_weights, persistent=False)

    def forward(self, student: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(student, target, weight=self.weight)
        if self.alpha == 0.0:
            return ce
        if teacher is None:
            raise ValueError("KDLoss with alpha > 0 needs teacher logits")
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), teacher_log_probs(teacher, t, self.teacher_weights),
                      reduction="batchmean", log_target=True)
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl


@register_loss("kd+features")
class FeatureKDLoss(nn.Module):
    """KD plus a FitNets-style hint (Romero et al. 2015) on penultimate features::

        loss = KD(s, y, t) + feature_weight * D(adapter(f_s), f_t)

    f_t: the teacher's pooled penultimate features (the input of its last linear
    layer; an ensemble's members concatenated); adapter: a learned linear map
    from the student's features to the teacher's width, trained with the student
    and dropped at export. D = mse (mean squared error) or cosine (1 - cosine
    similarity, blind to the features' scale). The student side arrives as
    (logits, adapter(f_s)) from `FeatureStudent`, the teacher side as (logits, f_t).
    """

    def __init__(self, kd: KDLoss, feature_weight: float, kind: str = "mse"):
        super().__init__()
        self.kd, self.feature_weight, self.kind = kd, float(feature_weight), kind

    def forward(self, student: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                teacher: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (s_logits, s_feat), (t_logits, t_feat) = student, teacher
        if self.kind == "cosine":
            hint = (1.0 - F.cosine_similarity(s_feat, t_feat, dim=1)).mean()
        else:
            hint = F.mse_loss(s_feat, t_feat)
        return self.kd(s_logits, target, t_logits) + self.feature_weight * hint

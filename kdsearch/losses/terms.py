"""The registered distillation terms D (`kd`, `kd_ls`, `dist`, `dkd`), each with its paper's formula, and the
teacher's (or an ensemble's) softened log-probabilities they share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.registry import Registry

TERMS: Registry[type[nn.Module]] = Registry("loss")


def register_term(name: str):
    return TERMS.register(name)


def list_losses() -> list[str]:
    return TERMS.names()


def start_settings(name: str) -> dict[str, float]:
    """The space values a term's paper recommends (temperature, alpha, ...): `search.start_points`."""
    return dict(TERMS[name].start)


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


def _kl_per_sample(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities; entries with p = 0 add 0 (and no NaN to the gradient)."""
    keep = log_p > -torch.inf
    log_p, log_q = torch.where(keep, log_p, 0.0), torch.where(keep, log_q, 0.0)
    return (keep * log_p.exp() * (log_p - log_q)).sum(-1)


class _Term(nn.Module):
    """A distillation term D: (student logits [B, K], teacher logits [B, (M,) K], target [B]) -> D per sample [B].

    `target` is the label, or for a transfer image the teacher's own prediction;
    only DKD reads it. An ensemble's member logits are mixed by `teacher_weights`.
    """

    start: dict[str, float] = {}
    """The paper's recommended settings (space keys): where `search.start_points` starts the search for this term."""

    def __init__(self, temperature: float, teacher_weights: torch.Tensor | None = None, **_unused):
        super().__init__()
        self.temperature = float(temperature)
        self.register_buffer("teacher_weights", teacher_weights, persistent=False)

    def teacher_log_probs(self, teacher: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        return teacher_log_probs(teacher, self.temperature if temperature is None else temperature,
                                 self.teacher_weights)


@register_term("kd")
class KD(_Term):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)::

        D = T^2 * KL(softmax(t/T) || softmax(s/T))

    T^2 keeps the gradient scale of the soft term independent of T. An
    ensemble's target is softmax(t/T) = sum_m w_m softmax(t_m/T).
    """

    start = {"temperature": 4.0, "alpha": 0.9}  # the common CIFAR setting (e.g. Tian et al.'s CRD benchmark)

    def forward(self, student, teacher, target):
        t = self.temperature
        return t * t * _kl_per_sample(self.teacher_log_probs(teacher), F.log_softmax(student / t, dim=-1))


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score over the class dimension (unbiased std, as in Sun et al.'s code)."""
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + eps)


@register_term("kd_ls")
class KDLogitStandardization(KD):
    """Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024)::

        D = T^2 * KL(softmax(z(t)/T) || softmax(z(s)/T)),   z(x) = (x - mean(x)) / std(x) per sample

    The student matches the teacher's logit *relations*, not their scale: a
    CLIP/SigLIP teacher's logits (logit_scale * cos + bias) have an arbitrary
    range that plain KD would force on the student. `temperature` is the base
    T; each ensemble member is standardised before the members are mixed.
    """

    start = {"temperature": 2.0, "alpha": 0.9}  # Sun et al.'s CIFAR runs: base T 2, KD weight 9 : CE 1

    def forward(self, student, teacher, target):
        return super().forward(standardize(student), standardize(teacher), target)


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of the rows of a and b."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@register_term("dist")
class DIST(_Term):
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022)::

        y_s = softmax(s/tau), y_t = softmax(t/tau), tau = T
        inter_i = 1 - pearson(y_s[i, :], y_t[i, :])            (each sample's class ranking)
        intra   = 1 - mean_c pearson(y_s[:, c], y_t[:, c])     (each class across the batch)
        D_i = tau^2 * (beta * inter_i + gamma * intra),  beta = gamma = 1

    Matching correlations instead of exact probabilities is what lets a much
    stronger teacher help instead of hurt. The intra-class term is a property
    of the whole batch (labeled and transfer images together); each sample
    carries it, so the batch mean is the paper's loss.
    """

    start = {"temperature": 1.0, "alpha": 0.5}  # the paper's tau 1, beta = gamma = 1 beside CE (equal weights)

    def __init__(self, temperature: float, teacher_weights: torch.Tensor | None = None, beta: float = 1.0,
                 gamma: float = 1.0, **_unused):
        super().__init__(temperature, teacher_weights)
        self.beta, self.gamma = beta, gamma

    def forward(self, student, teacher, target):
        t = self.temperature
        y_s, y_t = F.softmax(student / t, dim=-1), self.teacher_log_probs(teacher).exp()
        inter = 1.0 - _pearson(y_s, y_t)
        intra = 1.0 - _pearson(y_s.T, y_t.T).mean()
        return t * t * (self.beta * inter + self.gamma * intra)


@register_term("dkd")
class DKD(_Term):
    """Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022)::

        D = T^2 * (TCKD + dkd_beta * NCKD)
        TCKD = KL([p_t(y), 1 - p_t(y)] || [p_s(y), 1 - p_s(y)])        (target vs the rest, binary)
        NCKD = KL(p_t(k | k != y) || p_s(k | k != y))                  (among the non-target classes)

    with p = softmax(./T) and y the target class (the paper's alpha fixed at 1).
    KD couples the two parts by p_t(y); DKD weighs the dark knowledge among
    the wrong classes by dkd_beta instead (the paper's values run 0.5-8 per
    pair). A transfer image's target class is the teacher's prediction.
    """

    start = {"temperature": 4.0, "alpha": 0.5, "dkd_beta": 8.0}  # the paper's CIFAR setting: T 4, beta 8

    def __init__(self, temperature: float, teacher_weights: torch.Tensor | None = None, dkd_beta: float = 1.0,
                 **_unused):
        super().__init__(temperature, teacher_weights)
        self.dkd_beta = float(dkd_beta)

    def forward(self, student, teacher, target):
        t = self.temperature
        log_pt, log_ps = self.teacher_log_probs(teacher), F.log_softmax(student / t, dim=-1)
        gt = F.one_hot(target, log_ps.shape[-1]).bool()

        def binary(log_p):  # log [p(y), 1 - p(y)]
            log_gt = log_p.masked_fill(~gt, -torch.inf).logsumexp(-1)
            return torch.stack([log_gt, log_p.masked_fill(gt, -torch.inf).logsumexp(-1)], -1)

        def non_target(log_p):  # log p(k | k != y); the target's entry is -inf
            masked = log_p.masked_fill(gt, -torch.inf)
            return masked - masked.logsumexp(-1, keepdim=True)

        tckd = _kl_per_sample(binary(log_pt), binary(log_ps))
        nckd = _kl_per_sample(non_target(log_pt), non_target(log_ps))
        return t * t * (tckd + self.dkd_beta * nckd)

"""Distillation losses: small registered modules; the training loop never knows which one runs.

The contract's loss is `(1 - alpha) * CE_w(s, y) + alpha * D(s, t)`. `D` is a
registered *term* (`kd`, `dist`, `kd_ls`, `dkd`): each returns one value per
sample, and `DistillationLoss` mixes it with the class-weighted cross-entropy.
A transfer image (label `UNLABELED`) has no CE and gets `D` alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.labels import UNLABELED
from ..core.registry import Registry

TERMS: Registry[type[nn.Module]] = Registry("loss")


def register_term(name: str):
    return TERMS.register(name)


def list_losses() -> list[str]:
    return TERMS.names()


def start_settings(name: str) -> dict[str, float]:
    """The space values a term's paper recommends (temperature, alpha, ...): `search.start_points`."""
    return dict(TERMS[name].start)


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


class FeatureHintLoss(nn.Module):
    """A distillation loss plus a FitNets-style hint (Romero et al. 2015) on penultimate features::

        loss = L(s, y, t) + feature_weight * H(adapter(f_s), f_t)

    f_t: the teacher's pooled penultimate features (the input of its last linear
    layer; an ensemble's members concatenated); adapter: a learned linear map
    from the student's features to the teacher's width, trained with the student
    and dropped at export. H = mse (mean squared error) or cosine (1 - cosine
    similarity, blind to the features' scale), over every image of the batch.
    The student side arrives as (logits, adapter(f_s)) from `FeatureStudent`,
    the teacher side as (logits, f_t).
    """

    def __init__(self, loss: nn.Module, feature_weight: float, kind: str = "mse"):
        super().__init__()
        self.loss, self.feature_weight, self.kind = loss, float(feature_weight), kind

    def forward(self, student: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                teacher: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (s_logits, s_feat), (t_logits, t_feat) = student, teacher
        if self.kind == "cosine":
            hint = (1.0 - F.cosine_similarity(s_feat, t_feat, dim=1)).mean()
        else:
            hint = F.mse_loss(s_feat, t_feat)
        return self.loss(s_logits, target, t_logits) + self.feature_weight * hint

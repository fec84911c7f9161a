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


@register_loss("kd")
class KDLoss(nn.Module):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)::

        loss = (1 - alpha) * CE_w(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))

    CE_w is cross-entropy with per-class weights (torch's weighted mean over the
    batch); the KL term is averaged over the batch. T^2 keeps the gradient scale
    of the soft term independent of T. alpha = 0 is the student without
    distillation and needs no teacher logits.
    """

    def __init__(self, alpha: float, temperature: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, student: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(student, target, weight=self.weight)
        if self.alpha == 0.0:
            return ce
        if teacher is None:
            raise ValueError("KDLoss with alpha > 0 needs teacher logits")
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                      log_target=True)
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl

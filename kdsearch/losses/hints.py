"""A FitNets-style hint on penultimate features, added to a distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

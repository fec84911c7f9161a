"""Distillation losses: small registered modules; the training loop never knows which one runs.

The contract's loss is `(1 - alpha) * CE_w(s, y) + alpha * D(s, t)`. `D` is a
registered *term* (`kd`, `dist`, `kd_ls`, `dkd`): each returns one value per
sample, and `DistillationLoss` mixes it with the class-weighted cross-entropy.
A transfer image (label `UNLABELED`) has no CE and gets `D` alone.

The modules: `terms.py` (the registered terms D), `contract.py` (the mix with CE_w, the class weights), `hints.py`
(the feature hint). Import from here: these names are the package's interface.
"""

from .contract import DistillationLoss, class_weights, create_loss, cross_entropy_loss
from .hints import FeatureHintLoss
from .terms import TERMS, list_losses, register_term, start_settings, teacher_log_probs

__all__ = ["TERMS", "DistillationLoss", "FeatureHintLoss", "class_weights", "create_loss", "cross_entropy_loss",
           "list_losses", "register_term", "start_settings", "teacher_log_probs"]

"""What a run distils from: `Teacher` (one model) and `Teachers` (one, or an ensemble's members), the registry of
teacher sources, and the builders that turn the config's teacher into them.

A teacher sees the same uint8 pixels as the student, preprocessed per its own
`InputSpec`. Wherever the model allows, a teacher is split at its final linear
layer (`head`): the head's input is the teacher's penultimate feature vector
(feature distillation), and a linear probe is just a head fitted later. One
module per source (train, checkpoint, torchscript, huggingface) registers its
builder in `SOURCES`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..config import Config, EnsembleTeacher, InputSpec
from ..core.errors import KdsearchError
from ..core.io import fingerprint
from ..core.registry import Registry
from ..data.dataset import Dataset
from ..data.transforms import to_input
from ..engine.loop import EVAL_BATCH, Metrics, classification_metrics
from ..losses import teacher_log_probs
from ..models.students import forward_with_features, student_spec

log = logging.getLogger("kdsearch")


@dataclass
class CrossFit:
    """Out-of-fold heads for the images a head was fitted on (a linear probe's train split): image i's outputs come
    from the head of the fold that held it out, so the targets a student learns from on those images are as
    confident as on images the probe never saw."""

    fold: torch.Tensor
    """int64 [N]: the fold that held out each fitted image."""
    weight: torch.Tensor
    """float32 [F, K, D]: each fold's head."""
    bias: torch.Tensor
    """float32 [F, K]."""

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Out-of-fold logits [N, K] for features [N, D] of the fitted images, in their order (any view of them)."""
        out = torch.empty(len(feats), self.weight.shape[1])
        for f in range(self.weight.shape[0]):
            idx = (self.fold == f).nonzero().flatten()
            out[idx] = feats[idx].float() @ self.weight[f].T + self.bias[f]
        return out


@dataclass
class Teacher:
    model: nn.Module
    spec: InputSpec
    """Resolved input spec (size always set)."""
    fingerprint: str
    """Changes whenever the teacher's outputs could: keys the teacher-output cache."""
    identity: dict[str, Any]
    """What the model card says about the teacher."""
    head: nn.Linear | None = None
    """The final linear layer (logits = head(features)); None where the model cannot be split (TorchScript)."""
    fit_head: Callable[[torch.Tensor, torch.Tensor], tuple[dict[str, Any], CrossFit]] | None = None
    """linear_probe: fits `head` from (unaugmented train features, labels); returns what to record and the
    out-of-fold heads for those images. None = head is ready."""
    batch_size: int = EVAL_BATCH
    """Images per forward pass when its outputs are computed."""
    autocast: torch.dtype | None = None
    """Run forward passes under torch.autocast in this dtype (teacher.dtype); None = as the model is."""
    forward_passes: int = 0
    """Images pushed through the teacher by this process."""
    seconds: float = 0.0
    """Wall seconds spent in the teacher's forward passes by this process."""

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, K], penultimate features [B, D] or None) for a uint8 batch on the teacher's device."""
        self.model.eval()
        start = time.perf_counter()
        self.forward_passes += len(x)
        inp = to_input(x, self.spec, self.spec.size)
        with torch.autocast(x.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            if not features or self.head is None:
                logits, feats = self.model(inp), None
            else:
                logits, feats = forward_with_features(self.model, self.head, inp)
                feats = feats.float()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - start
        return logits.float(), feats


@dataclass
class Teachers:
    """The teacher a run distils from: one model, or an ensemble's members with their weights."""

    members: list[Teacher]
    weights: tuple[float, ...]
    """Default member weights, summing to 1 (search.space.teacher_weights may override them per trial)."""
    identity: dict[str, Any] = field(default_factory=dict)
    earlier_passes: int = 0
    """Forward passes of models no longer held (`without_models`): the counts survive the models."""
    earlier_seconds: float = 0.0

    @property
    def name(self) -> str:
        """A short label for tags and summaries: the arch or model id, or the ensemble's members."""
        def label(identity: dict) -> str:
            return str(identity.get("arch") or identity.get("model") or identity["source"])
        if self.identity.get("source") == "ensemble":
            return "ensemble(" + " + ".join(label(m) for m in self.identity["members"]) + ")"
        return label(self.identity)

    @property
    def forward_passes(self) -> int:
        return self.earlier_passes + sum(m.forward_passes for m in self.members)

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + sum(m.seconds for m in self.members)

    @property
    def has_features(self) -> bool:
        return all(m.head is not None for m in self.members)

    def without_models(self) -> "Teachers":
        """What trials need when the outputs are cached: the weights and identity, no models to ship."""
        return Teachers([], self.weights, self.identity, self.forward_passes, self.seconds)

    def to(self, device) -> "Teachers":
        for m in self.members:
            m.model.to(device)
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor, device, batch_size: int = EVAL_BATCH) -> torch.Tensor:
        """Every member's logits [N, M, K] for uint8 images x, a batch at a time on `device`, returned on the CPU."""
        return torch.cat([self.outputs(x[i:i + batch_size].to(device))[0] for i in range(0, len(x), batch_size)]).cpu()

    def score(self, logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[Metrics, torch.Tensor]:
        """The teacher's prediction from member logits [N, M, K] (an ensemble's combined at T = 1 with its default
        weights), scored against y; returns the metrics and the predicted classes."""
        log_p = teacher_log_probs(logits, 1.0, torch.tensor(self.weights))
        pred = log_p.argmax(1)
        loss = float(nn.functional.nll_loss(log_p, y))
        return classification_metrics(y.numpy(), pred.numpy(), num_classes, loss), pred

    def outputs(self, x: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, M, K], features concatenated over members [B, sum D] or None)."""
        outs = [m.outputs(x, features) for m in self.members]
        logits = torch.stack([o[0] for o in outs], dim=1)
        feats = torch.cat([o[1] for o in outs], dim=1) if features else None
        return logits, feats



SOURCES: Registry[Callable[[Any, Config, Dataset, Any], Teacher]] = Registry("teacher.source")
"""teacher.source -> builder(teacher config, config, data, device) -> Teacher."""


def teacher_spec(t, cfg: Config) -> InputSpec:
    spec = t.input or student_spec(cfg)
    return spec if spec.size is not None else spec.model_copy(update={"size": cfg.data.image_size})


def build_teachers(cfg: Config, data: Dataset, device: torch.device | str) -> Teachers:
    """The config's teacher, or every member of its ensemble, loaded and checked against the data."""
    t = cfg.teacher
    if isinstance(t, EnsembleTeacher):
        members = [build_teacher(cfg, data, device, m) for m in t.members]
        identity = {"source": "ensemble", "members": [m.identity for m in members], "weights": list(t.resolved_weights)}
        return Teachers(members, t.resolved_weights, identity)
    member = build_teacher(cfg, data, device)
    return Teachers([member], (1.0,), member.identity)


def build_teacher(cfg: Config, data: Dataset, device: torch.device | str, t=None) -> Teacher:
    """One teacher: `t` (an ensemble member's config) or cfg.teacher."""
    t = t if t is not None else cfg.teacher
    if isinstance(t, EnsembleTeacher):
        raise ValueError("build_teacher builds one teacher; use build_teachers for an ensemble")
    teacher = SOURCES[t.source](t, cfg, data, device)
    if t.dtype != "float32" and t.source != "huggingface":  # a Hugging Face model is loaded in its dtype
        teacher.autocast = getattr(torch, t.dtype)
        teacher.fingerprint = fingerprint({"model": teacher.fingerprint, "dtype": t.dtype})
    _check_outputs(t, teacher, data.num_classes, device)
    return teacher


def _check_outputs(t, teacher: Teacher, num_classes: int, device) -> None:
    """A forward pass on a probe batch: the class count must match; the head split must reproduce the logits."""
    spec = teacher.spec
    gen = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (2, spec.channels, spec.size, spec.size), generator=gen, dtype=torch.uint8).to(device)
    passes, seconds = teacher.forward_passes, teacher.seconds
    try:
        out, feats = teacher.outputs(probe, features=True)
    except Exception as e:
        raise KdsearchError(f"teacher ({t.source}): forward pass on a {spec.channels}x{spec.size}x{spec.size} "
                            f"input failed ({type(e).__name__}: {e}); "
                            "set teacher.input to what the model expects") from None
    teacher.forward_passes, teacher.seconds = passes, seconds  # the probe is not teacher work
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise KdsearchError(f"teacher ({t.source}): outputs {tuple(out.shape[1:])} classes but the data has "
                            f"{num_classes}; use a teacher trained on these classes")
    if teacher.head is not None:
        with torch.no_grad():
            split_ok = feats is not None and torch.allclose(teacher.head(feats.to(teacher.head.weight.dtype)).float(),
                                                            out, rtol=1e-3, atol=1e-3)
        if not split_ok:  # the last linear layer is not the model's last step: no features from this teacher
            log.info("teacher (%s): its last linear layer does not produce its logits; no feature distillation",
                     t.source)
            teacher.head = None

"""Teachers: one builder per `teacher.source`, each returning a `Teacher`; `Teachers` is what a run distils from.

A teacher sees the same uint8 pixels as the student, preprocessed per its own
`InputSpec`. Wherever the model allows, a teacher is split at its final linear
layer (`head`): the head's input is the teacher's penultimate feature vector
(feature distillation), and a linear probe is just a head fitted later.
Hugging Face teachers are built in hf_teachers.py.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .batches import epoch_generator, live_batches
from .config import (
    CheckpointTeacher,
    Config,
    EnsembleTeacher,
    InputSpec,
    TorchscriptTeacher,
    TrainTeacher,
)
from ._io import file_sha256, fingerprint, load_cache, save_atomic
from .data import Dataset, val_subset
from .engine import evaluate, train_one_epoch
from .errors import KdsearchError
from .losses import cross_entropy_loss
from .students import create_student, final_linear, forward_with_features, list_students
from .transforms import to_input

log = logging.getLogger("kdsearch")


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
    fit_head: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None
    """linear_probe: fits `head` from (train features, labels) and returns what to record; None = head is ready."""
    batch_size: int = 256
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]


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

    def outputs(self, x: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, M, K], features concatenated over members [B, sum D] or None)."""
        outs = [m.outputs(x, features) for m in self.members]
        logits = torch.stack([o[0] for o in outs], dim=1)
        feats = torch.cat([o[1] for o in outs], dim=1) if features else None
        return logits, feats


def student_spec(cfg: Config) -> InputSpec:
    """Students take RGB at data.image_size with mean/std 0.5: they train from scratch."""
    return InputSpec(size=cfg.data.image_size)


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
    teacher = _BUILDERS[t.source](t, cfg, data, device)
    if t.dtype != "float32" and t.source != "huggingface":  # a Hugging Face model is loaded in its dtype
        teacher.autocast = getattr(torch, t.dtype)
        teacher.fingerprint = fingerprint({"model": teacher.fingerprint, "dtype": t.dtype})
    _check_outputs(t, teacher, data.num_classes, device)
    return teacher


# --------------------------------------------------------------------------- architectures


def create_model(arch: str, num_classes: int, image_size: int, kwargs: dict | None = None) -> nn.Module:
    """A registry name, a timm name, or `package.module:ClassName` (called with `kwargs`)."""
    if ":" in arch:
        module_name, _, cls_name = arch.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise KdsearchError(f"teacher.arch {arch}: cannot import ({e}); make sure the module is on PYTHONPATH") from None
        return cls(**(kwargs or {}))
    if arch in list_students():
        return create_student(arch, num_classes, image_size)
    import timm

    if timm.is_model(arch):
        extra = {"img_size": image_size} if "vit" in arch or "deit" in arch else {}
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)
    raise KdsearchError(f"teacher.arch {arch!r}: unknown; use a kdsearch model ({', '.join(list_students())}), "
                        "a timm model name, or package.module:ClassName")


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
                            f"input failed ({type(e).__name__}: {e}); set teacher.input to what the model expects") from None
    teacher.forward_passes, teacher.seconds = passes, seconds  # the probe is not teacher work
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise KdsearchError(f"teacher ({t.source}): outputs {tuple(out.shape[1:])} classes but the data has "
                            f"{num_classes}; use a teacher trained on these classes")
    if teacher.head is not None:
        with torch.no_grad():
            split_ok = feats is not None and torch.allclose(teacher.head(feats.to(teacher.head.weight.dtype)).float(),
                                                            out, rtol=1e-3, atol=1e-3)
        if not split_ok:  # the last linear layer is not the model's last step: no features from this teacher
            log.info("teacher (%s): its last linear layer does not produce its logits; no feature distillation", t.source)
            teacher.head = None


# --------------------------------------------------------------------------- builders


def _build_trained(t: TrainTeacher, cfg: Config, data: Dataset, device) -> Teacher:
    spec = teacher_spec(t, cfg)
    settings = t.model_dump(mode="json", exclude={"cache", "cache_views", "dtype", "resources"})  # what training sees
    fp = fingerprint({"teacher": settings, "spec": spec.model_dump(mode="json"), "data": data.fingerprint,
                      "augment": cfg.data.augment, "seed": cfg.seed, "early_stop_val": cfg.search.rung_val_size})
    path = cfg.output_dir / "teacher" / f"trained-{t.arch.replace(':', '_')}-{fp}.pt"
    model = create_model(t.arch, data.num_classes, spec.size).to(device)
    identity = {"source": "train", "arch": t.arch, "file": str(path), "fingerprint": fp}
    saved = load_cache(path)
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
    else:
        fit_teacher(model, t, spec, data, cfg.data.augment, cfg.seed, device,
                    val_idx=val_subset(data, cfg.search.rung_val_size, cfg.seed))
        save_atomic({"state_dict": model.state_dict()}, path)
    return Teacher(model.eval(), spec, fp, identity, head=final_linear(model))


def fit_teacher(model: nn.Module, t: TrainTeacher, spec: InputSpec, data: Dataset, augment_level: str, seed: int,
                device, on_epoch: Callable[[int, dict], None] | None = None,
                val_idx: torch.Tensor | None = None) -> dict[str, float]:
    """Cross-entropy on the train split; keeps the weights of the best val accuracy; stops after `patience` flat epochs.

    `val_idx`: the val images that decide (the rung subset); None = all of them."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=1e-4)
    loss = cross_entropy_loss()
    x, y = data.train.x.to(device), data.train.y.to(device)
    val_x, val_y = (data.val.x, data.val.y) if val_idx is None else (data.val.x[val_idx], data.val.y[val_idx])
    best, best_state, flat = -1.0, None, 0
    best_metrics: dict[str, float] = {}
    for epoch in range(t.epochs):
        batches = live_batches(x, y, t.batch_size, augment_level, spec, spec.size, epoch_generator(seed, epoch))
        stats = train_one_epoch(model, batches, loss, optimizer)
        m = evaluate(model, val_x, val_y, spec, spec.size, data.num_classes, device)
        log.info("teacher epoch %d: train_loss %.4f val_accuracy %.4f (%.1fs)", epoch + 1, stats.train_loss,
                 m.accuracy, stats.seconds)
        if on_epoch:
            on_epoch(epoch, {"train_loss": stats.train_loss, "val_accuracy": m.accuracy, "val_macro_f1": m.macro_f1})
        if m.accuracy > best:
            best, flat = m.accuracy, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_metrics = {"val_accuracy": m.accuracy, "val_macro_f1": m.macro_f1, "epochs": epoch + 1}
        else:
            flat += 1
            if flat >= t.patience:
                break
    model.load_state_dict(best_state)
    return best_metrics


def load_state_dict_file(path: Path, key: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise KdsearchError(f"{key} {path}: file not found; give the path of a saved state_dict (torch.save)")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise KdsearchError(f"{key} {path}: not a loadable PyTorch weights file ({type(e).__name__}); save it with "
                            "torch.save(model.state_dict(), path)") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdsearchError(f"{key} {path}: holds no state_dict of tensors; save it with "
                            "torch.save(model.state_dict(), path)")
    return obj


def load_checkpoint_model(t: CheckpointTeacher, num_classes: int, size: int, key: str = "teacher") -> nn.Module:
    """The architecture with the checkpoint's weights; exit 2 when the file, the class count or the arch is wrong."""
    state = load_state_dict_file(t.weights, f"{key}.weights")
    model = create_model(t.arch, num_classes, size, dict(t.arch_kwargs))
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and expected[k].shape != v.shape and expected[k].shape[:1] == (num_classes,):
            raise KdsearchError(f"{key}.weights {t.weights}: the checkpoint has {v.shape[0]} classes ({k}) but the "
                                f"data has {num_classes}; use a teacher trained on these classes")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise KdsearchError(f"{key}.weights {t.weights}: does not match {key}.arch {t.arch} ({first[0].strip()}); "
                            "check that arch and weights belong together") from None
    return model


def _build_checkpoint(t: CheckpointTeacher, cfg: Config, data: Dataset, device) -> Teacher:
    spec = teacher_spec(t, cfg)
    model = load_checkpoint_model(t, data.num_classes, spec.size)
    fp = fingerprint({"arch": t.arch, "kwargs": t.arch_kwargs, "sha256": file_sha256(t.weights),
                "spec": spec.model_dump(mode="json")})
    identity = {"source": "checkpoint", "arch": t.arch, "weights": str(t.weights), "fingerprint": fp}
    return Teacher(model.to(device).eval(), spec, fp, identity, head=final_linear(model))


def _build_torchscript(t: TorchscriptTeacher, cfg: Config, data: Dataset, device) -> Teacher:
    spec = teacher_spec(t, cfg)
    if not t.path.is_file():
        raise KdsearchError(f"teacher.path {t.path}: file not found; give a model saved with torch.jit.save")
    try:
        model = torch.jit.load(str(t.path), map_location=device)
    except Exception as e:
        raise KdsearchError(f"teacher.path {t.path}: not a TorchScript file ({type(e).__name__}); "
                            "save the teacher with torch.jit.save(torch.jit.script(model), path)") from None
    fp = fingerprint({"sha256": file_sha256(t.path), "spec": spec.model_dump(mode="json")})
    identity = {"source": "torchscript", "path": str(t.path), "fingerprint": fp}
    return Teacher(model.eval(), spec, fp, identity)  # a compiled graph: no head to split off


def _build_huggingface(t, cfg: Config, data: Dataset, device) -> Teacher:
    from .hf_teachers import build_huggingface  # transformers is a heavy import; only HF teachers pay it

    return build_huggingface(t, cfg, data, device)


_BUILDERS: dict[str, Callable[[Any, Config, Dataset, Any], Teacher]] = {
    "train": _build_trained,
    "checkpoint": _build_checkpoint,
    "torchscript": _build_torchscript,
    "huggingface": _build_huggingface,
}

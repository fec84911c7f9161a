"""Teachers: one builder per `teacher.source`, each returning a `Teacher`.

A teacher sees the same uint8 pixels as the student, preprocessed per its own
`InputSpec`. New kinds (huggingface, ensemble) plug in as another builder in
`_BUILDERS` plus a config model in config.py.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .batches import epoch_generator, live_batches
from .config import CheckpointTeacher, Config, InputSpec, TorchscriptTeacher, TrainTeacher
from ._io import file_sha256, fingerprint, load_cache, save_atomic
from .data import Dataset
from .engine import evaluate, train_one_epoch
from .errors import KdsearchError
from .losses import create_loss
from .students import create_student, list_students

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
    forward_passes: int = 0
    """Images pushed through the teacher by this process."""

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a uint8 batch already on the teacher's device."""
        from .transforms import to_input

        self.model.eval()
        self.forward_passes += len(x)
        return self.model(to_input(x, self.spec, self.spec.size)).float()


def student_spec(cfg: Config) -> InputSpec:
    """Students take RGB at data.image_size with mean/std 0.5: they train from scratch."""
    return InputSpec(size=cfg.data.image_size)


def teacher_spec(cfg: Config) -> InputSpec:
    spec = cfg.teacher.input or student_spec(cfg)
    return spec if spec.size is not None else spec.model_copy(update={"size": cfg.data.image_size})


def build_teacher(cfg: Config, data: Dataset, device: torch.device | str) -> Teacher:
    teacher = _BUILDERS[cfg.teacher.source](cfg, data, device)
    _check_class_count(cfg, teacher, data.num_classes, device)
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


def _check_class_count(cfg: Config, teacher: Teacher, num_classes: int, device) -> None:
    spec = teacher.spec
    probe = torch.zeros(2, spec.channels, spec.size, spec.size, dtype=torch.uint8, device=device)
    try:
        out = teacher.logits(probe)
    except Exception as e:
        raise KdsearchError(f"teacher ({cfg.teacher.source}): forward pass on a {spec.channels}x{spec.size}x{spec.size} "
                            f"input failed ({type(e).__name__}: {e}); set teacher.input to what the model expects") from None
    teacher.forward_passes -= 2  # the probe is not teacher work
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise KdsearchError(f"teacher ({cfg.teacher.source}): outputs {tuple(out.shape[1:])} classes but the data has "
                            f"{num_classes}; use a teacher trained on these classes")


# --------------------------------------------------------------------------- builders


def _build_trained(cfg: Config, data: Dataset, device) -> Teacher:
    t: TrainTeacher = cfg.teacher
    spec = teacher_spec(cfg)
    settings = t.model_dump(mode="json", exclude={"cache", "cache_views"})
    fp = fingerprint({"teacher": settings, "spec": spec.model_dump(mode="json"), "data": data.fingerprint,
                "augment": cfg.data.augment, "seed": cfg.seed})
    path = cfg.output_dir / "teacher" / f"trained-{t.arch.replace(':', '_')}-{fp}.pt"
    model = create_model(t.arch, data.num_classes, spec.size).to(device)
    identity = {"source": "train", "arch": t.arch, "file": str(path), "fingerprint": fp}
    saved = load_cache(path)
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
        return Teacher(model.eval(), spec, fp, identity)
    fit_teacher(model, t, spec, data, cfg.data.augment, cfg.seed, device)
    save_atomic({"state_dict": model.state_dict()}, path)
    return Teacher(model.eval(), spec, fp, identity)


def fit_teacher(model: nn.Module, t: TrainTeacher, spec: InputSpec, data: Dataset, augment_level: str, seed: int,
                device, on_epoch: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """Cross-entropy on the train split; keeps the weights of the best val accuracy; stops after `patience` flat epochs."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=1e-4)
    loss = create_loss("kd", alpha=0.0, temperature=1.0)
    x, y = data.train.x.to(device), data.train.y.to(device)
    best, best_state, flat = -1.0, None, 0
    best_metrics: dict[str, float] = {}
    for epoch in range(t.epochs):
        batches = live_batches(x, y, t.batch_size, augment_level, spec, spec.size, epoch_generator(seed, epoch))
        stats = train_one_epoch(model, batches, loss, optimizer)
        m = evaluate(model, data.val.x, data.val.y, spec, spec.size, data.num_classes, device)
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


def _load_state_dict_file(path: Path, key: str) -> dict[str, torch.Tensor]:
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


def _build_checkpoint(cfg: Config, data: Dataset, device) -> Teacher:
    t: CheckpointTeacher = cfg.teacher
    spec = teacher_spec(cfg)
    state = _load_state_dict_file(t.weights, "teacher.weights")
    model = create_model(t.arch, data.num_classes, spec.size, dict(t.arch_kwargs))
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and expected[k].shape != v.shape and expected[k].shape[:1] == (data.num_classes,):
            raise KdsearchError(f"teacher.weights {t.weights}: the checkpoint has {v.shape[0]} classes ({k}) but the "
                                f"data has {data.num_classes}; use a teacher trained on these classes")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise KdsearchError(f"teacher.weights {t.weights}: does not match teacher.arch {t.arch} ({first[0].strip()}); "
                            "check that arch and weights belong together") from None
    fp = fingerprint({"arch": t.arch, "kwargs": t.arch_kwargs, "sha256": file_sha256(t.weights),
                "spec": spec.model_dump(mode="json")})
    identity = {"source": "checkpoint", "arch": t.arch, "weights": str(t.weights), "fingerprint": fp}
    return Teacher(model.to(device).eval(), spec, fp, identity)


def _build_torchscript(cfg: Config, data: Dataset, device) -> Teacher:
    t: TorchscriptTeacher = cfg.teacher
    spec = teacher_spec(cfg)
    if not t.path.is_file():
        raise KdsearchError(f"teacher.path {t.path}: file not found; give a model saved with torch.jit.save")
    try:
        model = torch.jit.load(str(t.path), map_location=device)
    except Exception as e:
        raise KdsearchError(f"teacher.path {t.path}: not a TorchScript file ({type(e).__name__}); "
                            "save the teacher with torch.jit.save(torch.jit.script(model), path)") from None
    fp = fingerprint({"sha256": file_sha256(t.path), "spec": spec.model_dump(mode="json")})
    identity = {"source": "torchscript", "path": str(t.path), "fingerprint": fp}
    return Teacher(model.eval(), spec, fp, identity)


_BUILDERS: dict[str, Callable[[Config, Dataset, Any], Teacher]] = {
    "train": _build_trained,
    "checkpoint": _build_checkpoint,
    "torchscript": _build_torchscript,
}

"""teacher.source checkpoint: an architecture (a student, a torchvision/timm name or module:Class) plus a
state_dict file."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from ..config import CheckpointTeacher, Config
from ..core.errors import KdsearchError
from ..core.io import file_sha256, fingerprint
from ..data.dataset import Dataset
from ..models.students import final_linear, model_from_arch
from .base import SOURCES, Teacher, teacher_spec

log = logging.getLogger("kdsearch")


def load_state_dict_file(path: Path, key: str, mmap: bool = False,
                         meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The state_dict a file holds; `mmap`: mapped, not read (a legacy-format file, which cannot be, is read).
    `meta` receives the training normalisation the file declares beside its weights ({"state_dict": ..., "mean":
    [...], "std": [...]}, or under "normalization"), when it does."""
    if not path.is_file():
        raise KdsearchError(f"{key} {path}: file not found; give the path of a saved state_dict (torch.save)")
    try:
        try:
            obj = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise KdsearchError(f"{key} {path}: not a loadable PyTorch weights file ({type(e).__name__}); save it with "
                            "torch.save(model.state_dict(), path)") from None
    if meta is not None and isinstance(obj, dict):  # what a training script saved beside the weights
        norm = obj.get("normalization") if isinstance(obj.get("normalization"), dict) else obj
        meta.update({k: [float(x) for x in norm[k]] for k in ("mean", "std")
                     if isinstance(norm.get(k), (list, tuple)) and all(isinstance(x, (int, float)) for x in norm[k])})
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdsearchError(f"{key} {path}: holds no state_dict of tensors; save it with "
                            "torch.save(model.state_dict(), path)")
    return obj


def load_checkpoint_model(t: CheckpointTeacher, num_classes: int, size: int, key: str = "teacher",
                          check_only: bool = False, meta: dict | None = None) -> nn.Module:
    """The architecture with the checkpoint's weights; exit 2 when the file, the class count or the arch is wrong.

    `check_only` (`validate`): the same checks with no weights built or read: the architecture on the meta
    device, the file memory-mapped, its tensors assigned rather than copied. The model is for nothing else.
    """
    state = load_state_dict_file(t.weights, f"{key}.weights", mmap=check_only, meta=meta)
    try:
        with torch.device("meta") if check_only else contextlib.nullcontext():
            model = model_from_arch(t.arch, num_classes, size, dict(t.arch_kwargs))
    except Exception:
        if not check_only:
            raise
        model = model_from_arch(t.arch, num_classes, size, dict(t.arch_kwargs))  # a class the meta device can't build
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and expected[k].shape[:1] == (num_classes,) and v.shape[:1] not in ((num_classes,), ()):
            raise KdsearchError(f"{key}.weights {t.weights}: the checkpoint has {v.shape[0]} classes ({k}) but the "
                                f"data has {num_classes}; use a teacher trained on these classes")
    try:
        model.load_state_dict(state, assign=check_only)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise KdsearchError(f"{key}.weights {t.weights}: does not match {key}.arch {t.arch} ({first[0].strip()}); "
                            "check that arch and weights belong together") from None
    return model


def check_normalisation(declared: dict, spec, where: str) -> None:
    """Warn when the teacher's weights say how their images were normalised in training and the input spec used
    here (teacher.input, else the student's) differs: the teacher would see other numbers than it learnt on."""
    differs = {k: v for k, v in declared.items() if any(abs(a - b) > 1e-3 for a, b in zip(v, getattr(spec, k)))}
    if differs:
        said = "; ".join(f"{k} {v} (used here: {list(getattr(spec, k))})" for k, v in differs.items())
        mean, std = declared.get("mean", list(spec.mean)), declared.get("std", list(spec.std))
        log.warning("%s: trained with normalisation %s; set teacher.input: {mean: %s, std: %s} to feed it what it "
                    "learnt on", where, said, mean, std)


@SOURCES.register("checkpoint")
def _build_checkpoint(t: CheckpointTeacher, cfg: Config, data: Dataset, device) -> Teacher:
    spec = teacher_spec(t, cfg)
    declared: dict = {}
    model = load_checkpoint_model(t, data.num_classes, spec.size, meta=declared)
    check_normalisation(declared, spec, f"teacher.weights {t.weights}")
    fp = fingerprint({"arch": t.arch, "kwargs": t.arch_kwargs, "sha256": file_sha256(t.weights),
                "spec": spec.model_dump(mode="json")})
    identity = {"source": "checkpoint", "arch": t.arch, "weights": str(t.weights), "fingerprint": fp}
    return Teacher(model.to(device).eval(), spec, fp, identity, head=final_linear(model))

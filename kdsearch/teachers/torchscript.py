"""teacher.source torchscript: a compiled model file (torch.jit.save), used as it is."""

from __future__ import annotations

import torch

from ..config import Config, TorchscriptTeacher
from ..core.errors import KdsearchError
from ..core.io import file_sha256, fingerprint
from ..data.dataset import Dataset
from .base import SOURCES, Teacher, teacher_spec


@SOURCES.register("torchscript")
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

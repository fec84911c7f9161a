"""Teachers: one module per `teacher.source`, each registering its builder; see base.py for the types.

The Hugging Face source imports transformers (a heavy import) only when a config uses it.
"""

from __future__ import annotations

from ..config import Config
from ..data.dataset import Dataset
from . import checkpoint, torchscript, train  # noqa: F401  (register their sources)
from .base import SOURCES, Teacher, Teachers, build_teacher, build_teachers, teacher_spec
from .checkpoint import load_checkpoint_model, load_state_dict_file
from .train import fit_teacher


@SOURCES.register("huggingface")
def _build_huggingface(t, cfg: Config, data: Dataset, device) -> Teacher:
    from .huggingface import build_huggingface  # transformers is a heavy import; only HF teachers pay it

    return build_huggingface(t, cfg, data, device)


__all__ = ["SOURCES", "Teacher", "Teachers", "build_teacher", "build_teachers", "fit_teacher", "load_checkpoint_model",
           "load_state_dict_file", "teacher_spec"]

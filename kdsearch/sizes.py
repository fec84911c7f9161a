"""The exported weights file: its format (`cast_state_dict`) and its exact size before any training.

The size limit (the contract: "the exported weights file, in student.precision") is the byte count of
`torch.save(cast_state_dict(model, precision))`. `student_size` knows it without building weights: the model is
built on PyTorch's meta device (no memory, no initialisation), and `torch.save` writes storages of the same
shapes and dtypes, allocated but never written, into a byte counter. Sizes of the built-in students are kept in
`~/.cache/kdsearch/student_sizes.json` under the torch/torchvision/timm versions and a hash of `students.py`, so
once a size is known `validate` and `list-models` need not import torchvision or timm at all (about half of their
time on a cold start).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from ._io import user_cache_dir
from .errors import KdsearchError
from .students import STUDENTS, create_student, model_from_arch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
WEIGHTS_FILE = "student.pt"  # the exported weights (the contract's export layout); its stem: see state_dict_bytes


def cast_state_dict(model: nn.Module, precision: str) -> dict[str, torch.Tensor]:
    """The state_dict as exported: floating tensors in `precision`, integer buffers untouched."""
    dtype = DTYPES[precision]
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()}


class _ByteCounter:
    """A write-only file that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.n += size
        return size

    def flush(self) -> None:
        pass


def state_dict_bytes(model: nn.Module, precision: str) -> int:
    """Exact byte count of `torch.save(cast_state_dict(model, precision))`, for a real or a meta-device model.

    Each tensor is replaced by an uninitialised CPU tensor of its exported shape and dtype: torch.save's layout
    depends on names, shapes, dtypes and byte counts only, never on values. It also depends on the file's name:
    torch names the records inside after the file's stem, and "archive" for a buffer, so the count holds for a
    file whose stem has as many letters as "archive", as `WEIGHTS_FILE`'s "student" has.
    """
    dtype = DTYPES[precision]
    shells = {k: torch.empty(v.shape, dtype=dtype if v.is_floating_point() else v.dtype)
              for k, v in model.state_dict().items()}
    counter = _ByteCounter()
    torch.save(shells, counter)
    return counter.n


@dataclass(frozen=True)
class StudentSize:
    name: str
    params: int
    fp32_bytes: int
    fp16_bytes: int

    def bytes(self, precision: str) -> int:
        return self.fp32_bytes if precision == "fp32" else self.fp16_bytes

    def fits(self, max_size_mb: float, precision: str) -> bool:
        return self.bytes(precision) <= max_size_mb * 1_000_000


def _measure(model: nn.Module, name: str) -> StudentSize:
    return StudentSize(name=name, params=sum(p.numel() for p in model.parameters()),
                       fp32_bytes=state_dict_bytes(model, "fp32"), fp16_bytes=state_dict_bytes(model, "fp16"))


@lru_cache(maxsize=None)
def student_size(name: str, num_classes: int, image_size: int) -> StudentSize:
    """Parameters and exported sizes of a student, known from the architecture before any training."""
    key = _cache_key(name, num_classes, image_size)
    cached = _from_cache(_read_cache().get(key), name) if key else None
    if cached is not None:
        return cached
    with torch.device("meta"):
        model = create_student(name, num_classes, image_size)
    size = _measure(model, name)
    if key:
        _write_cache(key, size)
    return size


def arch_params(arch: str, num_classes: int, image_size: int) -> int | None:
    """Parameter count of any `model_from_arch` architecture (a student, a timm name, a user's class), counted on
    the meta device; None when it cannot be built there."""
    if arch in STUDENTS:
        return student_size(arch, num_classes, image_size).params
    try:
        with torch.device("meta"):
            model = model_from_arch(arch, num_classes, image_size)
    except Exception:  # an arch that cannot be built on the meta device: checked where it is loaded
        return None
    return sum(p.numel() for p in model.parameters())


def fitting_students(candidates: list[str], num_classes: int, image_size: int, max_size_mb: float,
                     precision: str) -> tuple[list[str], list[StudentSize]]:
    """Split candidates into names that fit the limit and sizes of those that don't."""
    fit, over = [], []
    for name in candidates:
        size = student_size(name, num_classes, image_size)
        (fit.append(name) if size.fits(max_size_mb, precision) else over.append(size))
    return fit, over


def select_students(cfg, num_classes: int) -> tuple[list[str], list[StudentSize]]:
    """Candidates (or space.student's choices) that fit max_size_mb in student.precision; none -> exit 2."""
    s = cfg.student
    chosen = cfg.search.space.student
    if chosen is None:
        names = s.candidates
    else:  # a search_space.Dist over students, or one fixed student
        names = chosen.values_to_check() if hasattr(chosen, "values_to_check") else [chosen]
    fit, over = fitting_students(list(names), num_classes, cfg.data.image_size, s.max_size_mb, s.precision)
    if not fit:
        sizes = ", ".join(f"{o.name} {o.bytes(s.precision) / 1e6:.1f} MB" for o in over)
        raise KdsearchError(f"student.max_size_mb {s.max_size_mb:g}: no candidate fits in {s.precision} ({sizes}); "
                            "raise the limit, set student.precision: fp16, or add smaller student.candidates")
    return fit, over


# --------------------------------------------------------------------------- the size cache


def cache_path() -> Path:
    return user_cache_dir() / "student_sizes.json"


@cache
def _code_version() -> str:
    """What a built-in student's size depends on: the libraries that build it and kdsearch's own definitions."""
    parts = []
    for package in ("torch", "torchvision", "timm"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} -")
    parts.append("students.py " + hashlib.sha256(Path(__file__).with_name("students.py").read_bytes()).hexdigest()[:16])
    return ", ".join(parts)


def _cache_key(name: str, num_classes: int, image_size: int) -> str | None:
    """Only kdsearch's own students are cached: a plugin's student may change without any version changing."""
    if name not in STUDENTS or STUDENTS[name].__module__ != "kdsearch.students":
        return None
    return f"{name} {num_classes} classes {image_size}px; {_code_version()}"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_cache(entry, name: str) -> StudentSize | None:
    """A cache entry as a StudentSize; None for anything else (an older layout, a damaged or edited file)."""
    numbers = ("params", "fp32_bytes", "fp16_bytes")
    if not isinstance(entry, dict) or entry.get("name") != name or \
            not all(type(entry.get(k)) is int and entry[k] > 0 for k in numbers):
        return None
    return StudentSize(name=name, **{k: entry[k] for k in numbers})


def _write_cache(key: str, size: StudentSize) -> None:
    """Merge one entry in, atomically (a concurrent writer may drop an entry: it is measured again next time).
    A cache that cannot be written is not an error: sizes are then measured each time."""
    path = cache_path()
    data = _read_cache()
    data[key] = asdict(size)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.debug("student size cache %s not written: %s", path, e)

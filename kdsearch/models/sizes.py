"""What a student's files weigh before any training: the weights file (`cast_state_dict`, exact, on the meta device)
and the shipped TorchScript file in each format (`file_bytes`, measured once on an untrained build), which the size
limit applies to.

The size limit (the contract: "the exported weights file, in student.precision") is the byte count of
`torch.save(cast_state_dict(model, precision))`. `student_size` knows it without building weights: the model is
built on PyTorch's meta device (no memory, no initialisation), and `torch.save` writes storages of the same
shapes and dtypes, allocated but never written, into a byte counter. Sizes of the built-in students are kept in
`~/.cache/kdsearch/student_sizes.json` under the torch/torchvision/timm versions and a hash of `students.py`, so
once a size is known `validate` and `list-models` need not import torchvision or timm at all (about half of their
time on a cold start).

The size limit applies to the file that ships: a (student, format) pair fits when its TorchScript file
(`deployed.FILE`, in fp32, fp16 or int8) is at most student.max_size_mb. That file holds the same tensors as the
weights file plus the traced code, so the weights file then fits too. Its size does not depend on the weights'
values, so it is measured once, on an untrained build (int8: calibrated on one random batch), and cached beside the
weights sizes. It can differ from a trial's own file by a few kB of names (TorchScript calls a class traced again in
one process `___torch_mangle_N`); each trial reports its own file's size and export checks the written files again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..core.errors import KdsearchError
from ..core.io import user_cache_dir
from .deployed import DTYPES, as_format, script_bytes
from .quantize import why_not_int8
from .students import STUDENTS, create_student, model_from_arch

log = logging.getLogger(__name__)


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
    file whose stem has as many letters as "archive", as `deployed.WEIGHTS_FILE`'s "student" has.
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


MEASURED_EVENT = "kdsearch.sizes.measure"
"""The audit event (`sys.audit`) raised each time a student is built to weigh its files: (name, formats). Audit
hooks see it in every process, which is how tests/test_plan.py counts the measurements a command makes."""
COUNTED_EVENT = "kdsearch.sizes.count"
"""The same when a student's weights are counted on the meta device (`student_size`): (name,)."""

@lru_cache(maxsize=None)
def student_size(name: str, num_classes: int, image_size: int) -> StudentSize:
    """Parameters and exported sizes of a student, known from the architecture before any training."""
    key = _cache_key(name, num_classes, image_size)
    cached = _from_cache(_read_cache().get(key), name) if key else None
    if cached is not None:
        return cached
    sys.audit(COUNTED_EVENT, name)
    with torch.device("meta"):
        model = create_student(name, num_classes, image_size)
    size = _measure(model, name)
    if key:
        _write_cache({key: asdict(size)})
    return size


_known: dict[tuple[str, int, int, str], int | None] = {}  # this process's measurements and cache reads


def shipped_file_bytes(name: str, num_classes: int, image_size: int, formats: Iterable[str]) -> dict[str, int | None]:
    """Bytes of the student's shipped TorchScript file in each of `formats` (deployed.as_format + script_bytes);
    None where the student cannot be that format (int8 without a quantizable twin). The formats not known yet (in
    this process, or in the disk cache) are measured together on one untrained build: a student is built at most
    once per process, whatever the formats asked."""
    key = _cache_key(name, num_classes, image_size)
    cached: dict | None = None  # the disk cache, read once and only when this process does not know a format
    out, missing = {}, []
    for fmt in dict.fromkeys(formats):
        memo = (name, num_classes, image_size, fmt)
        if memo in _known:
            out[fmt] = _known[memo]
            continue
        if fmt == "int8" and why_not_int8(name) is not None:
            out[fmt] = _known[memo] = None
            continue
        if cached is None:
            cached = _read_cache() if key else {}
        entry = cached.get(f"{key}; {fmt} file")
        if isinstance(entry, dict) and entry.get("name") == name and type(entry.get("file_bytes")) is int \
                and entry["file_bytes"] > 0:
            out[fmt] = _known[memo] = entry["file_bytes"]
        else:
            missing.append(fmt)
    if missing:
        sys.audit(MEASURED_EVENT, name, tuple(missing))
        torch.manual_seed(0)
        model = create_student(name, num_classes, image_size).eval()
        px = _probe_size(name, num_classes, image_size)
        calibration = [torch.rand(2, 3, px, px)]
        measured = {fmt: len(script_bytes(as_format(model, name, fmt, num_classes, calibration), px))
                    for fmt in missing}
        for fmt, n in measured.items():
            out[fmt] = _known[(name, num_classes, image_size, fmt)] = n
        if key:
            _write_cache({f"{key}; {fmt} file": {"name": name, "file_bytes": n} for fmt, n in measured.items()})
    return out


def file_bytes(name: str, num_classes: int, image_size: int, fmt: str) -> int | None:
    """`shipped_file_bytes` for one format."""
    return shipped_file_bytes(name, num_classes, image_size, (fmt,))[fmt]


PROBE_PX = 32
"""The image side an untrained build is traced at to size its file, when its weights do not depend on the image
size (the convolutional students): the file holds weights and code, not activations, and a 224-px forward of a
CIFAR-stem ResNet costs about 50 times a 32-px one. Measured: the same bytes at 224 and 32 px in fp32, within 64
bytes in int8 (ShuffleNetV2, MobileNetV3-L, EfficientNet-B0, ResNet-8)."""


def _probe_size(name: str, num_classes: int, image_size: int) -> int:
    """PROBE_PX when the student's tensors have the same shapes at both sizes (on the meta device), else the image
    size itself (a ViT's position embedding grows with the image)."""
    if image_size <= PROBE_PX:
        return image_size
    with torch.device("meta"):
        big = create_student(name, num_classes, image_size).state_dict()
        small = create_student(name, num_classes, PROBE_PX).state_dict()
    same = big.keys() == small.keys() and all(big[k].shape == small[k].shape for k in big)
    return PROBE_PX if same else image_size


def fits(name: str, num_classes: int, image_size: int, fmt: str, max_size_mb: float) -> bool:
    """The student's shipped file in `fmt` exists and is at most `max_size_mb` (MB = 1,000,000 bytes)."""
    n = file_bytes(name, num_classes, image_size, fmt)
    return n is not None and n <= max_size_mb * 1_000_000


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


@dataclass(frozen=True)
class Deployments:
    """The (student, format) pairs a search may train: those whose shipped file fits student.max_size_mb."""

    pairs: list[tuple[str, str]]
    """(student, format) pairs that fit, students in the config's order, formats in the space's order."""
    over: list[tuple[str, str, int]]
    """(student, format, file bytes) of the pairs over the limit: never trained."""
    not_int8: dict[str, str]
    """Students offered without int8 (the space also offers a float format) -> why they cannot be int8."""
    file_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    """(student, format) -> its shipped file's bytes, measured once here for every pair above: what a trial
    reports as its size until its own file exists, and what MLflow tags each trial's run with."""

    @property
    def students(self) -> list[str]:
        """The students with at least one pair that fits, in order."""
        return list(dict.fromkeys(s for s, _ in self.pairs))


def searched_formats(cfg) -> list[str]:
    """The formats a search offers: search.space.precision's values, else student.precision."""
    p = cfg.search.space.precision
    if p is None:
        return [cfg.student.precision]
    return list(dict.fromkeys(p.values_to_check() if hasattr(p, "values_to_check") else [p]))


def select_deployments(cfg, num_classes: int) -> Deployments:
    """The candidates (or space.student's choices) in each searched format whose shipped file fits max_size_mb.
    A student that cannot be int8 is refused (exit 2, naming it and why) when int8 is the only format offered, and
    is offered in the float formats only when there are some; none fits -> exit 2."""
    s = cfg.student
    chosen = cfg.search.space.student
    if chosen is None:
        names = list(s.candidates)
    else:  # a config.space.Dist over students, or one fixed student
        names = list(chosen.values_to_check() if hasattr(chosen, "values_to_check") else [chosen])
    formats = searched_formats(cfg)
    not_int8 = {n: r for n in names if "int8" in formats and (r := why_not_int8(n)) is not None}
    if not_int8 and formats == ["int8"]:
        key = "student.precision" if cfg.search.space.precision is None else "search.space.precision"
        said = "; ".join(f"{n}: {r}" for n, r in not_int8.items())
        raise KdsearchError(f"{key} int8: {', '.join(not_int8)} cannot be int8 ({said}); remove "
                            f"{'it' if len(not_int8) == 1 else 'them'} from the students, or offer a float format "
                            "too (search.space.precision: {choice: [fp32, int8]})")
    pairs, over, measured = [], [], {}
    for name in names:
        offered = [f for f in formats if not (f == "int8" and name in not_int8)]
        for fmt, n in shipped_file_bytes(name, num_classes, cfg.data.image_size, offered).items():
            measured[(name, fmt)] = n
            if fits(name, num_classes, cfg.data.image_size, fmt, s.max_size_mb):
                pairs.append((name, fmt))
            else:
                over.append((name, fmt, n))
    if not pairs:
        sizes = ", ".join(f"{n} {f} {b / 1e6:.1f} MB" for n, f, b in over)
        hint = "int8" if "int8" not in formats else "a smaller one"
        raise KdsearchError(f"student.max_size_mb {s.max_size_mb:g}: no candidate fits ({sizes}); raise the limit, "
                            f"offer {hint} (student.precision, or search.space.precision: {{choice: [...]}}), or "
                            "add smaller student.candidates")
    return Deployments(pairs, over, not_int8, measured)


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
    for module in ("students.py", "quantize.py", "deployed.py"):  # how a student is built, quantized and traced
        parts.append(f"{module} " + hashlib.sha256(Path(__file__).with_name(module).read_bytes()).hexdigest()[:16])
    return ", ".join(parts)


def _cache_key(name: str, num_classes: int, image_size: int) -> str | None:
    """Only kdsearch's own students are cached: a plugin's student may change without any version changing."""
    if name not in STUDENTS or STUDENTS[name].__module__ != "kdsearch.models.students":
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


def _write_cache(entries: dict[str, dict]) -> None:
    """Merge entries in, atomically (a concurrent writer may drop an entry: it is measured again next time).
    A cache that cannot be written is not an error: sizes are then measured each time."""
    path = cache_path()
    data = {**_read_cache(), **entries}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.debug("student size cache %s not written: %s", path, e)

"""What a label means, shared by the data (which makes labels), the losses (which read them) and the export.

Class index i means the same class everywhere. The rule that turns a source's labels into indices 0..K-1 lives
here, once, for every source:

- text labels (a csv's `cat`, an image folder's subfolders) sort as text, unless `data.class_names` gives the
  order, naming exactly the labels present;
- integer labels (a csv of `0`..`10`, npz, idx, cifar10) keep their numbers: class i is label i, numerically, and
  `data.class_names` names them, one name per id;
- integer ids that are not 0..K-1 (a gap, or starting at 1) are refused, never counted as empty classes, unless
  `data.remap_labels: true` (or one class name per present id) maps them to consecutive indices in numeric order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable, Iterable

from .errors import KdsearchError

UNLABELED = -1
"""The label of a transfer image (data.label_budget's remainder, data.unlabeled): the teacher is its only signal."""

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ClassTable:
    index: dict[Hashable, int]
    """A label as the source gives it -> its class index."""
    names: list[str]
    """Class index -> name."""
    label_ids: list[int] | None
    """Class index -> the integer label id it came from (integer sources); None for text labels."""

    def as_json(self) -> list[dict]:
        """The table as labels.json and the model card carry it."""
        return [{"index": i, "class": n, **({"label_id": self.label_ids[i]} if self.label_ids else {})}
                for i, n in enumerate(self.names)]


def integer_labels(labels: Iterable[str]) -> bool:
    """Whether every label of a text source (a csv column) is an integer."""
    return all(_INTEGER.fullmatch(str(label).strip()) for label in labels)


def class_table(present: Iterable[Hashable], class_names: list[str] | None, remap: bool, where: str,
                text: bool = False) -> ClassTable:
    """The class table for the labels found in a source (see the module docstring); exit 2 naming the fix.
    `text`: the labels are names even when they look like numbers (an image folder's subfolders)."""
    present = set(present)
    if present and all(isinstance(v, int) for v in present):
        return _integer_table(present, class_names, remap, where)
    if not text and integer_labels(present):  # a csv column of integers, read as text
        ids = {int(str(v).strip()): v for v in present}
        table = _integer_table(set(ids), class_names, remap, where)
        return ClassTable({v: table.index[i] for i, v in ids.items()}, table.names, table.label_ids)
    labels = sorted(map(str, present))
    if class_names is not None:
        extra, missing = sorted(set(class_names) - set(labels)), sorted(set(labels) - set(class_names))
        if extra or missing or len(class_names) != len(labels):
            raise KdsearchError(f"data.class_names: must name exactly the {len(labels)} labels in {where}"
                                + (f"; not in the data: {', '.join(extra)}" if extra else "")
                                + (f"; missing: {', '.join(missing)}" if missing else "")
                                + ("; a name is repeated" if not extra and not missing else ""))
        labels = list(class_names)
    return ClassTable({label: i for i, label in enumerate(labels)}, labels, None)


def _integer_table(ids: set[int], class_names: list[str] | None, remap: bool, where: str) -> ClassTable:
    ordered = sorted(ids)
    consecutive = ordered == list(range(len(ordered)))
    named = class_names is not None and len(class_names) == len(ordered)
    if not consecutive and not (remap or named):
        missing = sorted(set(range(max(ordered) + 1)) - ids) if ordered[0] >= 0 else []
        gap = f"missing {', '.join(map(str, missing[:10]))}" if missing else f"from {ordered[0]}"
        raise KdsearchError(f"{where}: integer label ids {ordered[0]}..{ordered[-1]} are not 0..K-1 ({gap}); an "
                            "empty class would count in macro-F1. Set data.remap_labels: true (consecutive indices in "
                            f"numeric order), or give data.class_names one name per label id ({len(ordered)})")
    if class_names is not None and len(class_names) != len(ordered):
        raise KdsearchError(f"data.class_names: {len(class_names)} names for {len(ordered)} label ids "
                            f"({ordered[0]}..{ordered[-1]}) in {where}; give one name per label id")
    names = list(class_names) if class_names is not None else [str(i) for i in ordered]
    return ClassTable({i: k for k, i in enumerate(ordered)}, names, ordered)

"""A trial's configuration as Tune hands it over, read one way everywhere (config, search, figures, export)."""

from __future__ import annotations

import math
from typing import Any, Mapping

PAIR_KEY = "student_format"
"""When search.space.precision is searched, trials get one key for the (student, format) pair, "resnet34/int8",
drawn from the pairs that fit the size limit: a pair over the limit is never sampled, so never trained."""


def split_pair(values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's flat config with its PAIR_KEY (if any) as `student` and `precision`: the one reading of that key."""
    if PAIR_KEY not in values:
        return dict(values)
    student, fmt = str(values[PAIR_KEY]).rsplit("/", 1)
    return {**{k: v for k, v in values.items() if k != PAIR_KEY}, "student": student, "precision": fmt}


def same_value(x: Any, y: Any) -> bool:
    """Two hyperparameter values are the same (floats within rounding: Tune and Optuna pass them through JSON)."""
    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=1e-9)
    return x == y


def holds(config: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    """`config` has every value of `point` (a start point names the searched keys only)."""
    return all(same_value(config.get(k), v) for k, v in point.items())

"""The YAML search space as Ray Tune domains (OptunaSearch turns them into Optuna distributions)."""

from __future__ import annotations

from typing import Any

from ray import tune

from .config import Dist, Space


def _domain(v: Any) -> Any:
    if not isinstance(v, Dist):
        return v  # a fixed value: every trial gets it
    lo_hi = v.args
    return {
        "uniform": lambda: tune.uniform(*lo_hi),
        "loguniform": lambda: tune.loguniform(*lo_hi),
        "choice": lambda: tune.choice(list(v.choice)),
        "int": lambda: tune.randint(lo_hi[0], lo_hi[1] + 1),  # randint's upper bound is exclusive; ours is not
    }[v.kind]()


def tune_space(space: Space, students: list[str]) -> dict[str, Any]:
    """Every key of the space as a Tune domain; `student` ranges over the candidates that fit the size limit."""
    out = {name: _domain(v) for name, v in space.entries().items() if name != "student"}
    out["student"] = tune.choice(students) if len(students) > 1 else students[0]
    return out

"""The YAML search space as Ray Tune domains (OptunaSearch turns them into Optuna distributions)."""

from __future__ import annotations

from typing import Any

from ray import tune

from .config import Dist, Space
from .losses import start_settings


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


def start_points(space: Space, students: list[str]) -> list[dict[str, Any]]:
    """One configuration per loss in the space, at that loss's published settings (clipped to the space's
    ranges; a choice keeps its first value unless it offers the published one) and every other searched key at its
    midpoint; students taken in turn. For Optuna's enqueue (OptunaSearch's points_to_evaluate), which needs every
    searched key."""
    searched = {k: v for k, v in space.entries().items() if isinstance(v, Dist) and k != "student"}
    losses = space.loss.choice if isinstance(space.loss, Dist) else [space.loss]
    points = []
    for i, loss in enumerate(losses):
        start = {**start_settings(loss), "loss": loss}
        point = {k: _nearest(v, start[k]) if k in start else v.fixed_point() for k, v in searched.items()}
        if len(students) > 1:
            point["student"] = students[i % len(students)]
        points.append(point)
    return points


def _nearest(d: Dist, value: Any) -> Any:
    """`value` where the distribution allows it, else the closest value it does."""
    if d.choice is not None:
        return value if value in d.choice else d.fixed_point()
    lo, hi = d.args
    out = min(max(value, lo), hi)
    return int(round(out)) if d.kind == "int" else float(out)

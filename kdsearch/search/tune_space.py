"""The YAML search space as Ray Tune domains (OptunaSearch turns them into Optuna distributions)."""

from __future__ import annotations

from typing import Any

from ray import tune

from ..config import Dist, Space
from ..config.space import PAIR_KEY
from ..losses import start_settings


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


def tune_space(space: Space, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Every key of the space as a Tune domain, over the (student, format) pairs that fit the size limit: `student`
    (and `precision`, fixed) when the format is fixed, one PAIR_KEY over the pairs when it is searched."""
    out = {name: _domain(v) for name, v in space.entries().items() if name not in ("student", "precision")}
    for key, values in _pair_keys(space, pairs).items():
        out[key] = tune.choice(values) if len(values) > 1 else values[0]
    return out


def _pair_keys(space: Space, pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The keys a trial's (student, format) comes in, with their values."""
    if isinstance(space.precision, Dist):
        return {PAIR_KEY: [f"{s}/{f}" for s, f in pairs]}
    return {"student": list(dict.fromkeys(s for s, _ in pairs)), "precision": [pairs[0][1]]}


LOW_ALPHA = 0.25
"""The low-alpha hedge: mostly the labels, a little of the teacher (a teacher weaker than the students can become
is best used this way, and the papers' settings all sit at 0.5-0.9)."""


def start_points(space: Space, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The configurations Optuna tries first (OptunaSearch's points_to_evaluate, which needs every searched key):
    one per loss in the space, at that loss's published settings (clipped to the space's ranges; a choice keeps its
    first value unless it offers the published one), every other searched key at its midpoint, students (or
    (student, format) pairs) taken in turn; and right after the first, two hedges on its student and lr that
    bracket the teacher's usefulness: a no-KD control (alpha 0, no feature hints), when the space's alpha admits 0,
    and a low alpha (LOW_ALPHA)."""
    searched = {k: v for k, v in space.entries().items() if isinstance(v, Dist) and k not in ("student", "precision")}
    losses = space.loss.choice if isinstance(space.loss, Dist) else [space.loss]
    keys = {k: v for k, v in _pair_keys(space, pairs).items() if len(v) > 1}
    points = []
    for i, loss in enumerate(losses):
        start = {**start_settings(loss), "loss": loss}
        point = {k: _nearest(v, start[k]) if k in start else v.fixed_point() for k, v in searched.items()}
        point.update({k: v[i % len(v)] for k, v in keys.items()})
        points.append(point)
    alpha = searched.get("alpha")
    if alpha is None:
        return points
    hedges = []
    if _admits(alpha, 0.0):
        control = {**points[0], "alpha": _nearest(alpha, 0.0)}
        if "feature_weight" in searched and _admits(searched["feature_weight"], 0.0):
            control["feature_weight"] = _nearest(searched["feature_weight"], 0.0)
        hedges.append(control)
    low = {**points[0], "alpha": _nearest(alpha, LOW_ALPHA)}
    if all(low["alpha"] != p["alpha"] for p in points + hedges):
        hedges.append(low)
    return points[:1] + hedges + points[1:]


def _admits(d: Dist, value: float) -> bool:
    return value in d.choice if d.choice is not None else d.args[0] <= value <= d.args[1]


def _nearest(d: Dist, value: Any) -> Any:
    """`value` where the distribution allows it, else the closest value it does."""
    if d.choice is not None:
        return value if value in d.choice else d.fixed_point()
    lo, hi = d.args
    out = min(max(value, lo), hi)
    return int(round(out)) if d.kind == "int" else float(out)


def kd_pair(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The no-KD control among the start points and the KD point it copies (`start_points` makes the control from
    the first point, changing alpha and feature hints alone): the pair whose difference the search reports as
    "KD added". [] without a control."""
    control = next((p for p in points if p.get("alpha") == 0), None)
    return [] if control is None or points[0] is control else [points[0], control]

"""What a search's trials say: how each ended and which is best. One rule, read by run, export and report.

A trial's epochs before its last are scored on the rung subset of val (`search.rung_val_size`) and say so with
`val_full: False` (a val split no larger than the subset is scored whole at every epoch: whole is not finished).
Which figures may be compared, and the search's best, are core.figures' rules.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")

# The metrics a search can optimise, each with the direction that is "better": ASHA, Optuna, export and report
# all read it from here. Each is a field of engine.Metrics without the "val_" prefix.
METRIC_MODES: dict[str, str] = {"val_macro_f1": "max", "val_accuracy": "max", "val_loss": "min"}
OBJECTIVE_MODES: dict[str, str] = {**METRIC_MODES, "size_mb": "min", "latency_ms": "min"}
"""What search.objectives and the Pareto front may name: the metrics, the shipped file's size and its CPU latency."""

# What a trial reports after each epoch; the scalars are also MLflow metrics of its child run.
EPOCH_SCALARS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "epoch_seconds", "eval_seconds", "size_mb")
SHIPPED_SCALARS = ("latency_ms", "val_loss_float", "val_accuracy_float", "val_macro_f1_float", "deploy_seconds")
"""The last epoch's extra figures (distill.Distiller.deploy): its val_* are the shipped file's, scored on the CPU;
val_*_float the float model's; latency_ms the file's median CPU latency at batch 1 on one thread."""
REPORTED = ("epoch", *EPOCH_SCALARS, *SHIPPED_SCALARS, "val_per_class_f1", "val_full", "val_images",
            "val_split_images", "format",
            "scored", "cpu", "diverged")
LOGGED = (*EPOCH_SCALARS, *SHIPPED_SCALARS, *(f"rung_{k}" for k in EPOCH_SCALARS if k.startswith("val_")),
          "teacher_forward_passes")
"""Per-epoch scalars a trial's child run gets in MLflow (rung_val_*: epochs scored on the rung subset)."""


def metric_value(metrics: Any, metric: str) -> float:
    """The value of a search metric (a METRIC_MODES name) in evaluated `engine.Metrics`."""
    return float(getattr(metrics, metric.removeprefix("val_")))


def on_full_split(result: dict[str, Any]) -> bool:
    """Whether a reported result scored the whole val split (results without the flag did)."""
    return bool(result.get("val_full", True))


ENDINGS = ("completed", "stopped_early", "budget_cut", "diverged")
"""How a trial that did not error ended (MLflow's kdsearch.ended tag, the live table, the run summary):
stopped_early = ASHA stopped it at a rung; budget_cut = the search's end (search.time_budget_s) stopped it."""


def diverged(result: dict[str, Any]) -> bool:
    """The training loss (or the val loss) became NaN or infinite: the trial stopped there and is never best."""
    return bool(result.get("diverged")) or any(isinstance(result.get(k), float) and not math.isfinite(result[k])
                                               for k in ("train_loss", "val_loss"))


def ended(result: dict[str, Any], max_epochs: int, cut: bool = False) -> str:
    """completed | stopped_early | budget_cut | diverged, from a trial's last reported result; `cut`: Tune stopped
    it because the search ended (its time budget), not because ASHA said so."""
    if diverged(result):
        return "diverged"
    if int(result.get("training_iteration", 0)) >= max_epochs:
        return "completed"
    return "budget_cut" if cut else "stopped_early"


def finished(result: dict[str, Any], max_epochs: int) -> bool:
    """A trial's last result is a finished trial's: all epochs ran and the last one scored the shipped file on the
    whole val split (core.figures.Figure.finished says the same of a figure)."""
    return (ended(result, max_epochs) == "completed" and on_full_split(result)
            and str(result.get("scored", "")).endswith(" file"))


def _scored(result: dict[str, Any] | None, metric: str) -> bool:
    """The result has a finite `metric` and did not diverge: it can be ranked."""
    return bool(result) and metric in result and not diverged(result) and math.isfinite(float(result[metric]))


def ranked(items: Iterable[T], result: Callable[[T], dict[str, Any]], metric: str, mode: str) -> list[T]:
    """Items best first on their result's `metric` (the `mode` direction; a tie goes to the smaller shipped file,
    then to the lower CPU latency, then keeps the order); items that cannot be ranked (no finite metric, diverged)
    come last, in their order."""
    items = list(items)
    sign = -1.0 if mode == "max" else 1.0

    def key(i: T) -> tuple[float, float, float]:  # ties on the metric: the smaller shipped file, then the faster
        r = result(i)
        return sign * float(r[metric]), float(r.get("size_mb", math.inf)), float(r.get("latency_ms", math.inf))

    good = sorted((i for i in items if _scored(result(i), metric)), key=key)
    return good + [i for i in items if not _scored(result(i), metric)]

"""A search's finished trials as an Optuna study, rebuilt after the search: its Pareto front and which
hyperparameters mattered, from Optuna's own `best_trials` and importance evaluators.

Only finished trials enter: run all their epochs, scored on the whole val split as the shipped file, not diverged.
A trial ASHA or the time budget stopped holds a rung-subset score of a half-trained float student, not a point of the
trade-off. The objectives are `search.objectives`, or for a single-metric search the metric, the shipped file's
size_mb and its CPU latency_ms: the front then shows what each extra MB or millisecond buys.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

import optuna

from ..config.space import Dist, Space, split_pair
from ..core import results
from ..core.results import OBJECTIVE_MODES

T = TypeVar("T")

IMPORTANCE_MIN_TRIALS = 10
"""Finished trials before importances are shown: fewer leave the evaluators a handful of points to describe."""
PED_ANOVA_TOP_TRIALS = 3
"""PED-ANOVA compares the best `target_quantile` of the trials with all of them; Optuna's 0.1 suits hundreds of
trials, and of 10 would keep one. The quantile is raised so the best part holds at least this many trials."""


def _quantile(n: int) -> float:
    """PED-ANOVA's top quantile for n finished trials: Optuna's 0.1, raised so the top holds PED_ANOVA_TOP_TRIALS."""
    return max(0.1, PED_ANOVA_TOP_TRIALS / n)


def _evaluators(n: int) -> dict[str, Any]:
    return {"ped_anova": optuna.importance.PedAnovaImportanceEvaluator(target_quantile=_quantile(n)),
            "fanova": optuna.importance.FanovaImportanceEvaluator(seed=0)}


def objectives(cfg) -> list[str]:
    """What the front trades off: search.objectives, else the metric, size_mb and latency_ms."""
    return list(cfg.search.objectives or [cfg.search.metric, "size_mb", "latency_ms"])


def finished(result: dict[str, Any], names: list[str], max_epochs: int) -> bool:
    """The result is a finished trial's last: all epochs, whole val split, not diverged, every objective finite."""
    return bool(result) and results.finished(result, max_epochs) and all(
        isinstance(result.get(n), (int, float)) and math.isfinite(result[n]) for n in names)


@dataclass
class FinishedStudy:
    study: optuna.Study
    objectives: list[str]
    ids: dict[int, str]
    """Optuna trial number -> Ray trial id."""
    pairs: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(student, format) -> the size_mb and latency_ms the front compares (`pair_medians`)."""
    _importances: dict = field(default_factory=dict, repr=False)  # computed once (fANOVA fits forests)

    @property
    def front(self) -> list[str]:
        """Trial ids of the non-dominated finished trials, best on the first objective first."""
        if not self.study.trials:
            return []
        first = 1 if OBJECTIVE_MODES[self.objectives[0]] == "max" else -1
        return [self.ids[t.number] for t in sorted(self.study.best_trials, key=lambda t: -first * t.values[0])]

    def importances(self) -> dict[str, dict[str, dict[str, float]]] | None:
        """objective -> evaluator (ped_anova, fanova) -> parameter -> importance (summing to 1), for the searched
        parameters that took more than one value; an evaluator whose raw importances are all 0 (nothing to
        separate: the top quantile ties the rest) is left out rather than normalised to equal shares, and an
        objective fixed by the (student, format) pair (PAIR_FIGURES) is not fitted ({}). None with fewer than
        IMPORTANCE_MIN_TRIALS trials."""
        if len(self.study.trials) < IMPORTANCE_MIN_TRIALS:
            return None
        if "found" not in self._importances:
            self._importances["found"] = self._evaluate()
        return {o: {e: v for e, v in by.items() if v} for o, by in self._importances["found"].items()}

    def _evaluate(self) -> dict[str, dict[str, dict[str, float]]]:
        """objective -> evaluator -> parameter -> normalised importance; {} for an evaluator with nothing to
        separate; no entry for an objective that is fixed or the same for every trial."""
        varied = [p for p in self.study.trials[0].distributions
                  if len({t.params[p] for t in self.study.trials}) > 1]
        if not varied:
            return {}
        out: dict[str, dict[str, dict[str, float]]] = {}
        for i, name in enumerate(self.objectives):
            out[name] = {}
            if name in PAIR_FIGURES or len({t.values[i] for t in self.study.trials}) == 1:
                continue  # a property of the (student, format) pair, or every trial scored the same
            # PED-ANOVA explains reaching *low* target values: a maximised objective is negated
            sign = -1.0 if OBJECTIVE_MODES[name] == "max" else 1.0
            for evaluator, make in _evaluators(len(self.study.trials)).items():
                with warnings.catch_warnings():  # their notes on small studies: the lines say the trial count
                    warnings.simplefilter("ignore", UserWarning)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # normalize=False
                    raw = optuna.importance.get_param_importances(
                        self.study, evaluator=make, params=varied, target=lambda t, i=i: sign * t.values[i],
                        normalize=False)
                total = sum(raw.values())
                out[name][evaluator] = {k: float(v) / total for k, v in sorted(raw.items(), key=lambda kv: -kv[1])
                                        } if total > 0 else {}
        return out

    def importance_lines(self) -> list[str]:
        """What mattered, one line per objective and evaluator, each saying the trial count (and PED-ANOVA's top
        quantile); or why there is nothing to show."""
        found = self.importances()
        n = len(self.study.trials)
        if found is None:
            return [f"importances: {n} finished trials; they need {IMPORTANCE_MIN_TRIALS} "
                    f"({IMPORTANCE_MIN_TRIALS - n} more)"]
        if not found:
            return ["importances: no searched hyperparameter took more than one value"]
        q = _quantile(n)
        top = math.ceil(round(q * n, 9))  # rounded first: 0.3 x 10 is 3.0000000000000004 in floats
        setting = {"ped_anova": f"ped_anova, top quantile {q:.2f} = the best {top} of {n} finished trials",
                   "fanova": f"fanova, {n} finished trials"}
        lines = []
        for objective, raw in self._importances["found"].items():
            if objective in PAIR_FIGURES:
                lines.append(f"importance for {objective}: not fitted, it is fixed by the (student, format) pair "
                             "(see the Pareto front)")
                continue
            if not raw:
                lines.append(f"importance for {objective}: every finished trial has the same {objective}")
            for evaluator, values in raw.items():
                if not values:
                    lines.append(f"importance for {objective} ({setting[evaluator]}): nothing to separate (every "
                                 "raw importance is 0: the top quantile ties the rest); none shown")
                else:
                    lines.append(f"importance for {objective} ({setting[evaluator]}): "
                                 + ", ".join(f"{p} {v:.2f}" for p, v in values.items()))
        return lines


def rebuild(items: Iterable[T], cfg, trial_id: Callable[[T], str] = lambda t: t.trial_id,
            config: Callable[[T], dict[str, Any]] = lambda t: t.config,
            result: Callable[[T], dict[str, Any]] = lambda t: t.last_result) -> FinishedStudy:
    """The finished trials among `items` as a study with one direction per objective. The accessors read Ray Tune's
    trials by default; a trial whose config has no format ships in student.precision."""
    names = objectives(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if OBJECTIVE_MODES[n] == "max" else "minimize"
                                            for n in names])
    done = [i for i in items if finished(result(i), names, cfg.search.max_epochs)]
    points = [{"precision": cfg.student.precision, **split_pair(config(i))} for i in done]
    distributions = _distributions(cfg.search.space, points)
    shared = pair_medians(done, points, result)
    ids = {}
    for number, (item, point) in enumerate(zip(done, points)):
        pair = point["student"], point["precision"]
        values = [shared[pair][n] if n in shared[pair] else float(result(item)[n]) for n in names]
        study.add_trial(optuna.trial.create_trial(
            params={k: _value(point[k], d) for k, d in distributions.items()}, distributions=distributions,
            values=values))
        ids[number] = trial_id(item)
    return FinishedStudy(study, names, ids, shared)


PAIR_FIGURES = ("size_mb", "latency_ms")
"""What a (student, format) pair has, not a trial: its file's size and CPU latency do not depend on the weights."""


def pair_medians(items: list, points: list[dict[str, Any]],
                 result: Callable) -> dict[tuple[str, str], dict[str, float]]:
    """(student, format) -> the median of its finished trials' size_mb and latency_ms. Each trial measures its own
    file: the sizes differ by a few bytes of TorchScript's names (sizes.py), the latencies by the timing noise of
    the trials running beside it. The front compares pairs on these medians, not on that noise; each trial's own
    figures stay logged."""
    seen: dict[tuple[str, str], dict[str, list[float]]] = {}
    for item, point in zip(items, points):
        for name in PAIR_FIGURES:
            if isinstance(result(item).get(name), (int, float)):
                seen.setdefault((point["student"], point["precision"]), {}).setdefault(name, []).append(
                    float(result(item)[name]))
    return {pair: {n: statistics.median(v) for n, v in figures.items()} for pair, figures in seen.items()}


def _distributions(space: Space, points: list[dict[str, Any]]) -> dict[str, Any]:
    """An Optuna distribution per hyperparameter the trials carry: the space's range for a numeric one, the values
    seen for a choice (and for the student and its format)."""
    entries = space.entries()
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in points for k in p):
        d = entries.get(key)
        if key in ("student", "precision") or (isinstance(d, Dist) and d.kind == "choice"):
            out[key] = optuna.distributions.CategoricalDistribution(sorted({str(p[key]) for p in points}))
        elif isinstance(d, Dist) and d.kind == "int":
            out[key] = optuna.distributions.IntDistribution(*d.args)
        elif isinstance(d, Dist):
            out[key] = optuna.distributions.FloatDistribution(*d.args, log=d.kind == "loguniform")
    return out  # fixed values are not hyperparameters of the search


def _value(v: Any, d: Any) -> Any:
    return str(v) if isinstance(d, optuna.distributions.CategoricalDistribution) else v

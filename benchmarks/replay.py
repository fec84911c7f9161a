"""Searchers replayed against a learning-curve archive in simulated time: does kdsearch's search find a better
student sooner than random search and than the recipe without search? Many seeds in minutes instead of hours
(Syne Tune's blackbox repository + simulator backend, OptunaHub's AsyncOptBenchmarkSimulator, HPOBench).

    python benchmarks/replay.py [--curves benchmarks/curves] [--seeds 30] [--workers 2] [--budget-trials 10]
                                [--methods kdsearch,random,recipe] [--json benchmarks/results/replay.json]
    python benchmarks/replay.py --methods all     # the default comparison and every candidate change

What runs is kdsearch's own search objects, as `kdsearch run` builds them (search/tuner.py): the TPE sampler
(`tpe_sampler`), the searcher wrapper with its tell semantics (`HonestOptunaSearch`: finished trials COMPLETE, the
rest PRUNED with their values), the start points (`tune_space.start_points`) and the ASHA that keeps the no-KD pair
(`PairedASHA`), told in the order Ray Tune's controller tells them (a result ASHA stops a trial on goes to the
scheduler's and the searcher's `on_trial_complete`, not to `on_trial_result`). Time is simulated: k workers, each
epoch taking the seconds the archive measured for it; the search stops at the time budget (search.time_budget_s:
running trials are cut). No existing simulator drives Ray Tune's Searcher and TrialScheduler objects (Syne Tune's
drives its own schedulers, OptunaHub's drives an Optuna sampler without Ray's tell order or ASHA), hence the small
event loop here.

A configuration the archive does not hold (TPE samples continuous values) is answered by a surrogate fitted on the
archive: scikit-learn's nearest-neighbour regressor (k 1, see K) over the space normalised to [0, 1]
(log scale for loguniform keys), categorical keys one-hot and weighted so that neighbours share them (student, loss),
predicting the whole curve, the epochs' seconds and the test macro-F1 — Syne Tune's blackbox-repository surrogate.
Its accuracy on held-out archive lines (5-fold) is reported per task.

Methods: `kdsearch` (the default search), `random` (Ray's random sampling of the same space, the same ASHA),
`recipe` (KD at T 4, alpha 0.9 for each student, to max_epochs, best on val kept; no search), and candidate changes,
each kdsearch with one setting changed (CANDIDATES). The budget is --budget-trials times a full trial's median time.
Per method: the pick's whole-split val macro-F1 at 1/4, 1/2 and the whole budget (the pick: the best finished
trial, else the best of those that ran the most epochs, as core.figures.chosen), its test macro-F1, and the
fraction of the budget it took to reach random search's final pick value of the same seed (1.0 when never).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CURVES = REPO / "benchmarks" / "curves"
FRACTIONS = ("0.25", "0.5", "1.0")
DEFAULT_METHODS = ("kdsearch", "random", "recipe")
NUM_SAMPLES = 500  # the time decides, as in benchmarks/search_quality.py


# --------------------------------------------------------------------------- the archive and its surrogate


@dataclass
class Archive:
    task: str
    header: dict[str, Any]
    lines: list[dict[str, Any]]
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def max_epochs(self) -> int:
        return int(self.header["max_epochs"])

    def trial_seconds(self) -> float:
        """A full trial's median time (every epoch, seconds as measured)."""
        return statistics.median(sum(p[2] for p in line["curve"]) for line in self.lines)


def key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def read_archive(path: Path) -> Archive:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header, lines = rows[0], rows[1:]
    n = int(header["max_epochs"])
    bad = [i for i, r in enumerate(lines, 2) if len(r["curve"]) != n]
    if bad:
        raise SystemExit(f"{path}: lines {bad[:5]} do not run to max_epochs {n}")
    archive = Archive(header.get("task", path.stem), header, lines)
    archive.by_key = {key(r["config"]): r for r in lines}
    return archive


K = 1
"""Neighbours the surrogate averages. One, as Syne Tune's examples use: every answer is a curve that was trained,
with its own val/test noise, like the archived lines a start point hits exactly (an average of several would
smooth the winner's curse away for sampled points only and favour them), and on held-out lines it is as close as
3 or 5 (docs/measured.md)."""


class Surrogate:
    """k-nearest neighbours over the normalised space (see the module docstring), fitted on an archive's lines."""

    CATEGORY_WEIGHT = 10.0  # one differing category outweighs every numeric key's whole range

    def __init__(self, dists: dict[str, Any], lines: list[dict[str, Any]], k: int = K):
        from sklearn.neighbors import KNeighborsRegressor

        self.dists, self.n = dists, len(lines[0]["curve"])
        x = np.array([self.features(r["config"]) for r in lines])
        y = np.array([self.targets(r) for r in lines])
        self.model = KNeighborsRegressor(n_neighbors=min(k, len(lines)), weights="distance").fit(x, y)

    def features(self, config: dict[str, Any]) -> list[float]:
        from optuna.distributions import CategoricalDistribution

        out = []
        for name, d in self.dists.items():
            v = config[name]
            if isinstance(d, CategoricalDistribution):
                out += [self.CATEGORY_WEIGHT * (v == c) for c in d.choices]
            elif d.log:
                out.append((math.log(v) - math.log(d.low)) / (math.log(d.high) - math.log(d.low)))
            else:
                out.append((v - d.low) / (d.high - d.low))
        return out

    @staticmethod
    def targets(line: dict[str, Any]) -> list[float]:
        return [p[1] for p in line["curve"]] + [p[2] for p in line["curve"]] + [line["test_macro_f1"]]

    def line(self, config: dict[str, Any]) -> dict[str, Any]:
        y = self.model.predict(np.array([self.features(config)]))[0]
        n = self.n
        return {"config": config, "curve": [[e + 1, float(y[e]), float(y[n + e])] for e in range(n)],
                "test_macro_f1": float(y[-1]), "kind": "surrogate"}


def held_out(dists: dict[str, Any], lines: list[dict[str, Any]], folds: int = 5, k: int = K) -> dict[str, float]:
    """The surrogate on lines it was not fitted on (k-fold over the archive): mean absolute error of the final val
    macro-F1 and of the test macro-F1, and the rank correlation of the predicted final val with the true one."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    true, pred, test_true, test_pred = [], [], [], []
    for fit, hold in KFold(folds, shuffle=True, random_state=0).split(lines):
        s = Surrogate(dists, [lines[i] for i in fit], k)
        for i in hold:
            p = s.line(lines[i]["config"])
            true.append(lines[i]["curve"][-1][1])
            pred.append(p["curve"][-1][1])
            test_true.append(lines[i]["test_macro_f1"])
            test_pred.append(p["test_macro_f1"])
    return {"k": k, "folds": folds, "final_val_mae": float(np.mean(np.abs(np.array(true) - pred))),
            "test_mae": float(np.mean(np.abs(np.array(test_true) - test_pred))),
            "final_val_spearman": float(spearmanr(true, pred).statistic)}


# --------------------------------------------------------------------------- kdsearch's search objects


def task_config(archive: Archive, seed: int, workers: int, budget_s: float, **search: Any):
    """The kdsearch Config a search of this task would run under (its space from the archive's header)."""
    from kdsearch.config import Config
    from kdsearch.config.sections import SearchConfig

    space = {k: v for k, v in archive.header["space"].items() if k != "student"}
    students = archive.header["space"]["student"]["choice"]
    grace = min(SearchConfig.model_fields["grace_period"].default, archive.max_epochs)  # kdsearch's, where it fits
    base = {"num_samples": NUM_SAMPLES, "max_concurrent": workers, "max_epochs": archive.max_epochs,
            "grace_period": grace, "time_budget_s": budget_s, "metric": archive.header["metric"], "space": space}
    tpe = search.pop("tpe", {})
    return Config.model_validate({"name": f"replay-{archive.task}", "seed": seed, "student": {"candidates": students},
                                  "search": {**base, **search, "tpe": tpe}})


def optuna_space(cfg) -> dict[str, Any]:
    """The Optuna distributions kdsearch's searcher sees for this config (OptunaSearch's conversion)."""
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Domain

    from kdsearch.search.tune_space import tune_space

    space = tune_space(cfg.search.space, pairs_of(cfg))
    return OptunaSearch.convert_search_space({k: v for k, v in space.items() if isinstance(v, Domain)})


def pairs_of(cfg) -> list[tuple[str, str]]:
    """The (student, format) pairs the archive's space searches (it holds only what fitted when it was built)."""
    from kdsearch.config import Dist

    p = cfg.search.space.precision
    formats = list(p.choice) if isinstance(p, Dist) else [p or cfg.student.precision]
    return [(s, f) for s in cfg.student.candidates for f in formats]


@dataclass
class Search:
    """The three objects a search is: what suggests (searcher), what stops (scheduler), the fixed keys."""

    suggest: Callable[[str], dict[str, Any]]
    searcher: Any
    scheduler: Any
    fixed: dict[str, Any]


def kdsearch_search(cfg, sampler: Callable | None = None, points: Callable | None = None,
                    keep_pair: bool = True) -> Search:
    """kdsearch's default search as make_tuner builds it, its study in memory; `sampler(cfg, n_points)` and
    `points(space, pairs)` replace tpe_sampler and start_points for a candidate, `keep_pair` False lets ASHA stop
    the no-KD pair like any other trial."""
    from ray.tune.search.sample import Domain

    from kdsearch.search.asha import PairedASHA
    from kdsearch.search.searcher import HonestOptunaSearch
    from kdsearch.search.tune_space import kd_pair, start_points, tune_space
    from kdsearch.search.tuner import tpe_sampler

    pairs = pairs_of(cfg)
    space = tune_space(cfg.search.space, pairs)
    starts = (points or start_points)(cfg.search.space, pairs) if cfg.search.start_points else None
    searcher = HonestOptunaSearch(sampler=(sampler or tpe_sampler)(cfg, len(starts or [])),
                                  points_to_evaluate=starts, max_epochs=cfg.search.max_epochs,
                                  objectives=cfg.search.objectives)
    searcher.set_search_properties(cfg.search.metric, cfg.search.resolved_mode, space)
    scheduler = asha(cfg, PairedASHA, keep=kd_pair(starts or []) if keep_pair else [])
    fixed = {k: v for k, v in space.items() if not isinstance(v, Domain)}
    return Search(searcher.suggest, searcher, scheduler, fixed)


def asha(cfg, cls, **kw):
    return cls(time_attr="training_iteration", metric=cfg.search.metric, mode=cfg.search.resolved_mode,
               max_t=cfg.search.max_epochs, grace_period=cfg.search.grace_period,
               reduction_factor=cfg.search.reduction_factor, **kw)


def random_search(cfg) -> Search:
    """Ray's random search of the same space (each domain sampled with the seeded random state, as
    BasicVariantGenerator(random_state=seed) does), with the same ASHA and no searcher to tell."""
    from ray.tune.search.sample import Domain

    from kdsearch.search.asha import PairedASHA
    from kdsearch.search.tune_space import tune_space

    pairs = pairs_of(cfg)
    space = tune_space(cfg.search.space, pairs)
    rng = np.random.RandomState(cfg.seed)
    domains = {k: v for k, v in space.items() if isinstance(v, Domain)}
    fixed = {k: v for k, v in space.items() if not isinstance(v, Domain)}

    def suggest(_trial_id: str) -> dict[str, Any]:
        return {k: _plain(d.sample(random_state=rng)) for k, d in domains.items()}

    return Search(suggest, None, asha(cfg, PairedASHA), fixed)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# --------------------------------------------------------------------------- the simulated search


@dataclass
class Outcome:
    """One search's reports: (time, trial, epoch, value) in time order, and each trial's line."""

    events: list[tuple[float, str, int, float]] = field(default_factory=list)
    lines: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_epochs: int = 0

    def pick(self, t: float) -> tuple[float, float] | None:
        """(val, test) of the search's pick at time t: the best finished trial, else the best latest value of the
        trials that ran the most epochs (core.figures.chosen's rule)."""
        last: dict[str, tuple[int, float]] = {}
        for when, trial, epoch, value in self.events:
            if when > t:
                break
            last[trial] = (epoch, value)
        if not last:
            return None
        most = max(e for e, _ in last.values())
        pool = {k: v for k, (e, v) in last.items() if e == most}
        best = max(pool, key=lambda k: pool[k])
        return pool[best], self.lines[best]["test_macro_f1"]


def simulate(search: Search, archive: Archive, surrogate: Surrogate, workers: int, budget: float,
             overhead: float = 0.0) -> Outcome:
    """An event loop over `workers` slots: a free slot starts the next suggested trial, each epoch ends after its
    archived seconds and is told to the scheduler and the searcher as Ray Tune's controller tells them."""
    from ray.tune.schedulers import TrialScheduler

    n = archive.max_epochs
    out = Outcome(max_epochs=n)
    queue: list[tuple[float, int, str, int]] = []
    trials: dict[str, SimpleNamespace] = {}
    order = 0

    def start(now: float) -> None:
        nonlocal order
        if now >= budget or len(trials) >= NUM_SAMPLES:
            return
        trial_id = f"t{len(trials):04d}"
        config = {**search.fixed, **search.suggest(trial_id)}
        line = archive.by_key.get(key(config)) or surrogate.line(config)
        trials[trial_id] = SimpleNamespace(trial_id=trial_id, config=config)
        out.lines[trial_id] = line
        search.scheduler.on_trial_add(None, trials[trial_id])
        order += 1
        heapq.heappush(queue, (now + overhead + line["curve"][0][2], order, trial_id, 1))

    for _ in range(workers):
        start(0.0)
    while queue:
        now, _, trial_id, epoch = heapq.heappop(queue)
        if now > budget:  # the time budget cut every trial still running
            break
        line, trial = out.lines[trial_id], trials[trial_id]
        value = line["curve"][epoch - 1][1]
        out.events.append((now, trial_id, epoch, value))
        result = {"training_iteration": epoch, "val_macro_f1": value, "val_full": epoch == n,
                  "scored": "fp32 file" if epoch == n else "float", "train_loss": 0.1, "val_loss": 0.1}
        decision = search.scheduler.on_trial_result(None, trial, result)
        if epoch >= n or decision == TrialScheduler.STOP:
            search.scheduler.on_trial_complete(None, trial, result)
            if search.searcher is not None:
                search.searcher.on_trial_complete(trial_id, result=result)
            start(now)
        else:
            if search.searcher is not None:
                search.searcher.on_trial_result(trial_id, result)
            order += 1
            heapq.heappush(queue, (now + line["curve"][epoch][2], order, trial_id, epoch + 1))
    return out


def recipe(archive: Archive, workers: int, budget: float) -> Outcome:
    """No search: each student's recipe line to max_epochs, `workers` at a time, in the archive's order."""
    lines = [r for r in archive.lines if r["kind"] == "recipe"]
    out = Outcome(max_epochs=archive.max_epochs)
    free = [0.0] * workers
    for i, line in enumerate(lines):
        w = min(range(workers), key=lambda j: free[j])
        now = free[w]
        for epoch, value, seconds in line["curve"]:
            now += seconds
            if now <= budget:
                out.events.append((now, f"r{i}", int(epoch), value))
        out.lines[f"r{i}"] = line
        free[w] = now
    out.events.sort()
    return out


# --------------------------------------------------------------------------- methods and candidates


def lr_spread_points(space, pairs):
    """Candidate: the start points spread lr as they spread alpha (the hedges at the lr range's quartiles in log
    scale, beside the midpoint), so a too-high or too-low default lr is seen in the first round."""
    from kdsearch.search.tune_space import start_points

    points = start_points(space, pairs)
    lr = space.entries().get("lr")
    if lr is None or lr.loguniform is None or len(points) < 3:
        return points
    lo, hi = (math.log(v) for v in lr.loguniform)
    quartiles = [math.exp(lo + (hi - lo) * q) for q in (0.25, 0.75)]
    hedges = [p for p in points[1:] if p.get("alpha") != 0]  # the control keeps the KD point's lr
    for p, value in zip(hedges, quartiles):
        p["lr"] = value
    return points


def student_spread_points(space, pairs):
    """Candidate: the first start point (the recipe) once for each student, not for the first student alone."""
    from kdsearch.search.tune_space import start_points

    points = start_points(space, pairs)
    students = list(dict.fromkeys(s for s, _ in pairs))
    if "student" not in points[0] or len(students) < 2:
        return points
    extra = [{**points[0], "student": s} for s in students if s != points[0]["student"]]
    return points + [p for p in extra if p not in points]


def gp_sampler(cfg, start_points: int):
    """Candidate: Optuna's GPSampler (Gaussian process, log-EI) in place of TPE, the same start-up count."""
    import optuna
    import torch

    torch.set_num_threads(1)  # its fits are small: threads only contend (a 2-worker search leaves no core free)
    from kdsearch.search.tuner import tpe_sampler

    startup = tpe_sampler(cfg, start_points)._n_startup_trials
    return optuna.samplers.GPSampler(seed=cfg.seed, n_startup_trials=startup)


def random_after_starts(cfg, start_points: int):
    """Candidate: the start points, then Optuna's random sampling (no model at all): what TPE's modelling adds."""
    import optuna

    return optuna.samplers.RandomSampler(seed=cfg.seed)


CANDIDATES: dict[str, dict[str, Any]] = {
    "kdsearch_grace1": {"search": {"grace_period": 1}},
    "kdsearch_grace2": {"search": {"grace_period": 2}},
    "kdsearch_rf2": {"search": {"reduction_factor": 2}},
    "kdsearch_rf4": {"search": {"reduction_factor": 4}},
    "kdsearch_startup10": {"search": {"tpe": {"startup_trials": 10}}},
    "kdsearch_startup20": {"search": {"tpe": {"startup_trials": 20}}},
    "kdsearch_random_after_starts": {"sampler": random_after_starts},
    "kdsearch_independent": {"search": {"tpe": {"multivariate": False}}},
    "kdsearch_no_liar": {"search": {"tpe": {"constant_liar": False}}},
    "kdsearch_no_start_points": {"search": {"start_points": False}},
    "kdsearch_lr_spread": {"points": lr_spread_points},
    "kdsearch_unpaired_asha": {"keep_pair": False},
    "kdsearch_student_spread": {"points": student_spread_points},
    "kdsearch_gp": {"sampler": gp_sampler},
}
"""Each a change to kdsearch's default search, replayed under its own name (docs/measured.md has what each is
worth; the ones that won on every task are the defaults)."""



def run_method(method: str, archive: Archive, surrogate: Surrogate, seed: int, workers: int, budget: float,
               overhead: float) -> Outcome:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    np.random.seed(seed)  # ASHA draws its bracket from numpy's global generator
    if method == "recipe":
        return recipe(archive, workers, budget)
    change = CANDIDATES.get(method, {})
    cfg = task_config(archive, seed, workers, budget, **change.get("search", {}))
    search = random_search(cfg) if method == "random" else \
        kdsearch_search(cfg, sampler=change.get("sampler"), points=change.get("points"),
                        keep_pair=change.get("keep_pair", True))
    return simulate(search, archive, surrogate, workers, budget, overhead)


def first_reach(out: Outcome, target: float, budget: float) -> float:
    """Fraction of the budget at which the pick's val first reached `target` (1.0 when it never did)."""
    for when, *_ in out.events:
        picked = out.pick(when)
        if picked is not None and picked[0] >= target - 1e-12:
            return when / budget
    return 1.0


def replay(archive: Archive, methods: list[str], seeds: int, workers: int, budget_trials: float,
           overhead: float = 0.0, log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every method over `seeds` seeds: the JSON block of one task (see --json), and what the replay ran on (the
    budget, the surrogate's held-out accuracy)."""
    budget = budget_trials * archive.trial_seconds()
    dists = optuna_space(task_config(archive, 0, workers, budget))
    surrogate = Surrogate(dists, archive.lines)
    info = {"lines": len(archive.lines), "max_epochs": archive.max_epochs, "budget_s": budget,
            "trial_median_s": archive.trial_seconds(), "workers": workers, "seeds": seeds,
            "surrogate": held_out(dists, archive.lines),
            "best_in_archive_val": max(r["curve"][-1][1] for r in archive.lines),
            "best_in_archive_test": max(r["test_macro_f1"] for r in archive.lines),
            "teacher_val_macro_f1": archive.header.get("teacher_val_macro_f1")}
    block: dict[str, Any] = {}
    runs: dict[str, list[Outcome]] = {}
    order = ["random"] + [m for m in methods if m != "random"]  # random's finals are the others' target
    for method in order:
        start = time.perf_counter()
        runs[method] = [run_method(method, archive, surrogate, s, workers, budget, overhead) for s in range(seeds)]
        if method in methods:
            log(f"{archive.task} {method}: {seeds} seeds in {time.perf_counter() - start:.1f} s")
    targets = [o.pick(budget)[0] for o in runs["random"]]
    for method in methods:
        outs = runs[method]
        at = {f: [(_or0(o.pick(float(f) * budget))) for o in outs] for f in FRACTIONS}
        tests = [o.pick(budget)[1] if o.pick(budget) else 0.0 for o in outs]
        reach = [first_reach(o, t, budget) for o, t in zip(outs, targets)]
        block[method] = {"seeds": seeds, "best_val": {f: statistics.mean(v) for f, v in at.items()},
                         "best_val_std": {f: _std(v) for f, v in at.items()},
                         "test_of_pick": statistics.mean(tests), "test_of_pick_std": _std(tests),
                         "time_to_random_best": statistics.mean(reach),
                         "reached_random_best": sum(r < 1.0 or _reached(o, t, budget) for o, r, t in
                                                    zip(outs, reach, targets)),
                         "trials": statistics.mean(len(o.lines) for o in outs),
                         "finished_trials": statistics.mean(
                             len({tr for _, tr, e, _ in o.events if e == o.max_epochs}) for o in outs)}
    return block, info


def _or0(picked: tuple[float, float] | None) -> float:
    return 0.0 if picked is None else picked[0]


def _reached(out: Outcome, target: float, budget: float) -> bool:
    picked = out.pick(budget)
    return picked is not None and picked[0] >= target - 1e-12


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, Any]) -> str:
    rows = ["| task | method | best val @¼ | @½ | @1 | test of pick | time to random's best |",
            "|---|---|---|---|---|---|---|"]
    for task, block in results.items():
        for method, m in block.items():
            rows.append(f"| {task} | {method} | " + " | ".join(
                f"{m['best_val'][f]:.4f} ± {m['best_val_std'][f]:.4f}" for f in FRACTIONS)
                + f" | {m['test_of_pick']:.4f} ± {m['test_of_pick_std']:.4f} | {m['time_to_random_best']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curves", type=Path, default=CURVES, help="a folder of <task>.jsonl archives, or one file")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget-trials", type=float, default=10.0, help="budget = this x a full trial's median time")
    ap.add_argument("--overhead", type=float, default=0.0, help="seconds added to each trial's start")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated, or all")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    methods = [*DEFAULT_METHODS, *CANDIDATES] if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in (*DEFAULT_METHODS, *CANDIDATES)]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join((*DEFAULT_METHODS, *CANDIDATES))}")
    paths = sorted(args.curves.glob("*.jsonl")) if args.curves.is_dir() else [args.curves]
    if not paths:
        raise SystemExit(f"--curves {args.curves}: no .jsonl archives there")
    start = time.perf_counter()
    results, infos = {}, {}
    for path in paths:
        archive = read_archive(path)
        results[archive.task], infos[archive.task] = replay(archive, methods, args.seeds, args.workers,
                                                            args.budget_trials, args.overhead,
                                                            log=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - start
    print(table(results))
    for task, info in infos.items():
        s = info["surrogate"]
        print(f"{task}: budget {info['budget_s']:.0f} s ({args.budget_trials:g} x a full trial's median "
              f"{info['trial_median_s']:.1f} s), {info['lines']} archived configurations; surrogate on held-out "
              f"lines: final val MAE {s['final_val_mae']:.4f}, rank correlation {s['final_val_spearman']:.3f}")
    print(f"replayed {len(paths)} archives x {len(methods)} methods x {args.seeds} seeds in {wall:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        side = args.json.with_name(args.json.stem + "-archives.json")
        side.write_text(json.dumps({"wall_s": wall, "methods": methods, "tasks": infos}, indent=1))


if __name__ == "__main__":
    main()

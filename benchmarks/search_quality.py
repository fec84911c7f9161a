"""Does searching beat the simple ways at equal wall time? kdsearch's default search against Ray's random search
(with the same ASHA) and the paper recipe without search, each run through the installed `kdsearch`.

    python benchmarks/search_quality.py [--task digits_fewlabels|fm4k] [--budget 300] [--seeds 3] [--out FILE]
                                        [--methods tpe,random,recipe,tpe_startup10,tpe_independent,tpe_no_liar]
    python benchmarks/search_quality.py --smoke     # a 3-minute check that every step runs
    python benchmarks/search_quality.py --task fm4k --resume   # after an interruption: the finished runs kept

Tasks (each with its own test split, so each method's final pick is scored on images no method chose on):
- digits_fewlabels: `search_spaces/digits_fewlabels.yaml` on scikit-learn's digits written as an .npz
  (train 1,077 / val 360 / test 360, stratified, seeded), 5 labels per class, the rest transfer images;
- fm4k: the Fashion-MNIST subset `vs_seed.py` uses (4,000 train, 12,000 val; here also 2,000 test images from
  the test files), 16 px, its space and students; needs `apt-get install -y dataset-fashion-mnist`.

Methods, per search seed (`seed`; the splits are fixed by the .npz, the teacher is trained once per seed and
shared by the three methods through `output.dir`'s teacher cache):
- tpe: `kdsearch run` as configured, `search.time_budget_s` = --budget, `num_samples` 500 (the time decides);
- random: the same with `search.algorithm: random` (Tune's seeded random sampling, same ASHA);
- recipe: no search: KD T 4, alpha 0.9, the space's default lr (its geometric midpoint), each student trained
  with `kdsearch train` for `search.max_epochs`, one after the other; the best on val is its pick;
- tpe_startup10 / tpe_independent / tpe_no_liar: kdsearch's search with one of its TPE settings (search.tpe) put
  back to the alternative (Optuna's default 10 start-up trials / independent TPE / no constant liar): what each
  choice is worth.

Reported per method: mean ± std over seeds of the best whole-split val macro-F1 reached by 1/4, 1/2 and the whole
budget (the parent run's `best_so_far_val_macro_f1` curve; the recipe's runs by their finishing time), and the
test macro-F1 of the final pick. On fm4k also the seconds, end to end (the teacher's training included), at which
each search first reached the seed-style script's best, read from vs_seed.py's JSON (--seed-style). Every method
is held to the budget: the recipe counts only the students that finished within it. Writes JSON
(benchmarks/results/, rendered into docs/measured.md by benchmarks/render.py) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))
FRACTIONS = (0.25, 0.5, 1.0)
SEARCHES = {"tpe": [], "random": ["search.algorithm=random"], "tpe_startup10": ["search.tpe.startup_trials=10"],
            "tpe_independent": ["search.tpe.multivariate=false"], "tpe_no_liar": ["search.tpe.constant_liar=false"]}
RESULTS = REPO / "benchmarks" / "results"
"""Where benchmarks write the JSON that docs/measured.md and README render their figures from (benchmarks/render.py)."""


def seed_style(path: Path) -> dict | None:
    """The seed-style script's run on fm4k as `vs_seed.py` recorded it (its `seed_style` row): its best whole-split
    val macro-F1 and when it reached it, end to end; None without that JSON (the comparison is then not made)."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text())["seed_style"]
    return {"best_val_macro_f1": row["best_val_macro_f1"], "best_at_s": row["seconds_to_best"],
            "whole_run_s": row["end_to_end_seconds"], "from": str(path.relative_to(REPO))}


def digits_npz(path: Path, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=360, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=360, stratify=y[rest], random_state=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{s}_images": x[i] for s, i in (("train", train), ("val", val), ("test", test))},
             **{f"{s}_labels": y[i] for s, i in (("train", train), ("val", val), ("test", test))})
    return path


def task_config(task: str, work: Path, smoke: bool) -> dict:
    """The task's config as a dict, its data an .npz with train/val/test."""
    if task == "digits_fewlabels":
        cfg = yaml.safe_load((REPO / "search_spaces" / "digits_fewlabels.yaml").read_text())
        cfg["data"] = {**cfg["data"], "source": "npz", "root": str(digits_npz(work / "digits.npz"))}
        cfg["data"].pop("val_fraction", None)
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from vs_seed import kdsearch_config

        from kd_gain import make_subset

        npz = make_subset(work / "fm4k.npz", 4000, 12000, 2000, 0)
        cfg = yaml.safe_load(kdsearch_config(npz, work, "fm4k", 8, 8, 8).read_text())
    if smoke:
        cfg["teacher"].update(epochs=1, patience=1)
        cfg["search"].update(max_epochs=2, grace_period=1)
    cfg["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}"}
    return cfg


def kdsearch(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([KDSEARCH, *map(str, args)], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"kdsearch {' '.join(map(str, args[:2]))} failed:\n{run.stderr[-3000:]}")
    return run


def test_macro_f1(cfg_path: Path, weights: Path, student: str, sets: list[str]) -> float:
    """The test split's macro-F1 of a saved student (student.pt in the config's precision)."""
    import torch

    from kdsearch.config import load_config
    from kdsearch.data.dataset import load_dataset
    from kdsearch.engine.loop import evaluate
    from kdsearch.models.students import create_student, student_spec

    cfg = load_config(cfg_path, sets)
    data = load_dataset(cfg)
    model = create_student(student, data.num_classes, cfg.data.image_size)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in torch.load(weights, weights_only=True).items()})
    return evaluate(model, data.test.x, data.test.y, student_spec(cfg), cfg.data.image_size, data.num_classes,
                    "cpu").macro_f1


def best_at(points: list[tuple[float, float]], budget: float) -> list[float | None]:
    """The best value reached by each fraction of the budget, from (seconds, value) points; the whole budget takes
    every point (the curve counts from the parent run's start, Tune's budget from its own a few seconds later)."""
    return [max((v for t, v in points if f == 1.0 or t <= f * budget), default=None) for f in FRACTIONS]


def fresh_name(work: Path, name: str, seed: int) -> str:
    """`name`, or `name-rK` where an interrupted attempt left a search of that name (a new one starts, whole)."""
    taken = work / f"seed{seed}" / "ray"
    k = 0
    while (taken / (name if k == 0 else f"{name}-r{k}")).exists():
        k += 1
    return name if k == 0 else f"{name}-r{k}"


def search_method(cfg_path: Path, work: Path, name: str, seed: int, budget: float, extra: list[str],
                  teacher_s: float) -> dict:
    from mlflow.tracking import MlflowClient

    sets = [f"name={name}", f"seed={seed}", f"search.time_budget_s={budget}", "search.num_samples=500",
            f"output.dir={work / f'seed{seed}'}", *extra]
    start, started = time.perf_counter(), time.time()
    kdsearch("run", cfg_path, *[a for s in sets for a in ("--set", s)])
    wall = time.perf_counter() - start
    cfg = yaml.safe_load(cfg_path.read_text())
    client = MlflowClient(cfg["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.`kdsearch.kind` = 'search'")
    curve = [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "best_so_far_val_macro_f1")]
    # seconds from the command's start to the search's (data, teacher outputs, Ray), then the teacher's training
    offset = runs[0].info.start_time / 1000 - started + teacher_s
    best = work / f"seed{seed}" / "best"
    card = json.loads((best / "model_card.json").read_text())
    return {"val_best_at": best_at(curve, budget), "final_val": card["metrics"]["val_macro_f1"],
            "test": test_macro_f1(cfg_path, best / "student.pt", card["student"], sets),
            "trials": int(runs[0].data.metrics.get("trials_completed", 0) + runs[0].data.metrics.get(
                "trials_stopped_early", 0) + runs[0].data.metrics.get("trials_budget_cut", 0)),
            "curve": sorted(curve), "end_to_end_curve": [(offset + t, v) for t, v in sorted(curve)],
            "teacher_seconds": teacher_s,
            "wall_seconds": wall}


def recipe_method(cfg_path: Path, work: Path, seed: int, budget: float) -> dict:
    """KD T 4, alpha 0.9, the space's default lr, each student for the full epoch budget, one after the other, held
    to the same budget as the searches: a student is started only while the budget lasts, and only one that finished
    within it counts (its pick is None when none did)."""
    cfg = yaml.safe_load(cfg_path.read_text())
    points, picks, elapsed, over = [], [], 0.0, []
    for student in cfg["student"]["candidates"]:
        if elapsed >= budget:
            over.append(student)
            continue
        sets = [f"seed={seed}", f"output.dir={work / f'seed{seed}'}", "search.space.loss=kd",
                "search.space.temperature=4.0", "search.space.alpha=0.9", f"search.space.student={student}",
                f"name=recipe-{seed}"]
        start = time.perf_counter()
        kdsearch("train", cfg_path, *[a for s in sets for a in ("--set", s)], "--device", "cpu")
        elapsed += time.perf_counter() - start
        metrics = json.loads((work / f"seed{seed}" / "train" / "metrics.json").read_text())
        val = metrics["final"]["val_macro_f1"]
        if elapsed > budget:
            over.append(student)
            continue
        points.append((elapsed, val))
        picks.append((val, test_macro_f1(cfg_path, work / f"seed{seed}" / "train" / "student.pt", student, sets)))
    val, test = max(picks) if picks else (None, None)
    return {"val_best_at": best_at(points, budget), "final_val": val, "test": test, "wall_seconds": elapsed,
            "students_over_budget": over}


def mean_std(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    return f"{statistics.fmean(got):.4f} ± {statistics.stdev(got):.4f}" if len(got) > 1 else f"{got[0]:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["digits_fewlabels", "fm4k"], default="digits_fewlabels")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of search per method and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="tpe,random,recipe",
                    help=f"comma-separated, from {', '.join([*SEARCHES, 'recipe'])}")
    ap.add_argument("--out", type=Path, help="JSON (default benchmarks/results/search_quality-<task>.json)")
    ap.add_argument("--seed-style", type=Path, default=RESULTS / "vs_seed-v1.json",
                    help="vs_seed.py's JSON: the seed-style script's best on fm4k, compared with end to end")
    ap.add_argument("--smoke", action="store_true", help="1 seed, 40 s, 1-epoch teacher: checks that it all runs")
    ap.add_argument("--resume", action="store_true",
                    help="keep the (method, seed) runs of an interrupted benchmark (its .partial.json beside --out) "
                         "and run only the others; a run cut off part-way starts again under a new name")
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - {*SEARCHES, "recipe"}:
        ap.error(f"unknown method(s) {sorted(unknown)}")
    if args.smoke:
        args.seeds, args.budget = 1, 40.0
    args.out = args.out or RESULTS / f"search_quality-{args.task}.json"
    work = REPO / "runs" / "bench-search-quality" / args.task  # the searches themselves: not committed
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(task_config(args.task, work, args.smoke)))
    partial = args.out.with_suffix(".partial.json")
    setup = {"task": args.task, "budget_s": args.budget, "seeds": args.seeds, "methods": methods}
    done: dict[str, dict[str, dict]] = {m: {} for m in methods}
    if args.resume and partial.is_file():
        saved = json.loads(partial.read_text())
        if saved["setup"] != setup:
            raise SystemExit(f"{partial}: made with {saved['setup']}, not {setup}; drop --resume or match them")
        done = {m: saved["runs"].get(m, {}) for m in methods}
    for seed in range(args.seeds):
        if all(str(seed) in done[m] for m in methods):
            continue
        start = time.perf_counter()  # once per seed, shared through the teacher cache (in no method's budget)
        kdsearch("train-teacher", cfg_path, "--set", f"seed={seed}", "--set", f"output.dir={work / f'seed{seed}'}",
                 "--device", "cpu")
        teacher_s = time.perf_counter() - start
        for m in methods:
            if str(seed) in done[m]:
                continue
            done[m][str(seed)] = (recipe_method(cfg_path, work, seed, args.budget) if m == "recipe" else
                                  search_method(cfg_path, work, fresh_name(work, f"{m}-{seed}", seed), seed,
                                                args.budget, SEARCHES[m], teacher_s))
            partial.write_text(json.dumps({"partial": True, "setup": setup, "runs": done}, indent=1))
        print(json.dumps({k: {kk: vv for kk, vv in v[str(seed)].items() if "curve" not in kk}
                          for k, v in done.items()}), flush=True)
    results = {m: [done[m][str(s)] for s in range(args.seeds)] for m in methods}
    table = {m: {**{f"val_at_{f}": mean_std([r["val_best_at"][i] for r in rs]) for i, f in enumerate(FRACTIONS)},
                 "test_of_pick": mean_std([r["test"] for r in rs]),
                 "trials": mean_std([r.get("trials") for r in rs])} for m, rs in results.items()}
    style = seed_style(args.seed_style) if args.task == "fm4k" else None
    if style is not None:  # when each search first reached the seed-style script's best, end to end
        from vs_seed import seconds_to  # on the path since task_config

        for m, rs in results.items():
            if m in SEARCHES:
                got = [seconds_to(r["end_to_end_curve"], 0.0, style["best_val_macro_f1"]) for r in rs]
                table[m]["to_seed_best_s"] = [None if g is None else round(g, 1) for g in got]
    from kdsearch.core.versions import versions

    report = {"task": args.task, "budget_s": args.budget, "seeds": args.seeds, "table": table, "runs": results,
              "seed_style": style, "machine": {"cpus": __import__("os").cpu_count()}, "versions": versions()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    partial.unlink(missing_ok=True)  # the finished report replaces it
    print("| method | val @ 1/4 | val @ 1/2 | val @ budget | test macro-F1 of its pick | trials |\n"
          "|---|---|---|---|---|---|")
    for m, row in table.items():
        print(f"| {m} | {row['val_at_0.25']} | {row['val_at_0.5']} | {row['val_at_1.0']} | {row['test_of_pick']} "
              f"| {row['trials']} |" + (f" to the seed script's best: {row['to_seed_best_s']} s" if
                                        "to_seed_best_s" in row else ""))


if __name__ == "__main__":
    main()

"""The learning-curve archive `benchmarks/curves/<task>.jsonl`: full curves of many configurations of one task,
trained once with kdsearch's own engine (`distill.Distiller`, the trainer every trial runs), so that searchers can
be replayed against them in simulated time (benchmarks/replay.py) — many seeds in minutes, as Syne Tune's blackbox
repository and HPOBench's tabular benchmarks do for trials too dear to rerun.

    python benchmarks/build_curves.py --task digits_fewlabels [--configs 110] [--out benchmarks/curves]
    python benchmarks/build_curves.py --task all
    python benchmarks/build_curves.py --task fm16 --configs 100 --workers-measured 2 --shard 0/2 &
    python benchmarks/build_curves.py --task fm16 --configs 100 --workers-measured 2 --shard 1/2  # 2 cores

The format (replay.py and held-out checks read it; keep it exactly): the first line is a header
`{"task", "space", "max_epochs", "metric", "teacher_val_macro_f1", "images": {"train", "val", "test"},
"workers_measured", "threads_per_worker"}` (`space` in the config's own syntax, `student` as a choice), then one
line per configuration `{"config": {key: value}, "curve": [[epoch, whole-split val macro-F1, seconds], ...],
"test_macro_f1", "kind": "sampled" | "recipe" | "control"}`. Every configuration runs to `max_epochs`; each epoch
is scored on the whole val split (the float model, and at the last epoch the shipped file, as a finished trial
is); its seconds are the epoch's training plus that scoring, measured with `workers_measured` processes of
`threads_per_worker` threads each. `test_macro_f1` is the shipped file's on the task's test split.

Configurations: `--configs` drawn from the task's space with Optuna's seeded RandomSampler over the distributions
kdsearch's searcher sees (OptunaSearch's conversion of `search.tune_space`), then for each student the recipe
(KD, T 4, alpha 0.9, every other searched key at its start-point value, as `search.start_points` makes it) and its
no-KD control (the same with alpha 0). Resumable: lines are appended as they finish and configurations already in
the file are skipped, so a stopped build continues where it was.

Tasks (each differs in what matters for KD):
- digits_fewlabels: scikit-learn's digits at 16 px, 5 labels per class, the other training images transfer
  images (a teacher trained on every label is worth the most here); four losses in the space;
- fm16: Fashion-MNIST at 16 px, 2,500 train / 1,000 val / 2,000 test images, a ResNet-18 teacher (needs
  `apt-get install -y dataset-fashion-mnist`);
- digits_imbalanced: digits at 8 px with a long-tailed train split (class c keeps 0.08^(c/9) of its images) and a
  teacher stopped after 2 epochs (weaker than the students become); class weights searched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
CURVES = REPO / "benchmarks" / "curves"
WORK = REPO / "runs" / "curves"
THREADS = 1
"""Threads per build process: the seconds are those of a 1-CPU trial slot."""


def digits_splits(seed: int = 0, long_tail: float | None = None):
    """Digits as uint8 images with stratified train/val/test splits (search_quality's); `long_tail`: class c keeps
    long_tail^(c/9) of its training images (at least 5)."""
    from search_quality import digits_npz

    path = WORK / "digits.npz"
    if not path.is_file():  # written once: a rewrite would change the data's fingerprint and retrain the teacher
        digits_npz(path, seed)
    if long_tail is None:
        return path
    out = WORK / "digits_imbalanced.npz"
    if out.is_file():
        return out
    d = dict(np.load(path))
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(d["train_labels"] == c)
        n = max(5, int(round(len(idx) * long_tail ** (c / 9))))
        keep.append(rng.choice(idx, n, replace=False))
    keep = np.sort(np.concatenate(keep))
    d["train_images"], d["train_labels"] = d["train_images"][keep], d["train_labels"][keep]
    np.savez(out, **d)
    return out


def task_config(task: str) -> dict:
    """The task's kdsearch config as a dict (data as an .npz with train/val/test splits)."""
    search = {"num_samples": 1, "max_concurrent": 1, "metric": "val_macro_f1", "rung_val_size": None,
              "resources_per_trial": {"cpu": THREADS, "gpu": 0}}
    if task == "digits_fewlabels":
        cfg = yaml.safe_load((REPO / "search_spaces" / "digits_fewlabels.yaml").read_text())
        cfg["data"] = {**cfg["data"], "source": "npz", "root": str(digits_splits())}
        cfg["data"].pop("val_fraction")
    elif task == "fm16":
        from kd_gain import make_subset

        npz = WORK / "fm16.npz"
        if not npz.is_file():
            make_subset(npz, 2500, 1000, 2000, 0)
        cfg = {"name": task, "seed": 0,
               "data": {"source": "npz", "root": str(npz),
                        "image_size": 16, "augment": "standard"},
               "teacher": {"source": "train", "arch": "resnet18", "epochs": 8, "patience": 3, "cache_views": 4},
               "student": {"candidates": ["resnet8", "mobilenet_v3_small", "shufflenet_v2_x0_5"], "max_size_mb": 25},
               "search": {"max_epochs": 6, "grace_period": 1, "reduction_factor": 3,
                          "space": {"loss": "kd", "temperature": {"uniform": [1.0, 8.0]},
                                    "alpha": {"uniform": [0.0, 1.0]}, "lr": {"loguniform": [1.0e-3, 3.0e-2]},
                                    "batch_size": {"choice": [64, 128]}, "weight_decay": 1.0e-4,
                                    "class_weight_power": 0.0}}}
    elif task == "digits_imbalanced":
        cfg = {"name": task, "seed": 0,
               "data": {"source": "npz", "root": str(digits_splits(long_tail=0.08)), "image_size": 8,
                        "augment": "none"},
               "teacher": {"source": "train", "arch": "resnet8", "epochs": 2, "patience": 2, "min_val_macro_f1": 0.2},
               "student": {"candidates": ["resnet8", "mobilenet_v3_small", "shufflenet_v2_x0_5"], "max_size_mb": 25},
               "search": {"max_epochs": 8, "grace_period": 1, "reduction_factor": 3,
                          "space": {"loss": "kd", "temperature": {"uniform": [1.0, 8.0]},
                                    "alpha": {"uniform": [0.0, 1.0]}, "lr": {"loguniform": [1.0e-3, 3.0e-2]},
                                    "class_weight_power": {"uniform": [0.0, 1.0]}, "batch_size": 64,
                                    "weight_decay": 1.0e-4}}}
    else:
        raise SystemExit(f"--task {task}: one of {', '.join(TASKS)} or all")
    cfg["search"] = {**cfg["search"], **search}
    cfg["name"] = f"curves-{task}"
    cfg["tracking"] = {"uri": f"sqlite:///{WORK / 'mlflow.db'}"}
    cfg["output"] = {"dir": str(WORK / task)}
    return cfg


TASKS = ("digits_imbalanced", "digits_fewlabels", "fm16")


def configurations(cfg, pairs, n: int, seed: int) -> list[tuple[dict, str]]:
    """`n` configurations sampled from the space as kdsearch's searcher sees it, then each student's recipe and its
    no-KD control."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Domain

    from kdsearch.search.tune_space import start_points, tune_space

    space = tune_space(cfg.search.space, pairs)
    fixed = {k: v for k, v in space.items() if not isinstance(v, Domain)}
    dists = OptunaSearch.convert_search_space({k: v for k, v in space.items() if isinstance(v, Domain)})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = [({**fixed, **study.ask(dists).params}, "sampled") for _ in range(n)]
    recipe = {**start_points(cfg.search.space, pairs)[0], "loss": "kd", "temperature": 4.0, "alpha": 0.9}
    recipe = {k: v for k, v in recipe.items() if k in dists or k in fixed}
    for student in dict.fromkeys(s for s, _ in pairs):
        point = {**fixed, **recipe, "student": student}
        out += [(point, "recipe"), ({**point, "alpha": 0.0}, "control")]
    return out


def key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def header(task: str, raw: dict, cfg, prepared, workers: int) -> dict:
    counts = prepared.data.counts()
    return {"task": task, "space": {**raw["search"]["space"], "student": {"choice": list(prepared.students)}},
            "max_epochs": cfg.search.max_epochs, "metric": "val_macro_f1",
            "teacher_val_macro_f1": float(prepared.teacher_metrics["val_macro_f1"]),
            "images": {"train": counts["labeled"] + counts["transfer"], "val": counts["val"], "test": counts["test"]},
            "workers_measured": workers, "threads_per_worker": THREADS}


def curve(cfg, config: dict, prepared) -> dict:
    """One configuration trained to max_epochs, every epoch scored on the whole val split."""
    from kdsearch.distill.distiller import Distiller, Hparams
    from kdsearch.engine.loop import evaluate
    from kdsearch.models.deployed import load

    d = Distiller(cfg, Hparams.from_mapping(config), prepared, "cpu")
    points = []
    for _ in range(cfg.search.max_epochs):
        start = time.perf_counter()
        m = d.run_epoch(full=d.epoch + 1 >= cfg.search.max_epochs)  # rung_val_size null: the whole split anyway
        value = float(m["val_macro_f1"]) if not m["diverged"] else 0.0
        points.append([d.epoch, round(value, 6), round(time.perf_counter() - start, 4)])
        if m["diverged"]:  # a NaN run stays at 0 to the end (the search marks it failed)
            points += [[e, 0.0, points[-1][2]] for e in range(d.epoch + 1, cfg.search.max_epochs + 1)]
            return {"curve": points, "test_macro_f1": 0.0}
    test = prepared.data.test
    t = evaluate(load(d.shipped), test.x, test.y, d.spec, cfg.data.image_size, prepared.data.num_classes, "cpu")
    return {"curve": points, "test_macro_f1": round(float(t.macro_f1), 6)}


def build(task: str, n: int, out: Path, workers: int = 1, shard: tuple[int, int] = (0, 1)) -> Path:
    import torch

    from kdsearch.config import Config
    from kdsearch.distill.distiller import prepare

    torch.set_num_threads(THREADS)
    raw = task_config(task)
    cfg = Config.model_validate(raw)
    prepared = prepare(cfg, "cpu")
    path = out / f"{task}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    head = header(task, raw, cfg, prepared, workers)
    done = set()
    if path.is_file() and path.read_text().strip():
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines[0] != head:
            raise SystemExit(f"{path}: its header differs from this build's ({lines[0]} vs {head}); move it away")
        done = {key(r["config"]) for r in lines[1:]}
    else:
        path.write_text(json.dumps(head) + "\n")
    todo = [(c, k) for i, (c, k) in enumerate(configurations(cfg, prepared.pairs, n, cfg.seed))
            if key(c) not in done and i % shard[1] == shard[0]]
    print(f"{task}: {len(done)} configurations in {path}, {len(todo)} to train", flush=True)
    for i, (config, kind) in enumerate(todo):
        if key(config) in trained(path):  # another build process (--shard) got there first
            continue
        start = time.perf_counter()
        line = {"config": config, **curve(cfg, config, prepared), "kind": kind}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{task} {i + 1}/{len(todo)} {kind} {config['student']}: val {line['curve'][-1][1]:.4f} "
              f"test {line['test_macro_f1']:.4f} ({time.perf_counter() - start:.1f} s)", flush=True)
    return path


def trained(path: Path) -> set[str]:
    return {key(json.loads(line)["config"]) for line in path.read_text().splitlines()[1:] if line.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="all")
    ap.add_argument("--configs", type=int, default=110, help="sampled configurations per task (beside the recipes)")
    ap.add_argument("--out", type=Path, default=CURVES)
    ap.add_argument("--workers-measured", type=int, default=1,
                    help="build processes running side by side on this machine (each one trial slot), recorded in "
                         "the header: 2 on a 2-core machine measures the seconds a 2-worker search sees")
    ap.add_argument("--shard", default="0/1", help="I/N: train only every Nth configuration from the Ith, so that N "
                                                    "processes build one archive side by side")
    args = ap.parse_args()
    shard = tuple(int(v) for v in args.shard.split("/"))
    for task in TASKS if args.task == "all" else [args.task]:
        build(task, args.configs, args.out, args.workers_measured, shard)


if __name__ == "__main__":
    main()

"""The KD gain where it should exist: few labels plus transfer images, on Fashion-MNIST.

    python benchmarks/kd_gain.py [--budget 50] [--samples 8] [--seeds 3] [--out benchmarks/results/kd_gain.json]

Takes `search_spaces/fashion_fewlabels.yaml` and shrinks it to a CPU-sized
subset (written as a MedMNIST-style .npz): `--train` training images and
`--val` validation images drawn, stratified and seeded, from Fashion-MNIST's
train files, and `--test` images from its test files, at `--size` px. The
teacher (ResNet-8) is trained on every label of that train split. Then, for
each label regime (`label_budget: --budget` and `label_budget: none`), two
searches with the same trial budget (`--samples` trials, ASHA):

- no KD: `alpha: 0`; the student sees only its labeled images;
- KD: `alpha` in [0.1, 1] and `loss` in {kd, dist, kd_ls, dkd}; the student
  also learns the transfer images from the teacher.

Each trial of either arm processes the same number of images: a no-KD epoch
covers only the labeled images, so that arm gets proportionally more epochs.
Each search's best configuration is then retrained with `--seeds` seeds and
scored on the test split (macro-F1, mean and standard deviation). Needs
`apt-get install -y dataset-fashion-mnist`. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def make_subset(path: Path, n_train: int, n_val: int, n_test: int, seed: int) -> Path:
    """A stratified, seeded subset of Fashion-MNIST as an .npz with train/val/test splits (28 px)."""
    from kdsearch.data.sources import read_idx

    x, y = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    xt, yt = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, train_size=n_train, stratify=y, random_state=seed)
    va, _ = train_test_split(rest, train_size=n_val, stratify=y[rest], random_state=seed)
    te, _ = train_test_split(np.arange(len(yt)), train_size=n_test, stratify=yt, random_state=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train_images=x[tr], train_labels=y[tr], val_images=x[va], val_labels=y[va],
             test_images=xt[te], test_labels=yt[te])
    return path


def arm_config(base: dict, out: Path, name: str, budget: int | None, kd: bool, epochs: int, epoch_scale: int):
    from kdsearch.config import Config

    cfg = json.loads(json.dumps(base))
    cfg["name"] = name
    cfg["data"]["label_budget"] = budget
    cfg["output"] = {"dir": str(out)}  # every arm shares the decoded data and the teacher's cache
    space = cfg["search"]["space"]
    if not kd:
        space.update(alpha=0.0, loss="kd", temperature=4.0)
        space.pop("dkd_beta", None)
    # the same images per trial: a no-KD epoch covers only the labeled images
    cfg["search"]["max_epochs"] = epochs * epoch_scale
    cfg["search"]["grace_period"] = max(1, epochs // 4) * epoch_scale
    return Config.model_validate(cfg)


def best_val_per_loss(cfg) -> dict[str, float]:
    """The best val macro-F1 any trial of the search reached with each loss."""
    from kdsearch.deploy.report import search_trials

    best: dict[str, float] = {}
    for t in search_trials(cfg):
        loss = str(t["config"].get("loss", "kd"))
        best[loss] = max(best.get(loss, 0.0), float(t["last"]["val_macro_f1"]))
    return best


def best_test_f1(cfg, prepared, hp, seeds: list[int]) -> list[float]:
    from kdsearch.distill.distiller import train_student
    from kdsearch.engine.loop import evaluate

    data, out = prepared.data, []
    for seed in seeds:
        d, _ = train_student(cfg, hp, prepared, "cpu", seed=seed)
        out.append(evaluate(d.model, data.test.x, data.test.y, d.spec, cfg.data.image_size, data.num_classes,
                            "cpu").macro_f1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=50, help="labeled images per class in the few-labels regime")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8, help="trials per search")
    ap.add_argument("--epochs", type=int, default=5, help="max epochs of a KD trial")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--regimes", default="budget,all")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kd_gain.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import yaml

    from kdsearch.distill.distiller import Hparams, prepare
    from kdsearch.search.tuner import run_search

    work = REPO / "runs" / "bench-kd-gain"  # scratch; only the JSON (--out) is committed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    npz = make_subset(work / "fashion-subset.npz", args.train, args.val, args.test, seed=0)
    base = yaml.safe_load((REPO / "search_spaces" / "fashion_fewlabels.yaml").read_text())
    base["data"].update(source="npz", root=str(npz), image_size=args.size, augment="none")
    base["data"].pop("val_fraction")
    base["teacher"].update(arch="resnet8", epochs=12, patience=3, cache_views=1)
    base["student"]["candidates"] = ["mobilenet_v3_small", "shufflenet_v2_x0_5"]
    base["search"].update(num_samples=args.samples, reduction_factor=2)
    base["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}"}
    stamp = int(time.time())
    results = {"setup": {**vars(args), "out": str(args.out), "teacher": "resnet8 trained on every train label",
                         "students": base["student"]["candidates"]}, "regimes": {}}
    for regime in args.regimes.split(","):
        budget = args.budget if regime == "budget" else None
        row = {}
        for arm in ("no_kd", "kd"):
            kd = arm == "kd"
            probe = arm_config(base, work, f"probe-{stamp}", budget, True, args.epochs, 1)
            counts = prepare(probe, "cpu").data.counts()  # teacher trained once, then from its cache
            scale = 1 if kd else max(1, round((counts["labeled"] + counts["transfer"]) / counts["labeled"]))
            cfg = arm_config(base, work, f"{regime}-{arm}-{stamp}", budget, kd, args.epochs, scale)
            start = time.perf_counter()
            result = run_search(cfg, device="cpu")
            search_s = time.perf_counter() - start
            prepared = prepare(cfg, "cpu")
            hp = Hparams.from_mapping(result.best["config"])
            start = time.perf_counter()
            f1 = best_test_f1(cfg, prepared, hp, [cfg.seed + i for i in range(args.seeds)])
            row[arm] = {"test_macro_f1": f1, "mean": statistics.fmean(f1),
                        "std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
                        "best_val_macro_f1": result.best["metrics"]["val_macro_f1"], "best_config": hp.as_dict(),
                        "trials": result.trials, "epochs_per_trial": cfg.search.max_epochs,
                        "search_seconds": search_s, "retrain_seconds": time.perf_counter() - start,
                        "images": counts, "teacher": prepared.teacher_metrics,
                        "best_val_macro_f1_per_loss": best_val_per_loss(cfg)}
            print(json.dumps({regime: {arm: {k: row[arm][k] for k in ("mean", "std", "best_config")}}}), flush=True)
        row["kd_gain"] = row["kd"]["mean"] - row["no_kd"]["mean"]
        results["regimes"][regime] = row
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({r: {"no_kd": f"{v['no_kd']['mean']:.4f} ± {v['no_kd']['std']:.4f}",
                          "kd": f"{v['kd']['mean']:.4f} ± {v['kd']['std']:.4f} ({v['kd']['best_config']['loss']})",
                          "gain": round(v["kd_gain"], 4)} for r, v in results["regimes"].items()}, indent=2))


if __name__ == "__main__":
    main()

"""What ships, searched: the Pareto front of macro-F1 x file size x CPU latency over five students in three formats.

    python benchmarks/deploy_front.py [--samples 16] [--epochs 4] [--out benchmarks/results/deploy_front.json]

A stratified, seeded Fashion-MNIST subset (2,000 train, 2,000 val images at 16 px, from Debian's
dataset-fashion-mnist), a ResNet-18 teacher trained here, and one `kdsearch run` through the installed command over
the loss menu (kd, dist, kd_ls, dkd) and `precision: {choice: [fp32, fp16, int8]}` for ResNet-8, ShuffleNetV2-x1.0,
MobileNetV3-Large, ResNet-18 and ResNet-34 under 25 MB. ResNet-18 (44.9 MB fp32) fits as fp16 or int8, ResNet-34
(85 MB fp32, 43 MB fp16) only as int8; ResNet-34 is first, so the search's start points begin with its int8 pair.

Every figure is a finished trial's shipped file on the whole val split (`val_macro_f1`), its float model's
(`val_macro_f1_float`), the file's size and its median latency at batch 1 on one CPU thread. Written to JSON:
- the front (non-dominated finished trials over val macro-F1, size, latency);
- the best student at <= 5 MB and at <= 25 MB;
- per architecture: int8 - float macro-F1 of the same trained student, from one `kdsearch train` per architecture
  in int8 at the space's midpoint (KD, alpha 0.5, T 4.5, lr 3.2e-3; the search's trials cover only the pairs TPE
  picked), and over the search's int8 trials; the fp32 / int8 latency ratio (both formats timed here on an
  untrained build: latency does not depend on weights);
- whether the best int8 ResNet-34 beats the best float student that fits 25 MB;
and a plot of the front (benchmarks/results/deploy_front.png).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))
STUDENTS = ["resnet34", "resnet18", "resnet8", "shufflenet_v2_x1_0", "mobilenet_v3_large"]
SIZE = 16


def config(work: Path, npz: Path, samples: int, epochs: int) -> Path:
    cfg = {
        "name": "deploy-front", "seed": 0,
        "data": {"source": "npz", "root": str(npz), "image_size": SIZE, "augment": "standard"},
        "teacher": {"source": "train", "arch": "resnet18", "epochs": 8, "patience": 3},
        "student": {"candidates": STUDENTS, "max_size_mb": 25},
        "search": {"num_samples": samples, "max_concurrent": 2, "max_epochs": epochs, "grace_period": 2,
                   "reduction_factor": 3, "resources_per_trial": {"cpu": 1, "gpu": 0},
                   "space": {"loss": {"choice": ["kd", "dist", "kd_ls", "dkd"]},
                             "temperature": {"uniform": [1.0, 8.0]}, "alpha": {"uniform": [0.0, 1.0]},
                             "dkd_beta": {"loguniform": [0.5, 8.0]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]},
                             "batch_size": 64, "weight_decay": 1.0e-4, "class_weight_power": 0.0,
                             "precision": {"choice": ["fp32", "fp16", "int8"]}}},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}"},
        "output": {"dir": str(work / "out")},
    }
    path = work / "deploy_front.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_results(work: Path) -> list[dict]:
    """Every trial's last reported result, as Ray Tune wrote it."""
    out = []
    for f in (work / "out" / "ray" / "deploy-front").glob("*/result.json"):
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if lines:
            out.append(lines[-1])
    return out


def finished_trials(cfg, lasts: list[dict]) -> list[dict]:
    """The finished trials (kdsearch's own rule, core.figures), each with its (student, format) pair's median size
    and latency: what kdsearch's front compares (finished_study.pair_medians) and the doc's table shows."""
    from kdsearch.search.finished_study import rebuild

    study = rebuild(lasts, cfg, lambda r: r["trial_id"], lambda r: r["config"], lambda r: r)
    out = []
    for last in lasts:
        if last["trial_id"] not in study.ids.values():
            continue
        student, fmt = last["config"]["student_format"].split("/")
        pair = study.pairs[student, fmt]
        out.append({"trial_id": last["trial_id"], "student": student, "format": fmt,
                    "loss": last["config"].get("loss"), "alpha": last["config"].get("alpha"),
                    "val_macro_f1": last["val_macro_f1"], "val_macro_f1_float": last["val_macro_f1_float"],
                    "size_mb": last["size_mb"], "latency_ms": last["latency_ms"],
                    "pair_size_mb": pair["size_mb"], "pair_latency_ms": pair["latency_ms"],
                    "on_front": last["trial_id"] in study.front})
    return sorted(out, key=lambda r: -r["val_macro_f1"])


def kd_added(cfg, lasts: list[dict]) -> dict | None:
    """KD added as kdsearch's summary computes it: the no-KD control against its matched KD start point."""
    from kdsearch.core.figures import Figure
    from kdsearch.core.figures import kd_added as added

    figs = [Figure.of_result(r, cfg.search.metric, cfg.search.max_epochs, trial=r["trial_id"], config=r["config"],
                             precision=cfg.student.precision) for r in lasts]
    found = added(figs, cfg.search.resolved_mode)
    return None if found is None else {**found.as_dict(), "line": found.line()}


def per_architecture(path: Path, work: Path) -> dict[str, dict]:
    """One `kdsearch train` per student in int8 at the space's fixed point: its int8 file's and its float model's
    whole-split val macro-F1 (Distiller.deploy), from the run's metrics.json."""
    out = {}
    for name in STUDENTS:
        run = subprocess.run([KDSEARCH, "train", str(path), "--device", "cpu", "--set", f"search.space.student={name}",
                              "--set", "search.space.precision=int8"], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"kdsearch train {name} failed:\n{run.stderr[-3000:]}")
        final = json.loads((work / "out" / "train" / "metrics.json").read_text())["final"]
        out[name] = {k: final[k] for k in ("val_macro_f1", "val_macro_f1_float", "size_mb", "latency_ms", "scored")}
    return out


def untrained_latencies() -> dict[str, dict[str, float]]:
    """fp32 and int8 latency of each student on this CPU, from untrained builds (weights do not change it)."""
    import torch

    from kdsearch.models.deployed import as_format, latency_ms, load, script_bytes
    from kdsearch.models.students import create_student

    out = {}
    for name in STUDENTS:
        torch.manual_seed(0)
        model = create_student(name, 10, SIZE).eval()
        out[name] = {fmt: latency_ms(load(script_bytes(as_format(model, name, fmt, 10, [torch.rand(8, 3, SIZE, SIZE)]),
                                                       SIZE)), SIZE, runs=100)
                     for fmt in ("fp32", "int8")}
    return out


def plot(rows: list[dict], members: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    marks = {"fp32": "o", "fp16": "s", "int8": "^"}
    for ax, x, label in zip(axes, ("size_mb", "latency_ms"), ("TorchScript file (MB)", "CPU latency, batch 1 (ms)")):
        for i, name in enumerate(STUDENTS):
            for fmt, m in marks.items():
                pts = [(r[x], r["val_macro_f1"]) for r in rows if r["student"] == name and r["format"] == fmt]
                if pts:
                    ax.scatter(*zip(*pts), marker=m, color=f"C{i}", label=f"{name} {fmt}" if x == "size_mb" else None)
        ring = sorted(members, key=lambda r: r[x])
        ax.scatter([r[x] for r in ring], [r["val_macro_f1"] for r in ring], s=160, facecolors="none",
                   edgecolors="black", label="Pareto front" if x == "size_mb" else None)
        ax.set(xlabel=label, ylabel="val macro-F1 of the shipped file")
    axes[0].axvline(25, color="red", linestyle="--")
    fig.legend(fontsize=6, loc="lower center", ncol=5)
    fig.suptitle("Fashion-MNIST subset, 16 px: finished trials (front ringed)", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/kdsearch-deploy-front"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deploy_front.json")
    ap.add_argument("--reuse-search", action="store_true",
                    help="keep the search already in --work (its wall time and summary saved beside it); recompute "
                         "everything else from its trials")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from kdsearch.core.versions import versions
    from kdsearch.models.deployed import cpu_name

    from kd_gain import make_subset

    args.work.mkdir(parents=True, exist_ok=True)
    npz = make_subset(args.work / "fm2k.npz", 2000, 2000, 2000, 0)
    path = config(args.work, npz, args.samples, args.epochs)
    ran = args.work / "search_run.json"  # the search's own wall time and summary, beside the search it describes
    if not args.reuse_search:
        start = time.perf_counter()
        run = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu"], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"kdsearch run failed:\n{run.stderr[-3000:]}")
        ran.write_text(json.dumps({"wall_s": time.perf_counter() - start, "summary": run.stdout[-6000:]}))
    wall, summary = (json.loads(ran.read_text())[k] for k in ("wall_s", "summary"))
    from kdsearch.config import load_config

    cfg = load_config(path)
    lasts = last_results(args.work)
    rows = finished_trials(cfg, lasts)
    members = [r for r in rows if r["on_front"]]
    latency = untrained_latencies()
    trained = per_architecture(path, args.work)
    per_arch = {}
    for name in STUDENTS:
        int8 = [r for r in rows if r["student"] == name and r["format"] == "int8"]
        t = trained[name]
        per_arch[name] = {
            "train_int8": t, "train_int8_minus_float_macro_f1": t["val_macro_f1"] - t["val_macro_f1_float"],
            "search_int8_trials": len(int8),
            "search_int8_minus_float_macro_f1": (sum(r["val_macro_f1"] - r["val_macro_f1_float"] for r in int8)
                                                 / len(int8) if int8 else None),
            "latency_ms": latency[name], "fp32_over_int8_latency": latency[name]["fp32"] / latency[name]["int8"]}

    def best(rows_, limit):
        fit = [r for r in rows_ if r["size_mb"] <= limit]
        return max(fit, key=lambda r: r["val_macro_f1"]) if fit else None

    float_best = best([r for r in rows if r["format"] != "int8"], 25)
    r34 = best([r for r in rows if r["student"] == "resnet34"], 25)
    result = {
        "where": "this project's 2-core CPU machine (no GPU)", "cpu": cpu_name(), "wall_s": wall,
        "finished_trials": len(rows),
        "trials": rows, "front": members, "best_under_5mb": best(rows, 5), "best_under_25mb": best(rows, 25),
        "per_architecture": per_arch, "best_float_under_25mb": float_best, "best_int8_resnet34": r34,
        "int8_resnet34_beats_best_float": (r34["val_macro_f1"] > float_best["val_macro_f1"]
                                           if r34 and float_best else None),
        "kd_added": kd_added(cfg, lasts), "trials_run": len(lasts), "versions": versions(),
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2))
    plot(rows, members, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials", "summary")}, indent=2))


if __name__ == "__main__":
    main()

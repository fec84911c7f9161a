"""The report's figures, drawn with matplotlib (Agg: no display needed). Each function writes one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..core.results import ranked  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(trials: list[dict[str, Any]], metric: str, mode: str, path: Path, top: int = 5) -> Path:
    """The metric per epoch for the `top` best trials (by their last value)."""
    top_trials = ranked(trials, lambda t: t["last"], metric, mode)[:top]
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in top_trials:
        h = t["history"]
        ax.plot(h["training_iteration"], h[metric], marker="o", label=f"{t['trial_id']} {t['config'].get('student')}")
    ax.set(xlabel="epoch", ylabel=metric, title=f"learning curves, top {len(top_trials)} trials")
    ax.legend(fontsize=7)
    return _save(fig, path)


def metric_vs_size(trials: list[dict[str, Any]], metric: str, max_size_mb: float, path: Path,
                   front: frozenset[str] = frozenset()) -> Path:
    """Every trial's last metric against its student's size, one colour per distillation loss; ASHA-stopped
    trials marked; the Pareto front's members ringed; the size limit drawn."""
    fig, ax = plt.subplots(figsize=(6, 4))
    losses = list(dict.fromkeys(str(t["config"].get("loss", "kd")) for t in trials))
    colours = {name: f"C{i}" for i, name in enumerate(losses)}
    for loss in losses:
        for stopped, marker, how in ((False, "o", "ran to max_epochs"), (True, "x", "stopped early by ASHA")):
            pts = [(t["last"]["size_mb"], t["last"][metric]) for t in trials if t["stopped_early"] == stopped
                   and metric in t["last"] and str(t["config"].get("loss", "kd")) == loss]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=colours[loss], label=f"{loss}, {how}")
    ring = [(t["last"]["size_mb"], t["last"][metric]) for t in trials if t["trial_id"] in front]
    if ring:
        ax.scatter(*zip(*ring), s=160, facecolors="none", edgecolors="black", label="Pareto front")
    ax.axvline(max_size_mb, color="red", linestyle="--", label=f"size limit {max_size_mb:g} MB")
    ax.set(xlabel="student size (MB)", ylabel=metric, title=f"{metric} vs student size, every trial")
    ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_front(rows: list[dict[str, Any]], front: set[str], metric: str, path: Path) -> Path:
    """Finished trials' shipped-file `metric` against their file size and against their CPU latency; the Pareto
    front's members joined and labelled with student and format."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, x, label in zip(axes, ("size_mb", "latency_ms"), ("shipped file (MB)", "CPU latency, batch 1 (ms)")):
        others = [r for r in rows if r["trial_id"] not in front]
        members = sorted((r for r in rows if r["trial_id"] in front), key=lambda r: r[x])
        if others:
            ax.scatter([r[x] for r in others], [r[metric] for r in others], color="0.6", label="finished trial")
        if members:
            ax.plot([r[x] for r in members], [r[metric] for r in members], "o-", color="C3", label="Pareto front")
            for r in members:
                ax.annotate(f"{r['student']} {r['format']}", (r[x], r[metric]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        ax.set(xlabel=label, ylabel=metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"{metric} of the shipped file (whole val split) vs what it costs", fontsize=9)
    return _save(fig, path)


def parallel_coordinates(trials: list[dict[str, Any]], params: list[str], metric: str, path: Path) -> Path:
    """One line per trial across the searched hyperparameters (each scaled to [0, 1]), coloured by the metric."""
    rows = [t for t in trials if metric in t["last"]]
    cols = []
    for p in params:
        values = [t["config"].get(p) for t in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            x = np.array(values, dtype=float)
            if p in ("lr", "weight_decay") and (x > 0).all():
                x = np.log10(x)
        else:  # categorical: its values in order of first appearance
            cats = list(dict.fromkeys(map(str, values)))
            x = np.array([cats.index(str(v)) for v in values], dtype=float)
        span = x.max() - x.min() if len(x) else 0
        cols.append((x - x.min()) / span if span > 0 else np.full_like(x, 0.5))
    scores = np.array([t["last"][metric] for t in rows])
    fig, ax = plt.subplots(figsize=(max(6, len(params) * 1.2), 4))
    cmap = plt.get_cmap("viridis")
    lo, hi = (scores.min(), scores.max()) if len(scores) else (0, 1)
    for i in range(len(rows)):
        ax.plot(range(len(params)), [c[i] for c in cols], color=cmap((scores[i] - lo) / (hi - lo or 1)), alpha=0.8)
    ax.set_xticks(range(len(params)), params, rotation=30, fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"searched hyperparameters (scaled; lr, weight_decay in log), colour = {metric}")
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(lo, hi), cmap=cmap), ax=ax, label=metric)
    return _save(fig, path)


def confusion(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(max(4, len(class_names) * 0.6), max(4, len(class_names) * 0.6)))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(ax=ax, colorbar=False,
                                                                              xticks_rotation=45)
    ax.set_title(title)
    return _save(fig, path)


def sample_predictions(x: torch.Tensor, y: torch.Tensor, teacher_pred: torch.Tensor, student_pred: torch.Tensor,
                       class_names: list[str], path: Path, n: int = 16) -> Path:
    """A grid of val images titled teacher / student / truth; the student's mistakes in red. Mistakes first, each
    group a seeded random draw: a split stored class by class would otherwise show its first class only."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    wrong = order[student_pred[order] != y[order]].tolist()
    right = order[student_pred[order] == y[order]].tolist()
    pick = (wrong[: n // 2] + right)[:n]
    side = int(np.ceil(np.sqrt(len(pick))))
    fig, axes = plt.subplots(side, side, figsize=(side * 1.8, side * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick):
        img = x[i].permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ok = bool(student_pred[i] == y[i])
        ax.set_title(f"T {class_names[teacher_pred[i]]} S {class_names[student_pred[i]]}\ntrue {class_names[y[i]]}",
                     fontsize=7, color="black" if ok else "red")
    fig.suptitle("val predictions: teacher (T) vs student (S); student mistakes in red", fontsize=9)
    return _save(fig, path)

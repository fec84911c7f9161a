"""`kdsearch inspect-data`: what the data looks like before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from ..core.io import atomic_dir
from ..config import Config
from .dataset import Dataset, load_dataset
from ..losses import class_weights

SAMPLES_PER_CLASS = 8


def inspect_data(cfg: Config) -> tuple[dict[str, Any], Path]:
    """Summary dict and the folder holding data.json and samples.png."""
    data = load_dataset(cfg)
    summary = summarize(data)
    out = cfg.output_dir / "inspect"
    with atomic_dir(out) as tmp:
        (tmp / "data.json").write_text(json.dumps(summary, indent=2))
        save_image(sample_grid(data), tmp / "samples.png")
    return summary, out


def summarize(data: Dataset) -> dict[str, Any]:
    counts = data.class_counts()
    val_counts = torch.bincount(data.val.y, minlength=data.num_classes)
    nonzero = counts[counts > 0]
    summary: dict[str, Any] = {
        "classes": data.class_names,
        "class_table": data.class_table.as_json(),
        "train_counts": dict(zip(data.class_names, counts.tolist())),
        "val_counts": dict(zip(data.class_names, val_counts.tolist())),
        "test_images": len(data.test.y) if data.test is not None else 0,
        "images": data.counts(),  # labeled / transfer / val / test
        "imbalance_ratio": float(nonzero.max() / nonzero.min()),
        "channels": data.channels,
        "stored_size": list(data.train.x.shape[-2:]),
        "unreadable": data.unreadable,
        # class_weight_power 1 = balanced, 0.5 = a milder correction; both normalised to mean 1
        "suggested_class_weights": {
            f"power_{p}": dict(zip(data.class_names, [round(w, 4) for w in class_weights(counts, p).tolist()]))
            for p in (0.5, 1.0)
        },
    }
    if data.orig_sizes is not None and len(data.orig_sizes):
        w, h = data.orig_sizes[:, 0].float(), data.orig_sizes[:, 1].float()
        summary["original_sizes"] = {
            "width": {"min": int(w.min()), "median": int(w.median()), "max": int(w.max())},
            "height": {"min": int(h.min()), "median": int(h.median()), "max": int(h.max())},
        }
    return summary


def sample_grid(data: Dataset) -> torch.Tensor:
    """Up to 8 training images per class, one row per class."""
    rows = []
    x = data.train.x if data.channels == 3 else data.train.x.expand(-1, 3, -1, -1)
    for c in range(data.num_classes):
        idx = (data.train.y == c).nonzero().flatten()[:SAMPLES_PER_CLASS]
        row = torch.zeros(SAMPLES_PER_CLASS, *x.shape[1:], dtype=torch.uint8)
        row[: len(idx)] = x[idx]
        rows.append(row)
    return make_grid(torch.cat(rows).float() / 255.0, nrow=SAMPLES_PER_CLASS, padding=2)

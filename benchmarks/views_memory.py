"""Memory of cached views at the headline scale: `cache_views` 1 against 16 on 224 px RGB images.

    python benchmarks/views_memory.py [--images 1000] [--out benchmarks/results/views_memory.json]

Synthetic 224 px RGB images (dermamnist.yaml's input), a ResNet-8 checkpoint
teacher (at 32 px, so the teacher's cost does not dominate), strong
augmentation. Each setting runs in a fresh process that prepares the search
(`distill.prepare`: data, views, teacher outputs) and builds one trial
(`Distiller`), then reports:

- driver peak RSS (the process's ru_maxrss);
- the bytes of the cached views the driver holds and ships to every trial
  (pickled, as Ray's object store carries them);
- the bytes a trial keeps on its device for the views;
- what the same views took as pixels before (V x N x 3 x 224 x 224 bytes).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(images: int, views: int, work: Path) -> dict:
    import numpy as np
    import torch

    from kdsearch.config import Config
    from kdsearch.distill.distiller import Distiller, Hparams, prepare
    from kdsearch.models.students import create_student

    npz = work / f"synthetic-{images}.npz"
    if not npz.exists():
        rng = np.random.default_rng(0)
        np.savez(npz, train_images=rng.integers(0, 256, (images, 224, 224, 3), dtype=np.uint8),
                 train_labels=np.arange(images) % 7, val_images=rng.integers(0, 256, (64, 224, 224, 3), dtype=np.uint8),
                 val_labels=np.arange(64) % 7)
    torch.save(create_student("resnet8", 7, 32).state_dict(), work / "teacher.pt")
    cfg = Config.model_validate({
        "name": f"views-{views}", "data": {"source": "npz", "root": str(npz), "image_size": 224, "augment": "strong"},
        "teacher": {"source": "checkpoint", "arch": "resnet8", "weights": str(work / "teacher.pt"),
                    "input": {"size": 32}, "cache_views": views},
        "student": {"candidates": ["mobilenet_v3_small"]},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}"}, "output": {"dir": str(work / f"out-{views}")}})
    prepared = prepare(cfg, "cpu")
    d = Distiller(cfg, Hparams(student="mobilenet_v3_small", temperature=4.0, alpha=0.9, lr=1e-3, weight_decay=0.0,
                               batch_size=64, class_weight_power=0.0), prepared, "cpu")
    mb = 1e6
    return {
        "images": images, "cache_views": views,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "views_held_by_driver_mb": prepared.targets.views.nbytes / mb,
        "views_shipped_to_each_trial_mb": len(pickle.dumps(prepared.targets.views)) / mb,
        "views_on_trial_device_mb": d.views.nbytes / mb,
        "teacher_outputs_mb": prepared.targets.logits.nbytes / mb,
        "as_pixels_before_mb": views * images * 3 * 224 * 224 / mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "views_memory.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one setting in this process
    args = ap.parse_args()
    work = REPO / "runs" / "bench-views-memory"  # scratch; only the JSON is committed
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        print(json.dumps(measure(args.images, args.one, work)))
        return
    rows = []
    for views in (1, 16):  # a fresh process each: peak RSS is per process
        out = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--out", str(args.out),
                              "--one", str(views)], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    args.out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

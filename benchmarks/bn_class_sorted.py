"""BatchNorm recalibration on a class-sorted image folder: the first 512 training images vs a stratified sample.

    python benchmarks/bn_class_sorted.py [--seeds 3] [--out benchmarks/results/bn_class_sorted.json]

Writes an imbalanced image folder of 4 Fashion-MNIST classes (PNG files, one
subfolder per class, so it is read class by class like any image folder),
trains a MobileNetV3-Small student for 4 epochs at 32 px, and scores it on val
with BatchNorm statistics recomputed on (a) the first 512 training images,
which is what kdsearch did before, and (b) the seeded class-stratified sample
it uses now. Same student weights, same val split: only the sample differs.
Needs `apt-get install -y dataset-fashion-mnist`. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZES = {"t-shirt": 1200, "trouser": 400, "pullover": 200, "dress": 100}  # images per class, imbalanced


def make_folder(root: Path) -> Path:
    from kdsearch.data.sources import read_idx

    fashion = Path("/usr/share/datasets/fashion-mnist")
    x, y = read_idx(fashion / "train-images-idx3-ubyte.gz"), read_idx(fashion / "train-labels-idx1-ubyte.gz")
    for label, (name, n) in enumerate(SIZES.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(x[y == label][:n]):
            Image.fromarray(img).save(root / name / f"{i:04d}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bn_class_sorted.json")
    args = ap.parse_args()
    import torch

    from kdsearch.config import Config
    from kdsearch.data.dataset import stratified_sample
    from kdsearch.data.transforms import to_input
    from kdsearch.distill.distiller import BN_SAMPLES, Hparams, prepare, train_student
    from kdsearch.engine.loop import evaluate, recalibrate_bn

    work = REPO / "runs" / "bench-bn"  # scratch; only the JSON (--out) is committed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    root = make_folder(work / "folder")
    cfg = Config.model_validate({
        "name": "bench-bn", "data": {"source": "image_folder", "root": str(root), "image_size": 32, "augment": "none"},
        "teacher": {"source": "train", "arch": "resnet8", "epochs": 1},  # unused: alpha 0
        "student": {"candidates": ["mobilenet_v3_small"]},
        "search": {"max_epochs": 4}, "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}"},
        "output": {"dir": str(work / "out")}})
    prepared = prepare(cfg, "cpu")
    data, views = prepared.data, prepared.targets.views.pixels(0, slice(None))
    hp = Hparams(student="mobilenet_v3_small", temperature=4.0, alpha=0.0, lr=3e-3, weight_decay=1e-4,
                 batch_size=64, class_weight_power=1.0)
    samples = {"first_512": torch.arange(BN_SAMPLES), "stratified": stratified_sample(data.train.y, BN_SAMPLES,
                                                                                      cfg.seed)}
    scores: dict[str, list[float]] = {k: [] for k in samples}
    for seed in range(args.seeds):
        d, _ = train_student(cfg, hp, prepared, "cpu", seed=seed)
        for name, idx in samples.items():
            recalibrate_bn(d.model, [to_input(views[idx[i:i + 128]], d.spec, 32) for i in range(0, len(idx), 128)])
            scores[name].append(evaluate(d.model, data.val.x, data.val.y, d.spec, 32, data.num_classes, "cpu").macro_f1)
    result = {
        "classes": SIZES, "train_images": len(data.train.y), "val_images": len(data.val.y),
        "sample_classes": {k: torch.bincount(data.train.y[v], minlength=4).tolist() for k, v in samples.items()},
        "val_macro_f1": {k: {"runs": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                         for k, v in scores.items()},
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

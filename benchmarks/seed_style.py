"""The way the seeds distil: a baseline for `vs_seed.py`, deliberately written without kdsearch's pipeline.

    python benchmarks/seed_style.py --data subset.npz --out result.json [--samples 12] [--epochs 10]

A ResNet-18 teacher trained for a fixed number of epochs, then a Ray Tune
random search (no scheduler, no early stopping) over temperature, alpha, lr and
the student, where every trial trains for every epoch with the teacher running
inside each training step on that step's augmented batch, and scores the whole
val split after every epoch. Data goes through a torch `DataLoader` with
per-image torchvision transforms, as in the course notebooks.

Only the model definitions come from kdsearch (`create_student`), so both sides
train exactly the same architectures. Every val score is written with its wall
clock (`timestamp`), so the time to reach a given macro-F1 can be read off.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from kdsearch.models.students import create_student  # architectures only: the same models kdsearch trains

SIZE = 16
STUDENTS = ["resnet8", "mobilenet_v3_small", "shufflenet_v2_x0_5"]


def load(path: Path) -> dict[str, torch.Tensor]:
    """uint8 images [N, 1, 16, 16] and labels per split, resized once like the seeds' preprocessing."""
    z = np.load(path)
    out = {}
    for split in ("train", "val"):
        x = torch.from_numpy(z[f"{split}_images"]).unsqueeze(1).float()
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        out[f"{split}_x"] = x.round().clamp(0, 255).to(torch.uint8)
        out[f"{split}_y"] = torch.from_numpy(z[f"{split}_labels"]).long()
    return out


class Augmented(torch.utils.data.Dataset):
    """Per-image random crop (padding 2) and horizontal flip, then 3 channels normalised to [-1, 1]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool):
        self.x, self.y = x, y
        steps = [v2.RandomCrop(SIZE, padding=2, padding_mode="reflect"), v2.RandomHorizontalFlip()] if train else []
        self.tf = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]).expand(3, -1, -1), self.y[i]


@torch.no_grad()
def val_scores(model: torch.nn.Module, data: dict) -> tuple[float, float]:
    model.eval()
    loader = DataLoader(Augmented(data["val_x"], data["val_y"], train=False), batch_size=256)
    pred = torch.cat([model(x).argmax(1) for x, _ in loader])
    y = data["val_y"]
    return float((pred == y).float().mean()), float(f1_score(y, pred, average="macro"))


def train_teacher(data: dict, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = create_student("resnet18", 10, SIZE)
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(Augmented(data["train_x"], data["train_y"], True), batch_size=128, shuffle=True)
    for epoch in range(epochs):
        teacher.train()
        for x, y in loader:
            loss = F.cross_entropy(teacher(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"teacher epoch {epoch + 1}: val accuracy/macro-F1 {val_scores(teacher, data)}", flush=True)
    return teacher.eval()


def trial(config: dict, data: dict, teacher: torch.nn.Module, epochs: int) -> None:
    from ray import tune

    torch.set_num_threads(1)
    torch.manual_seed(config["seed"])
    student = create_student(config["student"], 10, SIZE)
    opt = torch.optim.AdamW(student.parameters(), lr=config["lr"], weight_decay=1e-4)
    loader = DataLoader(Augmented(data["train_x"], data["train_y"], True), batch_size=config["batch_size"],
                        shuffle=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    T, alpha = config["temperature"], config["alpha"]
    for epoch in range(epochs):
        student.train()
        start = time.perf_counter()
        for x, y in loader:
            with torch.no_grad():
                t_logits = teacher(x)  # the teacher inside every step
            s_logits = student(x)
            kd = F.kl_div(F.log_softmax(s_logits / T, 1), F.log_softmax(t_logits / T, 1), log_target=True,
                          reduction="batchmean") * T * T
            loss = alpha * kd + (1 - alpha) * F.cross_entropy(s_logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        train_s = time.perf_counter() - start
        acc, f1 = val_scores(student, data)
        tune.report({"val_accuracy": acc, "val_macro_f1": f1, "epoch": epoch + 1, "train_seconds": train_s,
                     "eval_seconds": time.perf_counter() - start - train_s, "wall": time.time()})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    from ray import tune

    t0 = time.time()
    data = load(args.data)
    teacher = train_teacher(data, args.teacher_epochs, args.seed)
    teacher_acc, teacher_f1 = val_scores(teacher, data)
    t_teacher = time.time()
    ray.init(num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    space = {"student": tune.choice(STUDENTS), "temperature": tune.uniform(1.0, 8.0), "alpha": tune.uniform(0.0, 1.0),
             "lr": tune.loguniform(1e-3, 3e-2), "batch_size": tune.choice([64, 128]), "seed": args.seed}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, data=data, teacher=teacher, epochs=args.epochs), {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_macro_f1", mode="max", num_samples=args.samples,
                                    max_concurrent_trials=args.concurrent),
        run_config=tune.RunConfig(storage_path=str(args.out.parent.resolve() / "ray"), verbose=0),
    )
    grid = tuner.fit()
    t_end = time.time()
    reports = sorted((float(r["wall"]), float(r["val_macro_f1"]))
                     for res in grid for r in res.metrics_dataframe.to_dict("records"))
    result = {
        "start": t0, "teacher_done": t_teacher, "end": t_end,
        "teacher_seconds": t_teacher - t0, "search_seconds": t_end - t_teacher, "end_to_end_seconds": t_end - t0,
        "teacher_val_accuracy": teacher_acc, "teacher_val_macro_f1": teacher_f1,
        "best_val_macro_f1": max(f for _, f in reports), "trials": args.samples, "epochs": args.epochs,
        "reports": reports,  # (unix time, val macro-F1) of every trial-epoch
        "epoch_seconds": [{"student": res.config["student"],
                           "train": float(res.metrics_dataframe["train_seconds"].median()),
                           "eval": float(res.metrics_dataframe["eval_seconds"].median())} for res in grid],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("reports", "epoch_seconds")}, indent=1))


if __name__ == "__main__":
    main()

"""Distillation on realistic data: class-sorted folders, few labels plus transfer images, the teacher check."""

from __future__ import annotations

import csv
import gzip
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import kdsearch.distill.distiller as distill
from kdsearch.config import Config
from kdsearch.core.labels import UNLABELED
from kdsearch.data.dataset import label_budget_mask, load_dataset, stratified_sample
from kdsearch.data.transforms import to_input
from kdsearch.distill.distiller import Distiller, Hparams, prepare, train_student
from kdsearch.engine.loop import evaluate, recalibrate_bn

from conftest import KDSEARCH, tiny_config, write_config


def _digit_png(img: np.ndarray, path: Path, size: int = 16, rgb: bool = False) -> None:
    im = Image.fromarray(np.round(img * 255 / 16).astype(np.uint8)).resize((size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    (im.convert("RGB") if rgb else im).save(path)


def class_sorted_folder(root: Path, sizes: dict[int, int]) -> Path:
    """An imbalanced image folder of digits, one subfolder per class: read class by class, like every image folder."""
    d = load_digits()
    for c, n in sizes.items():
        for i, img in enumerate(d.images[d.target == c][:n]):
            _digit_png(img, root / f"class_{c}" / f"{i:03d}.png")
    return root


def hp(**kw) -> Hparams:
    base = dict(student="shufflenet_v2_x0_5", temperature=4.0, alpha=0.9, lr=3e-3, weight_decay=1e-4, batch_size=32,
                class_weight_power=0.0)
    return Hparams(**{**base, **kw})


# --------------------------------------------------------------------------- BatchNorm on a class-sorted folder


def test_batchnorm_recalibration_sample_follows_the_classes_of_a_class_sorted_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "BN_SAMPLES", 64)  # under the largest class, as 512 is under a real folder's
    root = class_sorted_folder(tmp_path / "folder", {0: 170, 1: 80, 2: 40, 3: 25})
    cfg = Config.model_validate(tiny_config(
        tmp_path, data={"source": "image_folder", "root": str(root), "image_size": 16, "augment": "none"},
        search={"max_epochs": 4}))
    prepared = prepare(cfg, "cpu")
    y = prepared.data.train.y
    assert (y[:64] == 0).all()  # the split keeps the folder's order: the first 64 are all one class

    sample = stratified_sample(y, 64, cfg.seed)
    share = torch.bincount(y[sample], minlength=4).double() / 64
    assert torch.allclose(share, prepared.data.class_counts().double() / len(y), atol=1.5 / 64)
    assert torch.equal(sample, stratified_sample(y, 64, cfg.seed))  # the same sample for every trial

    d, hist = train_student(cfg, hp(student="mobilenet_v3_small", alpha=0.0, class_weight_power=1.0), prepared, "cpu")
    expected = to_input(prepared.targets.views.pixels(0, sample), d.spec, 16)
    assert torch.equal(torch.cat(list(d.bn_inputs())), expected)  # the distiller recalibrates on exactly that sample

    def score(idx: torch.Tensor) -> float:
        recalibrate_bn(d.model, [to_input(prepared.targets.views.pixels(0, idx), d.spec, 16)])
        return evaluate(d.model, prepared.data.val.x, prepared.data.val.y, d.spec, 16, 4, "cpu").macro_f1

    ours = hist[-1]["val_macro_f1"]
    shuffled = score(torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:64])
    first = score(torch.arange(64))
    assert ours >= shuffled - 0.05, (ours, shuffled)
    assert first < ours - 0.2, (first, ours)  # the bug this replaces: statistics of one class


# --------------------------------------------------------------------------- label budget


def test_label_budget_keeps_n_labels_per_class_seeded(tmp_path):
    cfg = Config.model_validate(tiny_config(tmp_path, data={"source": "digits", "image_size": 8, "augment": "none",
                                                            "label_budget": 7}))
    data = load_dataset(cfg)
    assert data.class_counts().tolist() == [7] * 10
    counts = data.counts()
    assert counts["labeled"] == 70 and counts["transfer"] == len(data.train.y) - 70 and counts["val"] == 360
    pool = data.pool()
    assert torch.equal(pool.x, data.train.x)  # every train image stays, as a transfer image when unlabeled
    assert (pool.y == UNLABELED).sum() == counts["transfer"]
    assert torch.equal(pool.y[pool.y != UNLABELED], data.train.y[data.labeled])
    assert torch.equal(load_dataset(cfg).labeled, data.labeled)  # deterministic
    other = label_budget_mask(data.train.y, 7, seed=1)
    assert not torch.equal(other, data.labeled) and torch.bincount(data.train.y[other]).tolist() == [7] * 10
    # a class with fewer images than the budget keeps all of them
    y = torch.tensor([0] * 10 + [1] * 3)
    assert torch.bincount(y[label_budget_mask(y, 5, 0)]).tolist() == [5, 3]


# --------------------------------------------------------------------------- unlabeled sources


def _write_idx(path: Path, images: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, images.ndim) + struct.pack(f">{images.ndim}I", *images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def _unlabeled_source(kind: str, root: Path, images: np.ndarray) -> dict:
    """Write `images` (uint8 [N, 8, 8]) as an unlabeled source of `kind`; returns its config section."""
    root.mkdir(parents=True)
    if kind == "image_folder":  # nested and flat, plus a broken file and a hidden one
        for i, img in enumerate(images):
            folder = root / ("" if i % 2 else f"batch{i % 3}/deeper")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).convert("RGB").save(folder / f"u{i}.png")
        (root / "broken.png").write_bytes(b"not a png")
        (root / ".hidden.png").write_bytes(b"also not")
        return {"source": "image_folder", "root": str(root)}
    if kind == "csv":
        with (root / "list.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"])
            for i, img in enumerate(images):
                Image.fromarray(img).save(root / f"u{i}.png")
                w.writerow([f"u{i}.png"])
        return {"source": "csv", "root": str(root), "manifest": "list.csv"}
    if kind == "npz":
        np.savez(root / "extra.npz", images=images)
        return {"source": "npz", "root": str(root / "extra.npz")}
    _write_idx(root / "extra-images-idx3-ubyte.gz", images)
    return {"source": "idx", "root": str(root)}


@pytest.mark.parametrize("kind", ["image_folder", "csv", "npz", "idx"])
def test_each_unlabeled_source_is_read_from_real_files(tmp_path, kind):
    images = np.round(load_digits().images[:13] * 255 / 16).astype(np.uint8)
    section = _unlabeled_source(kind, tmp_path / "unlabeled", images)
    cfg = Config.model_validate(tiny_config(tmp_path, data={"source": "digits", "image_size": 8, "augment": "none",
                                                            "unlabeled": section}))
    data = load_dataset(cfg)
    assert data.unlabeled.shape == (13, 1, 8, 8)  # in the labeled data's channels (an RGB folder becomes gray)
    # the same pixels whatever the file type (PNG round trips are exact for gray; RGB -> L rounds)
    got = sorted(data.unlabeled.flatten(1).tolist())
    assert np.abs(np.array(got) - np.array(sorted(images.reshape(13, -1).tolist()))).max() <= 1
    assert data.counts()["transfer_from_unlabeled"] == 13 and data.counts()["labeled"] == len(data.train.y)
    pool = data.pool()
    assert len(pool.y) == len(data.train.y) + 13 and (pool.y[-13:] == UNLABELED).all()
    if kind == "image_folder":
        assert data.unreadable == ["unlabeled: broken.png (UnidentifiedImageError)"]
    # decoded once: a second load reads the cache (the source can even vanish)
    cached = list((tmp_path / "out" / "cache").glob("unlabeled-*.pt"))
    assert len(cached) == 1
    assert torch.equal(load_dataset(cfg).unlabeled, data.unlabeled)


# --------------------------------------------------------------------------- transfer images in training


@pytest.fixture(scope="module")
def few_labels(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("few")
    cfg = Config.model_validate(tiny_config(
        tmp, data={"source": "digits", "image_size": 8, "augment": "none", "label_budget": 3},
        teacher={"source": "train", "arch": "resnet8", "epochs": 6, "patience": 6}, search={"max_epochs": 4}))
    return cfg, prepare(cfg, "cpu")


@pytest.mark.e2e
def test_alpha_zero_skips_transfer_images_and_kd_uses_them(few_labels):
    cfg, prepared = few_labels
    without = Distiller(cfg, hp(alpha=0.0), prepared, "cpu")
    assert len(without.y) == 30 and (without.y != UNLABELED).all()
    assert without.scheduler.T_max == 1 * 4  # one batch of 30 labels per epoch
    with_kd = Distiller(cfg, hp(alpha=0.9), prepared, "cpu")
    assert len(with_kd.y) == len(prepared.data.train.y) and (with_kd.y == UNLABELED).sum() == len(with_kd.y) - 30


@pytest.mark.e2e
def test_transfer_images_make_a_better_student_than_its_labels_alone(few_labels):
    cfg, prepared = few_labels
    assert prepared.teacher_metrics["val_macro_f1"] > 0.9  # trained on every train label
    _, alone = train_student(cfg, hp(alpha=0.0), prepared, "cpu")
    for loss in ("kd", "dist"):
        _, taught = train_student(cfg, hp(alpha=0.9, loss=loss), prepared, "cpu")
        assert taught[-1]["val_macro_f1"] > alone[-1]["val_macro_f1"] + 0.15, (loss, taught[-1], alone[-1])


# --------------------------------------------------------------------------- a search, as users run it


@pytest.mark.e2e
def test_search_with_transfer_images_and_the_loss_menu(tmp_path):
    from mlflow.tracking import MlflowClient

    images = np.round(load_digits().images[:40] * 255 / 16).astype(np.uint8)
    unlabeled = _unlabeled_source("image_folder", tmp_path / "unlabeled", images)
    cfg = tiny_config(tmp_path, name="fewlabels",
                      data={"source": "digits", "image_size": 8, "augment": "none", "label_budget": 5,
                            "unlabeled": unlabeled},
                      search={"num_samples": 4, "max_concurrent": 2, "max_epochs": 2, "grace_period": 2,
                              "space": {"loss": {"choice": ["kd", "dist", "kd_ls", "dkd"]},
                                        "dkd_beta": {"loguniform": [0.5, 8.0]}, "alpha": {"uniform": [0.1, 1.0]},
                                        "lr": 3.0e-3, "temperature": 4.0, "batch_size": 64, "weight_decay": 1.0e-4,
                                        "class_weight_power": 0.0}})
    path = write_config(tmp_path, cfg)
    proc = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_train = 1437
    assert f"images: 50 labeled, {n_train - 50 + 40} transfer ({n_train - 50} from data.label_budget, 40 from " \
           "data.unlabeled), 360 val, 0 test" in proc.stdout
    # every view of every labeled and transfer image once, plus val; nothing inside the trials
    assert f"teacher forward passes {n_train + 40 + 360} " in proc.stdout
    client = MlflowClient(cfg["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("fewlabels").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 4
    assert {r.data.params["loss"] for r in children} <= {"kd", "dist", "kd_ls", "dkd"}
    assert all("dkd_beta" in r.data.params for r in children)

    card = json.loads((tmp_path / "out" / "best" / "model_card.json").read_text())
    assert card["data"]["images"]["transfer"] == n_train - 50 + 40 and card["data"]["label_budget"] == 5
    report = subprocess.run([KDSEARCH, "report", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert rep["loss"] == card["hyperparameters"]["loss"] and f"(loss {rep['loss']})" in report.stdout

    again = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu", "--set", "name=fewlabels-again",
                            "--set", "search.num_samples=1"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teacher forward passes 0 " in again.stdout  # transfer images' outputs come from the cache too


# --------------------------------------------------------------------------- the teacher check


@pytest.mark.e2e
def test_a_teacher_no_better_than_the_majority_class_warns_and_can_be_refused(tmp_path):
    from kdsearch.models.students import create_student

    torch.manual_seed(0)
    weights = tmp_path / "untrained.pt"
    torch.save(create_student("resnet8", 10, 8).state_dict(), weights)  # never trained: predicts one class
    cfg = tiny_config(tmp_path, teacher={"source": "checkpoint", "arch": "resnet8", "weights": str(weights)})
    path = write_config(tmp_path, cfg)
    warned = subprocess.run([KDSEARCH, "train", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert warned.returncode == 0, warned.stderr[-2000:]
    assert "no better than predicting the majority class" in " ".join(warned.stderr.split())
    assert "majority-class baseline: accuracy" in warned.stderr

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cfg = tiny_config(fresh, teacher={"source": "checkpoint", "arch": "resnet8", "weights": str(weights),
                                      "min_val_macro_f1": 0.5})
    path = write_config(fresh, cfg)
    refused = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=fresh, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("kdsearch: error: teacher.min_val_macro_f1 0.5:") and "class" in last
    assert "Traceback" not in refused.stderr
    written = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
    # no MLflow store, no search, no teacher outputs: only the config and the decoded-data cache (which any
    # later run with these images reuses)
    assert [p for p in written if not p.startswith("out/cache/data-")] == ["cfg.yaml"], written

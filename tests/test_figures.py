"""Figures that mean what they say, on the shapes of data users have (issue 23): 16-bit and float scans, EXIF
orientation, classes whose files are all unreadable, csv labels with stray spaces or two spellings, label budgets
on imbalanced folders, class names that clash in MLflow, and a teacher with two small classes swapped."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.data.dataset import load_dataset
from kdsearch.data.decoders import _decode_files
from kdsearch.losses import class_weights
from kdsearch.teachers.step import check_class_order, majority_baseline

from conftest import tiny_config, write_config


def png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (gray [H, W] or RGB [H, W, 3]) written by hand: Pillow writes 16-bit gray but not 16-bit RGB."""
    h, w = arr.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + arr[i].astype(">u2").tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def decoded_value(path: Path) -> int:
    out = _decode_files([path], [0], 4, path.parent, None)
    assert out["unreadable"] == [], out["unreadable"]
    return int(out["train_x"][0, 0, 0, 0])


# Every mode Pillow hands over for a scan or a photo, at one level, and the 8-bit value it must become: 16-bit by its
# declared range (the high byte, as Pillow reduces a 16-bit RGB PNG), float by 0..1, 8-bit modes as they are.
LEVELS = [
    ("I;16 png, dark (max 256)", lambda p: png16(p, np.full((4, 4), 256, np.uint16)), 1),
    ("I;16 png, level 200", lambda p: png16(p, np.full((4, 4), 200, np.uint16)), 0),
    ("I;16 png, level 32768", lambda p: png16(p, np.full((4, 4), 32768, np.uint16)), 128),
    ("RGB 16-bit png, level 32768", lambda p: png16(p, np.full((4, 4, 3), 32768, np.uint16)), 128),
    ("RGB 16-bit png, level 256", lambda p: png16(p, np.full((4, 4, 3), 256, np.uint16)), 1),
    ("I;16 tif", lambda p: Image.fromarray(np.full((4, 4), 51400, np.uint16)).save(p.with_suffix(".tif")), 200),
    ("I (int32) tif", lambda p: Image.fromarray(np.full((4, 4), 25700, np.int32)).save(p.with_suffix(".tif")), 100),
    ("F tif 0..1", lambda p: Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(p.with_suffix(".tif")), 128),
    ("L png", lambda p: Image.new("L", (4, 4), 77).save(p), 77),
    ("1 png", lambda p: Image.new("1", (4, 4), 1).save(p), 255),
    ("P png", lambda p: _palette(p), 90),
    ("LA png", lambda p: Image.new("LA", (4, 4), (60, 10)).save(p), 60),
    ("RGBA png", lambda p: Image.new("RGBA", (4, 4), (40, 50, 60, 5)).save(p), 40),
    ("RGB tif", lambda p: Image.new("RGB", (4, 4), (33, 0, 0)).save(p.with_suffix(".tif")), 33),
]


def _palette(p: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
    im.save(p)


@pytest.mark.parametrize("what,write,expected", LEVELS, ids=[w for w, _, _ in LEVELS])
def test_each_pillow_mode_is_scaled_by_its_declared_range(tmp_path, what, write, expected):
    write(tmp_path / "img.png")
    path = next(tmp_path.iterdir())
    assert decoded_value(path) == expected


def test_gray_and_colour_16_bit_files_of_one_level_decode_alike(tmp_path):
    for level in (200, 256, 1000, 40000, 65535):
        png16(tmp_path / "g.png", np.full((4, 4), level, np.uint16))
        png16(tmp_path / "c.png", np.full((4, 4, 3), level, np.uint16))
        assert decoded_value(tmp_path / "g.png") == decoded_value(tmp_path / "c.png") == level >> 8


def test_a_float_image_outside_0_1_is_skipped_and_named(tmp_path):
    Image.fromarray(np.full((4, 4), 300.0, np.float32)).save(tmp_path / "hu.tif")
    out = _decode_files([tmp_path / "hu.tif"], [0], 4, tmp_path, None)
    assert len(out["train_y"]) == 0
    assert out["unreadable"] == ["hu.tif (mode F values 300..300 outside 0..1; save it as 8- or 16-bit)"]


def exif_jpeg(path: Path, orientation: int) -> None:
    """24 wide x 16 tall as stored: left half red, right half blue; EXIF says how to turn it for display."""
    a = np.zeros((16, 24, 3), np.uint8)
    a[:, :12, 0] = 255
    a[:, 12:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=95)


def test_photos_are_read_with_their_exif_orientation(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(3):
            exif_jpeg(tmp_path / "img" / cls / f"{i}.jpg", 6)  # 6: rotate 90 degrees clockwise to display
    out = _decode_files(sorted((tmp_path / "img").rglob("*.jpg")), [0] * 6, 16, tmp_path, None)
    assert out["orig_sizes"].tolist()[0] == [16, 24]  # as displayed: 16 wide, 24 tall
    x = out["train_x"][0].float()
    # displayed, the red half (stored left) is on top and the blue half at the bottom
    assert x[0, :6].mean() > 200 and x[2, :6].mean() < 50
    assert x[2, -6:].mean() > 200 and x[0, -6:].mean() < 50


def folder(root: Path, counts: dict[str, int], broken: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            path = root / cls / f"{i}.png"
            if cls in broken:
                path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            else:
                colour = np.array([k * 90 % 256, 60, 200 - k * 60])
                img = np.clip(colour + rng.integers(-5, 5, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(path)
    return root


def folder_config(tmp_path: Path, **data) -> Config:
    return Config.model_validate(tiny_config(tmp_path, data={"source": "image_folder", "root": str(tmp_path / "img"),
                                                             "image_size": 8, **data}))


def test_a_class_whose_files_are_all_unreadable_is_no_class(tmp_path, caplog):
    folder(tmp_path / "img", {"a": 15, "b": 15, "c": 4}, broken=("c",))
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        data = load_dataset(folder_config(tmp_path))
    assert data.class_names == ["a", "b"] and data.num_classes == 2
    assert "every image of class(es) c is unreadable; left out of the classes" in caplog.text
    assert class_weights(data.class_counts(), 1.0).tolist() == [1.0, 1.0]  # was 0.167 / 0.167 / 2.667
    assert len(data.unreadable) == 4


def test_inspect_data_suggests_weights_for_the_readable_classes_only(tmp_path, run_cli):
    import json

    folder(tmp_path / "img", {"a": 15, "b": 15, "c": 4}, broken=("c",))
    path = write_config(tmp_path, tiny_config(tmp_path, data={"source": "image_folder",
                                                              "root": str(tmp_path / "img"), "image_size": 8}))
    code, _, err = run_cli("inspect-data", path)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "inspect" / "data.json").read_text())
    assert report["classes"] == ["a", "b"]
    assert report["suggested_class_weights"]["power_1.0"] == {"a": 1.0, "b": 1.0}


def test_the_majority_baseline_under_a_label_budget_is_the_true_majority(tmp_path):
    # "a" sorts first and is the minority: budgeted counts tie at 10/10, and the old argmax took class 0
    folder(tmp_path / "img", {"a": 30, "b": 150})
    data = load_dataset(folder_config(tmp_path, label_budget=10))
    assert data.class_counts().tolist() == [10, 10]
    baseline = majority_baseline(data)
    assert baseline.accuracy == pytest.approx(150 / 180, abs=0.01)  # every val image called "b"
    assert baseline.per_class_f1[0] == 0.0


def csv_folder(tmp_path: Path, labels: list[str]) -> Path:
    root = tmp_path / "img"
    root.mkdir()
    rows = []
    for k, label in enumerate(labels):
        for i in range(6):
            colour = (200 if "mel" in label.lower() else 20, 90, 40)
            Image.new("RGB", (8, 8), colour).save(root / f"{k}_{i}.png")
            rows.append(f"{k}_{i}.png,{label}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def csv_cfg(tmp_path: Path, **data) -> dict:
    return tiny_config(tmp_path, data={"source": "csv", "root": str(tmp_path / "img"), "manifest": "labels.csv",
                                       "image_size": 8, **data})


def test_csv_labels_with_stray_spaces_are_one_class(tmp_path):
    csv_folder(tmp_path, ["melanoma ", "melanoma", " nevus", "nevus"])
    data = load_dataset(Config.model_validate(csv_cfg(tmp_path)))
    assert data.class_names == ["melanoma", "nevus"]
    assert torch.bincount(torch.cat([data.train.y, data.val.y])).tolist() == [12, 12]


def test_csv_integer_labels_with_spaces_keep_their_numbers(tmp_path):
    csv_folder(tmp_path, [" 0", "0 ", "1"])
    data = load_dataset(Config.model_validate(csv_cfg(tmp_path)))
    assert data.class_names == ["0", "1"] and data.label_ids == [0, 1]


def test_labels_differing_only_by_case_exit_2_naming_both_unless_mapped(tmp_path, run_cli):
    csv_folder(tmp_path, ["Melanoma", "melanoma", "nevus", "nevus"])
    code, _, err = run_cli("validate", write_config(tmp_path, csv_cfg(tmp_path)))
    assert code == 2
    assert "labels 'Melanoma' and 'melanoma' differ only by case or spacing" in err
    assert "data.label_map ({'melanoma': 'Melanoma'})" in err and "Traceback" not in err
    mapped = csv_cfg(tmp_path, label_map={"Melanoma": "melanoma"})
    data = load_dataset(Config.model_validate(mapped))
    assert data.class_names == ["melanoma", "nevus"]


def test_repeated_class_names_exit_2(tmp_path, run_cli):
    raw = tiny_config(tmp_path, data={"source": "digits", "image_size": 8,
                                      "class_names": ["zero", "one", "two", "three", "four", "five", "six", "seven",
                                                      "eight", "one"]})
    code, _, err = run_cli("validate", write_config(tmp_path, raw))
    assert code == 2 and "data.class_names names 'one' more than once" in err


def test_per_class_mlflow_keys_are_unique_and_map_back():
    from kdsearch.tracking import class_keys_mapping, class_metric_keys, epoch_metrics

    names = ["a+b", "a_b", "a b", "c"]
    keys = class_metric_keys(names)
    assert len(set(keys)) == 4 and keys[3] == "c" and keys[2] == "a b"
    mapping = class_keys_mapping(names)
    assert [mapping[f"val_f1.{k}"]["class"] for k in keys] == names
    logged = epoch_metrics([{"epoch": 1, "val_macro_f1": 0.5, "val_per_class_f1": [0.1, 0.2, 0.3, float("nan")]}],
                           names)
    per_class = {m.key: m.value for m in logged if m.key.startswith("val_f1.")}
    assert len(per_class) == 3  # class c has no val image: no F1, nothing logged (not a 0)
    assert {mapping[k]["class"]: v for k, v in per_class.items()} == {"a+b": 0.1, "a_b": 0.2, "a b": 0.3}


def ham_like(tmp_path: Path) -> Config:
    """Seven classes with HAM10000's imbalance (its 6,705/1,113/.../142/115 images, over 10)."""
    return ham_like_counts(tmp_path, [670, 111, 55, 33, 23, 14, 12])


def ham_like_counts(tmp_path: Path, counts: list[int]) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    y = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ham.npz", train_images=rng.integers(0, 255, (len(y), 8, 8), dtype=np.uint8),
             train_labels=y, val_images=rng.integers(0, 255, (len(y), 8, 8), dtype=np.uint8), val_labels=y)
    return Config.model_validate(tiny_config(tmp_path, data={"source": "npz", "root": str(tmp_path), "image_size": 8}))


def _check(cfg: Config, data, pred: np.ndarray) -> dict:
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), data.num_classes).float()[:, None, :] * 5
    teacher = SimpleNamespace(members=[SimpleNamespace(identity={"source": "checkpoint"})])
    return check_class_order(cfg, teacher, logits, data)


def test_a_swap_of_two_small_classes_is_caught(tmp_path):
    cfg = ham_like(tmp_path)
    data = load_dataset(cfg)
    y = data.val.y.numpy()
    good = y.copy()
    wrong = np.flatnonzero(y == 0)[:60]  # a realistic teacher: 9% of the big class wrong
    good[wrong] = 1
    assert _check(cfg, data, good)["val_mean_recall_own_order"] > 0.9  # its own order is right: no complaint
    swapped = good.copy()
    swapped[y == 3], swapped[y == 4] = 4, 3  # 33 and 23 images of 1,000: plain accuracy drops by 0.056 only
    with pytest.raises(KdsearchError, match="teacher output 4 looks like data class '3'.*teacher output 3 looks like "
                                            "data class '4'|teacher output 3 looks like data class '4'"):
        _check(cfg, data, swapped)
    allowed = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"allow_class_mismatch": True})})
    scores = _check(allowed, data, swapped)
    assert scores["val_mean_recall_best_matching"] - scores["val_mean_recall_own_order"] > 0.25


def test_a_swap_of_classes_with_a_few_val_images_is_not_called_a_permutation(tmp_path):
    cfg = ham_like(tmp_path)
    data = load_dataset(cfg)
    y = data.val.y.numpy()
    pred = y.copy()
    pred[y == 5], pred[y == 6] = 6, 5  # 14 and 12 images: 26 together, above CLASS_ORDER_MIN_IMAGES, caught
    with pytest.raises(KdsearchError):
        _check(cfg, data, pred)
    few = ham_like_counts(tmp_path / "few", [670, 111, 55, 33, 23, 4, 4])
    fy = load_dataset(few).val.y.numpy()
    chance = fy.copy()
    chance[fy == 5], chance[fy == 6] = 6, 5  # 8 images in all: could be chance, not called a permutation
    _check(few, load_dataset(few), chance)
    weak = y.copy()
    weak[np.flatnonzero(y == 6)[:7]] = 5  # 7 of 12 wrong: a weak class, not a permutation (recall 0.58 vs 0.42)
    _check(cfg, data, weak)


@pytest.mark.e2e
def test_a_time_budget_that_cuts_every_trial_reports_whole_split_figures(tmp_path):
    """`search.time_budget_s` stops every trial before its last epoch, so each trial's last score is on the rung
    subset (12 of 90 val images). The search's result, the export and MLflow still show whole-split figures, say
    what the subset figure was, and tag the cut trials budget_cut, not 'stopped early by ASHA' or 'running'."""
    import json
    import os
    import re
    import subprocess

    from mlflow.tracking import MlflowClient

    from conftest import KDSEARCH

    raw = tiny_config(tmp_path, name="budget", data={"source": "digits", "image_size": 8, "augment": "none",
                                                       "val_fraction": 0.05})
    raw["search"].update({"max_epochs": 500, "grace_period": 500, "num_samples": 2, "max_concurrent": 2,
                          "rung_val_size": 12, "time_budget_s": 25})
    raw["search"]["space"]["lr"] = {"loguniform": [1.0e-3, 1.0e-2]}
    run = subprocess.run([KDSEARCH, "run", str(write_config(tmp_path, raw))], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "0 completed, 0 stopped early by ASHA, 2 cut by search.time_budget_s" in run.stdout
    best = re.search(r"best trial (\w+): val_macro_f1 ([\d.]+) \(fp32 file, whole val split, 90 images, cut by the "
                     r"time budget after (\d+) of 500 epochs\); no trial ran all its epochs: chosen on val_macro_f1 "
                     r"([\d.]+) \(float model, rung subset: 12 of 90 val images, cut by the time budget", run.stdout)
    assert best, run.stdout
    table = " ".join(re.sub("[│┃]", " ", run.stdout).split())  # the export table, its wrapped cells joined
    assert "trial's last val_macro_f1 " in table and "(float model, rung subset: 12 of 90 val images" in table
    assert "trial NOT finished: fp32 file, whole val split, 90 images, cut by the time budget after" in table
    card = json.loads((tmp_path / "out" / "best" / "model_card.json").read_text())
    assert card["metrics"]["val_macro_f1"] == pytest.approx(float(best.group(2)), abs=1e-4)
    # export checks its file against the whole-split re-score of the search, and keeps what it was chosen on
    assert card["metrics"]["trial_val_images"] == 90 and card["metrics"]["trial_rung_subset"]["val_images"] == 12
    assert card["metrics"]["trial_rung_subset"]["val_macro_f1"] == pytest.approx(float(best.group(4)), abs=1e-4)
    assert card["trial_finished"] is False and card["trial_epochs"]["done"] == int(best.group(3))
    client = MlflowClient(raw["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("budget").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kdsearch.kind") == "search")
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(card["metrics"]["val_macro_f1"])
    assert parent.data.metrics["best_val_macro_f1_rung_subset"] == pytest.approx(float(best.group(4)), abs=1e-4)
    trials = [r for r in runs if r.data.tags.get("kdsearch.kind") == "trial"]
    assert {r.data.tags["kdsearch.ended"] for r in trials} == {"budget_cut"}
    assert {r.info.status for r in trials} == {"FINISHED"}
    chosen = next(r for r in trials if r.data.tags["kdsearch.trial_id"] == best.group(1))
    assert chosen.data.metrics["val_macro_f1"] == pytest.approx(card["metrics"]["val_macro_f1"])
    # case 6, fp32: the other (stopped) trial by id exits 2; with --partial it exports, and says it did not finish
    other = next(r.data.tags["kdsearch.trial_id"] for r in trials if r.data.tags["kdsearch.trial_id"] != best.group(1))
    refused = subprocess.run([KDSEARCH, "export-best", str(tmp_path / "cfg.yaml"), "--trial", other], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "did not finish" in refused.stderr and "--partial" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    partial = subprocess.run([KDSEARCH, "export-best", str(tmp_path / "cfg.yaml"), "--trial", other, "--partial",
                              "--out", str(tmp_path / "other")], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert "NOT finished: float model, rung subset: 12 of 90 val images, cut by the time budget" in partial.stdout
    other_card = json.loads((tmp_path / "other" / "model_card.json").read_text())
    assert other_card["trial_finished"] is False and other_card["trial_epochs"]["ended"] == "budget_cut"
    latest = max(client.search_model_versions("name='budget-student'"), key=lambda v: int(v.version))
    assert latest.tags["kdsearch.trial_finished"] == "false" and latest.tags["kdsearch.trial_id"] == other
    assert latest.description.startswith("NOT a finished trial")


@pytest.mark.e2e
def test_a_time_budget_sizes_the_search_and_its_best_finished_trial_is_exported(tmp_path):
    """`search.time_budget_s` as the search's size: num_samples (500) is never reached, the search stops on time,
    and the exported student is the best of the trials that ran all their epochs (whole-split scores)."""
    import json
    import subprocess

    from ray import tune

    from conftest import KDSEARCH

    raw = tiny_config(tmp_path, name="timed")
    raw["search"].update({"num_samples": 500, "max_concurrent": 2, "max_epochs": 1, "grace_period": 1,
                          "time_budget_s": 20})
    raw["search"]["space"]["lr"] = {"loguniform": [1.0e-3, 1.0e-2]}
    run = subprocess.run([KDSEARCH, "run", str(write_config(tmp_path, raw))], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    analysis = tune.ExperimentAnalysis(str(tmp_path / "out" / "ray" / "timed"))
    finished = [t for t in analysis.trials if t.status == "TERMINATED" and t.last_result.get("val_full")]
    assert 2 <= len(analysis.trials) < 500 and finished
    # on time: the last trial started within the budget (Tune's clock starts with the fit, after data and teacher)
    starts = [t.last_result["timestamp"] - t.last_result["time_total_s"] for t in analysis.trials
              if "timestamp" in t.last_result]  # a trial cut before its first report has no result
    assert len(starts) >= 2 and max(starts) - min(starts) <= 20 + 5
    best = max(finished, key=lambda t: t.last_result["val_macro_f1"])
    card = json.loads((tmp_path / "out" / "best" / "model_card.json").read_text())
    assert card["trial_id"] == best.trial_id
    assert card["metrics"]["val_macro_f1"] == pytest.approx(best.last_result["val_macro_f1"], abs=1e-6)

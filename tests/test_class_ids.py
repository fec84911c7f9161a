"""Class ids mean what the user means: integer csv labels keep their numbers, text labels sort as text, one-based
ids are refused or remapped, and a teacher in another class order is caught before any student trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdsearch.config import Config
from kdsearch.core.errors import KdsearchError
from kdsearch.data.dataset import load_dataset
from kdsearch.data.transforms import to_input
from kdsearch.models.students import create_student, final_linear, student_spec
from kdsearch.teachers.step import teach

from conftest import tiny_config

CLASSES = 11  # more than 10: "10" sorted as text would come before "2"


def colour_folder(root, labels) -> tuple[list[str], list]:
    """Ten 8x8 images per class, each class its own colour; returns the manifest rows and the images' labels."""
    rng = np.random.default_rng(0)
    rows = []
    for k, label in enumerate(labels):
        colour = np.array([(k * 23) % 256, (k * 71 + 40) % 256, (k * 131 + 90) % 256])
        for i in range(10):
            img = np.clip(colour + rng.integers(-8, 8, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"{k}_{i}.png")
            rows.append((f"{k}_{i}.png", label))
    (root / "labels.csv").write_text("path,label\n" + "\n".join(f"{p},{label}" for p, label in rows) + "\n")
    return rows


def csv_config(tmp_path, **teacher) -> Config:
    cfg = tiny_config(tmp_path, data={"source": "csv", "root": str(tmp_path / "img"), "manifest": "labels.csv",
                                      "image_size": 8, "val_fraction": 0.3},
                      teacher=teacher or tiny_config(tmp_path)["teacher"])
    return Config.model_validate(cfg)


def teacher_trained_elsewhere(tmp_path, rows, roll: int = 0):
    """A ResNet-8 trained the usual way, straight from the files: output i = integer label i."""
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / "img" / p))).permute(2, 0, 1) for p, _ in rows])
    y = torch.tensor([int(label) for _, label in rows])
    torch.manual_seed(0)
    model = create_student("resnet8", CLASSES, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    spec = student_spec(Config.model_validate(tiny_config(tmp_path)))
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(to_input(x, spec, 8)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    if roll:  # the same teacher with its outputs in another order
        head = next(n for n, m in model.named_modules() if m is final_linear(model))
        for key in (f"{head}.weight", f"{head}.bias"):
            state[key] = torch.roll(state[key], roll, dims=0)
    path = tmp_path / f"teacher{roll}.pt"
    torch.save(state, path)
    return {"source": "checkpoint", "arch": "resnet8", "weights": str(path)}


@pytest.fixture
def integer_csv(tmp_path):
    (tmp_path / "img").mkdir()
    return colour_folder(tmp_path / "img", [str(k) for k in range(CLASSES)])


@pytest.mark.e2e  # trains a teacher the usual way first
def test_integer_csv_labels_keep_their_numbers_and_the_teacher_agrees(tmp_path, integer_csv):
    cfg = csv_config(tmp_path, **teacher_trained_elsewhere(tmp_path, integer_csv))
    data = load_dataset(cfg)
    assert data.class_names == [str(k) for k in range(CLASSES)] and data.label_ids == list(range(CLASSES))
    scores = teach(cfg, data, "cpu").scores
    assert scores["val_accuracy"] > 0.9, scores  # output i is label i: the teacher is as good as it was trained
    assert scores["val_mean_recall_best_matching"] == pytest.approx(scores["val_mean_recall_own_order"])


@pytest.mark.e2e  # trains a teacher the usual way first
def test_a_teacher_in_another_class_order_exits_2_naming_the_mapping(tmp_path, integer_csv):
    rolled = teacher_trained_elsewhere(tmp_path, integer_csv, roll=1)
    cfg = csv_config(tmp_path, **rolled)
    data = load_dataset(cfg)
    with pytest.raises(KdsearchError) as e:
        teach(cfg, data, "cpu")
    assert "teacher output 1 looks like data class '0'" in str(e.value)
    assert "teacher.allow_class_mismatch: true" in str(e.value) and "data.class_names" in str(e.value)
    allowed = csv_config(tmp_path, **rolled, allow_class_mismatch=True)
    scores = teach(allowed, data, "cpu").scores  # the user's call: used as it is
    assert scores["val_mean_recall_best_matching"] - scores["val_mean_recall_own_order"] > 0.5


def test_text_labels_still_sort_as_text_and_class_names_can_order_them(tmp_path):
    (tmp_path / "img").mkdir()
    names = ["nevus", "melanoma", "bcc", "akiec"]
    colour_folder(tmp_path / "img", names)
    assert load_dataset(csv_config(tmp_path)).class_names == sorted(names)
    ordered = Config.model_validate({**csv_config(tmp_path).model_dump(), "data": {
        **csv_config(tmp_path).data.model_dump(), "class_names": names}})
    data = load_dataset(ordered)
    assert data.class_names == names and data.label_ids is None
    wrong = ordered.model_copy(update={"data": ordered.data.model_copy(update={"class_names": names[:3] + ["bkl"]})})
    with pytest.raises(KdsearchError, match="not in the data: bkl; missing: akiec"):
        load_dataset(wrong)


def test_one_based_npz_labels_exit_2_or_remap_with_the_mapping_kept(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(1, 8), 12)  # 7 classes numbered 1..7
    np.savez(tmp_path / "one_based.npz", train_images=rng.integers(0, 255, (len(y), 8, 8), dtype=np.uint8),
             train_labels=y.reshape(-1, 1))
    raw = tiny_config(tmp_path, data={"source": "npz", "root": str(tmp_path), "image_size": 8})
    with pytest.raises(KdsearchError, match=r"integer label ids 1\.\.7 are not 0\.\.K-1 \(missing 0\).*"
                                            r"data\.remap_labels: true.*data\.class_names one name per label id \(7\)"):
        load_dataset(Config.model_validate(raw))
    raw["data"]["remap_labels"] = True
    data = load_dataset(Config.model_validate(raw))
    assert data.num_classes == 7 and data.class_names == [str(k) for k in range(1, 8)]
    assert data.label_ids == list(range(1, 8))
    assert json.loads(json.dumps(data.class_table.as_json()))[0] == {"index": 0, "class": "1", "label_id": 1}
    assert int(data.train.y.max()) == 6  # never an empty class 0 for macro-F1 to average in


def test_validate_shows_the_class_table_and_refuses_gaps_without_decoding(tmp_path, integer_csv, run_cli):
    from conftest import write_config

    cfg = csv_config(tmp_path).model_dump(mode="json", by_alias=True)
    code, out, err = run_cli("validate", write_config(tmp_path, cfg))
    assert code == 0, err
    assert "classes: 0=0, 1=1, 2=2, 3=3, 4=4, 5=5, 6=6, 7=7, 8=8, 9=9, 10=10" in out
    assert not (tmp_path / "out" / "cache").exists()  # nothing decoded
    np.savez(tmp_path / "one_based.npz", train_images=np.zeros((14, 8, 8), dtype=np.uint8),
             train_labels=np.repeat(np.arange(1, 8), 2))
    cfg["data"] = {"source": "npz", "root": str(tmp_path / "one_based.npz"), "image_size": 8}
    code, _, err = run_cli("validate", write_config(tmp_path, cfg, "npz.yaml"))
    assert code == 2 and "integer label ids 1..7 are not 0..K-1 (missing 0)" in err

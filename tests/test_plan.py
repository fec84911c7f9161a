"""One plan per command (preflight.Plan): the data's folders are listed once, and each student is built at most
once to weigh its files, whatever the command and in every process it starts (Ray's trial workers included).

Counted on the installed `kdsearch` command through Python's audit hooks (tests/audit.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdsearch.data.sources import list_sources

import audit
from conftest import KDSEARCH, tiny_config, write_config

STUDENTS = ["shufflenet_v2_x0_5", "resnet8"]


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


@pytest.fixture(scope="module")
def skin(tmp_path_factory):
    """A skin-lesion-shaped image folder: classes of different sizes, one with images in a subfolder, one empty
    class folder (left out of the classes), and a folder of unlabeled images with subfolders."""
    tmp = tmp_path_factory.mktemp("plan")
    root, extra = tmp / "skin", tmp / "unlabeled"
    _images(root / "melanoma", 14, 0)
    _images(root / "melanoma" / "dermoscopy", 4, 1)
    _images(root / "nevus", 24, 2)
    _images(root / "keratosis", 10, 3)
    (root / "empty").mkdir()
    _images(extra / "clinic_a", 8, 4)
    _images(extra / "clinic_b", 8, 5)
    cfg = tiny_config(
        tmp,
        data={"source": "image_folder", "root": str(root), "image_size": 8, "augment": "none",
              "unlabeled": {"source": "image_folder", "root": str(extra)}},
        student={"candidates": STUDENTS},
        search={"num_samples": 2, "max_epochs": 1, "grace_period": 1, "max_concurrent": 2,
                "space": {**tiny_config(tmp)["search"]["space"], "precision": {"choice": ["fp32", "int8"]}}},
    )
    return tmp, write_config(tmp, cfg), [root, extra]


@pytest.mark.e2e  # the installed command, Ray for `run`
@pytest.mark.parametrize("command", ["validate", "train", "train-teacher", "run", "report"])
def test_each_folder_is_listed_once_and_each_student_built_once(skin, command):
    tmp, config, roots = skin
    args = [command, str(config)] + (["--device", "cpu"] if command != "validate" else [])
    listed, measured, _, proc = audit.counted([KDSEARCH, *args], tmp, roots, command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = audit.folders(roots)
    assert set(listed) == folders, (set(listed) ^ folders)  # every folder looked at: the plan is the listing
    assert all(n == 1 for n in listed.values()), {str(p): n for p, n in listed.items() if n > 1}
    built = {student: measured[audit.MEASURED_EVENT, student] for student in STUDENTS}
    weighed = {student: measured[audit.COUNTED_EVENT, student] for student in STUDENTS}
    assert built == {s: 1 for s in STUDENTS}, built  # a cold cache: both formats weighed on one build each
    assert all(n <= 1 for n in weighed.values()), weighed


def test_the_listing_is_what_the_decode_reads(skin):
    """The plan's listing: images in subfolders counted with their top class folder, the empty class left out of
    the classes, the unlabeled folder's images counted; the decode then reads exactly those files."""
    from kdsearch.config import load_config
    from kdsearch.data.dataset import load_dataset

    tmp, config, roots = skin
    cfg = load_config(config)
    found = list_sources(cfg.data)
    assert found.data.images == 52 and found.data.labels.count("melanoma") == 18
    assert found.data.empty_classes == ["empty"] and found.classes.names == ["keratosis", "melanoma", "nevus"]
    assert found.unlabeled is not None and found.unlabeled.images == 16
    data = load_dataset(cfg, found)
    assert len(data.train.y) + len(data.val.y) == 52 and len(data.unlabeled) == 16


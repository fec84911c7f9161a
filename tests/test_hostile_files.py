"""An image folder a user might really have: a decompression bomb, truncated and zero-byte files, 16-bit, CMYK,
palette and RGBA images, nested subfolders, a symlink loop, hidden files and an empty class folder. Each has a
defined outcome; none gives a traceback or hangs."""

from __future__ import annotations

import logging
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from kdsearch.config import Config
from kdsearch.data.dataset import load_dataset

from conftest import KDSEARCH, tiny_config, write_config


def bomb_png(path: Path, side: int = 60_000) -> None:
    """A 60 KB-class PNG whose header declares side x side pixels: Pillow learns the size before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def hostile_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    bomb_png(root / "cat" / "bomb.png")
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "cat" / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16)).save(root / "dog" / "white16.png")
    Image.fromarray(np.full((12, 12), 32768, dtype=np.uint16)).save(root / "dog" / "grey16.png")
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(root / "dog" / "cmyk.jpg")
    Image.new("P", (12, 12), 3).save(root / "dog" / "palette.png")
    Image.new("RGBA", (12, 12), (0, 0, 255, 10)).save(root / "dog" / "rgba.png")
    (root / "dog" / "deeper" / "deepest").mkdir(parents=True)
    Image.new("RGB", (12, 12), (0, 255, 0)).save(root / "dog" / "deeper" / "deepest" / "nested.png")
    (root / "dog" / "loop").symlink_to(root / "dog", target_is_directory=True)  # a link loop
    (root / "cat" / ".hidden.png").write_bytes(good)
    (root / "empty_class").mkdir()
    return root


def _cfg(tmp_path: Path, **data) -> Config:
    return Config.model_validate(tiny_config(tmp_path, data={"source": "image_folder", "root": str(tmp_path / "img"),
                                                             "image_size": 12, **data}))


def test_each_hostile_file_has_its_outcome(tmp_path, caplog):
    hostile_folder(tmp_path / "img")
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        data = load_dataset(_cfg(tmp_path))
    assert data.class_names == ["cat", "dog"]  # the empty class folder is not a class...
    assert "class folder(s) with no images, left out of the classes: empty_class" in caplog.text  # ...and is named
    bad = sorted(data.unreadable)
    assert len(bad) == 3, bad
    assert bad[0].startswith("cat/bomb.png (60000 x 60000 pixels, over data.max_image_pixels 89478485)")
    assert bad[1].startswith("cat/empty.png (") and bad[2].startswith("cat/truncated.png (")
    # 6 + 6 plain images, 5 odd modes and the nested one; no file through the link loop twice, no hidden file
    assert len(data.train.y) + len(data.val.y) == 6 + 6 + 5 + 1
    x = torch_cat(data)
    assert {255, 128} <= {int(v) for v in x.reshape(len(x), -1).max(1).values}  # 16-bit scaled, not clipped


def torch_cat(data):
    import torch

    return torch.cat([data.train.x, data.val.x])


def test_max_image_pixels_is_the_users_to_raise(tmp_path):
    root = tmp_path / "img"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (i * 50, 0, 0)).save(root / cls / f"{i}.png")
    Image.new("RGB", (200, 100), (9, 9, 9)).save(root / "a" / "slide.png")  # 20,000 pixels
    small = load_dataset(_cfg(tmp_path, max_image_pixels=10_000))
    assert small.unreadable == ["a/slide.png (200 x 100 pixels, over data.max_image_pixels 10000)"]
    assert len(small.train.y) + len(small.val.y) == 8
    raised = load_dataset(_cfg(tmp_path, max_image_pixels=None))  # the limit is part of the cache key
    assert raised.unreadable == [] and len(raised.train.y) + len(raised.val.y) == 9


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/hostname", "a/../../outside.png"])
def test_a_manifest_path_leaving_its_root_exits_2(tmp_path, run_cli, bad_path):
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"{i}.png")
    rows = [f"{i}.png,{i % 2}" for i in range(4)] + [f"{bad_path},1"]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    path = write_config(tmp_path, tiny_config(tmp_path, data={"source": "csv", "root": str(root),
                                                              "manifest": "labels.csv", "image_size": 8}))
    code, _, err = run_cli("validate", path)
    assert code == 2
    assert f"path(s) leave data.root {root}, e.g. {bad_path}; give paths relative to data.root" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_inspect_data_validate_and_train_on_the_hostile_folder_through_the_cli(tmp_path):
    hostile_folder(tmp_path / "img")
    cfg = tiny_config(tmp_path, data={"source": "image_folder", "root": str(tmp_path / "img"), "image_size": 12})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for command in (["validate"], ["inspect-data"], ["train", "--device", "cpu"]):
        done = subprocess.run([KDSEARCH, *command, str(path)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "empty_class" in done.stderr, command  # the warning reaches every command's user
        assert "Traceback" not in done.stdout + done.stderr
    inspected = subprocess.run([KDSEARCH, "inspect-data", str(path)], cwd=tmp_path, capture_output=True, text=True)
    assert "cat/bomb.png (60000 x 60000 pixels" in inspected.stdout

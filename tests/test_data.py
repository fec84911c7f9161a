"""Every data source reads small real files written here; bad data exits 2; unreadable images are named."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from kdsearch.config import Config, InputSpec
from kdsearch.core.errors import KdsearchError
from kdsearch.data.dataset import load_dataset
from kdsearch.data.transforms import augment, to_input

from conftest import tiny_config

RNG = np.random.default_rng(0)


def cfg_for(tmp_path, **data) -> Config:
    return Config.model_validate(tiny_config(tmp_path, data={"augment": "none", "image_size": 16, **data}))


def write_images(root, counts: dict[str, int], fmt="PNG", mode="RGB", size=(20, 12)):
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = RNG.integers(0, 256, (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / cls / f"{cls}_{i}.{fmt.lower()}", fmt)


def test_image_folder_png_and_jpeg(tmp_path):
    root = tmp_path / "imgs"
    write_images(root, {"melanoma": 6}, "PNG")
    write_images(root, {"nevus": 9}, "JPEG")
    ds = load_dataset(cfg_for(tmp_path, source="image_folder", root=str(root)))
    assert ds.class_names == ["melanoma", "nevus"]
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape[1:] == (3, 16, 16)
    assert len(ds.train.y) + len(ds.val.y) == 15
    assert set(ds.val.y.tolist()) == {0, 1}  # stratified: both classes in val
    assert ds.orig_sizes.tolist()[0] == [20, 12]


def test_validate_opens_no_image(tmp_path, monkeypatch, run_cli):
    """`validate` on a real image folder counts files and classes from the listing: no image is opened."""
    from conftest import write_config

    root = tmp_path / "imgs"
    write_images(root, {"melanoma": 6, "nevus": 9})

    def forbidden(*args, **kwargs):
        raise AssertionError(f"validate opened an image: {args[0] if args else kwargs}")

    monkeypatch.setattr(Image, "open", forbidden)
    cfg = tiny_config(tmp_path, data={"source": "image_folder", "root": str(root), "image_size": 16})
    code, out, err = run_cli("validate", write_config(tmp_path, cfg))
    assert code == 0, err
    assert "classes: 0=melanoma, 1=nevus" in out
    with pytest.raises(AssertionError, match="opened an image"):  # the trap is live: loading the data springs it
        load_dataset(cfg_for(tmp_path, source="image_folder", root=str(root)))


def test_grayscale_folder_stays_one_channel_and_models_get_three(tmp_path):
    root = tmp_path / "gray"
    write_images(root, {"a": 4, "b": 4}, "PNG", mode="L")
    ds = load_dataset(cfg_for(tmp_path, source="image_folder", root=str(root)))
    assert ds.channels == 1
    x = to_input(ds.train.x[:2], InputSpec(), 16)
    assert x.shape == (2, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1])


def test_unreadable_image_is_skipped_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    write_images(root, {"a": 4, "b": 4})
    (root / "a" / "broken.png").write_bytes(b"not a png at all")
    with caplog.at_level("WARNING", logger="kdsearch"):
        ds = load_dataset(cfg_for(tmp_path, source="image_folder", root=str(root)))
    assert len(ds.train.y) + len(ds.val.y) == 8
    assert any("broken.png" in u for u in ds.unreadable)
    assert "broken.png" in caplog.text


def test_decode_cache_is_reused(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_images(root, {"a": 4, "b": 4})
    cfg = cfg_for(tmp_path, source="image_folder", root=str(root))
    first = load_dataset(cfg)
    assert len(list((cfg.output_dir / "cache").glob("data-*.pt"))) == 1

    import kdsearch.data.dataset as data_mod

    def no_decoding(d, listing):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setitem(data_mod.DECODERS._entries, "image_folder", no_decoding)  # the registered decoder
    second = load_dataset(cfg)
    assert torch.equal(first.train.x, second.train.x) and first.fingerprint == second.fingerprint
    # a changed file changes the key: decoding happens again
    write_images(root, {"c": 3})
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(cfg)


def test_csv_manifest(tmp_path):
    root = tmp_path / "csvdata"
    write_images(root, {"x": 4, "y": 4})
    rows = ["path,label"] + [f"{p.parent.name}/{p.name},{'benign' if p.parent.name == 'x' else 'malignant'}"
                              for p in sorted(root.glob("*/*.png"))]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(cfg_for(tmp_path, source="csv", root=str(root), manifest="labels.csv"))
    assert ds.class_names == ["benign", "malignant"]
    assert len(ds.train.y) + len(ds.val.y) == 8


def test_csv_manifest_naming_missing_files_exits_2(tmp_path):
    root = tmp_path / "csvdata"
    write_images(root, {"x": 2})
    (root / "labels.csv").write_text("path,label\nx/x_0.png,a\nx/gone.png,b\n")
    with pytest.raises(KdsearchError, match=r"data.manifest .*1 listed file\(s\) missing.*x/gone.png"):
        load_dataset(cfg_for(tmp_path, source="csv", root=str(root), manifest="labels.csv"))


def test_npz_medmnist_layout_keeps_its_val_and_test(tmp_path):
    def split(n):
        return RNG.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8), RNG.integers(0, 7, (n, 1))
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = split(40), split(10), split(12)
    np.savez(tmp_path / "dermamnist.npz", train_images=tr_x, train_labels=tr_y, val_images=va_x, val_labels=va_y,
             test_images=te_x, test_labels=te_y)
    ds = load_dataset(cfg_for(tmp_path, source="npz", root=str(tmp_path)))
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (40, 10, 12)
    assert ds.train.x.shape[1:] == (3, 16, 16)
    assert torch.equal(ds.val.y, torch.from_numpy(va_y.ravel()))
    # data.root may also name the .npz itself, as search_spaces/dermamnist.yaml does
    by_file = load_dataset(cfg_for(tmp_path, source="npz", root=str(tmp_path / "dermamnist.npz")))
    assert torch.equal(by_file.train.x, ds.train.x)


def _write_idx(path, arr, gz):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    (gzip.open if gz else open)(path, "wb").write(header + arr.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_plain(tmp_path, gz):
    suffix = ".gz" if gz else ""
    x = RNG.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    y = np.arange(30, dtype=np.uint8) % 3
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", x[:6], gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", y[:6], gz)
    ds = load_dataset(cfg_for(tmp_path, source="idx", root=str(tmp_path), image_size=28, class_names=["a", "b", "c"]))
    assert ds.class_names == ["a", "b", "c"] and ds.channels == 1
    assert len(ds.test.y) == 6 and len(ds.train.y) + len(ds.val.y) == 30
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(x[:6]))  # native size: pixels untouched


def test_cifar10_python_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name, n in [("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10)]:
        batch = {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    ds = load_dataset(cfg_for(tmp_path, source="cifar10", root=str(tmp_path), image_size=32, val_fraction=0.5))
    assert ds.class_names[3] == "class3" and ds.train.x.shape[1:] == (3, 32, 32)
    assert len(ds.test.y) == 10 and len(ds.train.y) + len(ds.val.y) == 40


def test_cifar_pickle_cannot_run_code(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(base / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(KdsearchError, match="not a CIFAR python batch"):
        load_dataset(cfg_for(tmp_path, source="cifar10", root=str(tmp_path)))


def test_digits_split_is_stratified_and_seeded(tmp_path):
    a = load_dataset(cfg_for(tmp_path))
    b = load_dataset(cfg_for(tmp_path))
    assert torch.equal(a.val.y, b.val.y) and len(a.val.y) == 360
    total = torch.bincount(torch.cat([a.train.y, a.val.y]))
    assert ((torch.bincount(a.val.y) - 0.2 * total).abs() <= 1).all()  # each class keeps its 20% share


@pytest.mark.parametrize("counts,match", [({"only": 5}, "at least two"), ({}, "no readable images")])
def test_one_class_or_no_images_exits_2(tmp_path, counts, match):
    root = tmp_path / "imgs"
    root.mkdir()
    write_images(root, counts)
    with pytest.raises(KdsearchError, match=match):
        load_dataset(cfg_for(tmp_path, source="image_folder", root=str(root)))
    assert not list((tmp_path / "out").rglob("*.pt"))  # nothing cached


def test_all_unreadable_exits_2(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(KdsearchError, match=r"no readable images found \(2 unreadable\)"):
        load_dataset(cfg_for(tmp_path, source="image_folder", root=str(root)))


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(KdsearchError, match="data.root .*folder not found.*subfolder per class"):
        load_dataset(cfg_for(tmp_path, source="image_folder", root=str(tmp_path / "nope")))


@pytest.mark.parametrize("level", ["standard", "strong"])
def test_augment_is_seeded_batched_and_uint8(level):
    x = torch.from_numpy(RNG.integers(0, 256, (16, 3, 16, 16), dtype=np.uint8))
    a = augment(x, level, torch.Generator().manual_seed(1))
    b = augment(x, level, torch.Generator().manual_seed(1))
    c = augment(x, level, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert torch.equal(augment(x, "none"), x)


def test_standard_augment_is_shift_and_flip_of_the_same_pixels():
    x = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = augment(x, "standard", torch.Generator().manual_seed(0))
    # integer shifts and flips only resample existing pixels: every output value exists in the input
    assert set(out.unique().tolist()) <= set(range(64))
    assert any(torch.equal(o[0], x[0, 0].flip(-1)) or torch.equal(o[0], x[0, 0]) for o in out)

"""Decoders: one per data.source, each turning its files into uint8 tensors at image_size (registered in DECODERS).

Image files are decoded with PIL (an unreadable one is skipped and named); array sources (digits, npz, idx,
cifar10) are resized as tensors, in chunks.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import DataConfig, UnlabeledConfig
from ..core.errors import KdsearchError
from ..core.labels import UNLABELED, class_table
from ..core.registry import Registry
from .sources import (
    Listing,
    cifar_files,
    idx_files,
    npz_path,
    read_idx,
    require_root,
    require_unlabeled_root,
    unlabeled_idx_files,
)

log = logging.getLogger("kdsearch")

DECODERS: Registry[Callable[[DataConfig, Listing], dict]] = Registry("data.source")
"""data.source -> decoder(data config, its listing: `sources.Listing`, made once per command) -> {"train_x",
"train_y" (and val_/test_ where the source has them), "class_names", "label_ids", "unreadable", "orig_sizes"}."""


def _decode_files(paths: list[Path], labels: list[int], size: int, base: Path, max_pixels: int | None) -> dict:
    """PIL-decode each file, square-resize it; unreadable files, and files declaring more than `max_pixels`
    pixels (data.max_image_pixels), are skipped and named."""
    arrays, ys, sizes, bad = [], [], [], []
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the check is ours, below: opening reads only the header, decoding comes after
    try:
        for p, label in zip(paths, labels):
            name = p.relative_to(base) if p.is_relative_to(base) else p
            try:
                with Image.open(p) as im:
                    if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                        bad.append(f"{name} ({im.size[0]} x {im.size[1]} pixels, over data.max_image_pixels "
                                   f"{max_pixels})")
                        continue
                    im.load()
                    # The orientation the file declares (EXIF 1-8, phones and dermatoscopes): every viewer applies it
                    im = ImageOps.exif_transpose(im)
                    arrays.append(_to_uint8(im, size))
                    sizes.append(im.size)  # as displayed
                    ys.append(label)
            except OutOfRange as e:
                bad.append(f"{name} ({e})")
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                bad.append(f"{name} ({type(e).__name__})")
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if any(a.ndim == 3 for a in arrays):  # mixed folders become RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    x = _nhwc_to_nchw(np.stack(arrays)) if arrays else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return {"train_x": x, "train_y": torch.tensor(ys, dtype=torch.int64), "unreadable": bad,
            "orig_sizes": torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)}


class OutOfRange(ValueError):
    """An image whose values lie outside the range its mode declares (a float image beyond 0..1, a 32-bit integer
    one beyond 16 bits): there is no one way to map it to 8 bits, so it is skipped and named."""


# The full scale of each high-bit-depth mode Pillow hands over: a value is scaled by its mode's range, never by
# the image's own maximum, so one level means one brightness in every file (a dark 16-bit scan stays dark).
# "I" (32-bit signed) holds 16-bit data in practice (PGM, older PNG readers, 16-bit TIFF strips): 0..65535.
# "F" (32-bit float) is taken as 0..1, the convention of float TIFFs and of scikit-image.
FULL_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _to_uint8(im: Image.Image, size: int) -> np.ndarray:
    """[size, size] grayscale or [size, size, 3] RGB uint8. High-bit-depth grayscale (16-bit PNG and TIFF scans,
    float TIFFs) is scaled from its mode's full range (FULL_SCALE) to 0..255; 8-bit modes keep their values;
    palette, CMYK and alpha images become RGB."""
    if im.mode in FULL_SCALE:
        full = FULL_SCALE[im.mode]
        a = np.asarray(im, dtype=np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > full):
            raise OutOfRange(f"mode {im.mode} values {np.nanmin(a):g}..{np.nanmax(a):g} outside 0..{full:g}; save it "
                             "as 8- or 16-bit")
        # 16-bit: the high byte, as Pillow itself reduces a 16-bit RGB PNG, so gray and colour files of one level
        # give one value; float: rounded
        eight = np.floor(a / 256.0) if full == 65535.0 else np.round(a * 255.0)
        im = Image.fromarray(eight.astype(np.uint8))
    gray = im.mode in ("1", "L")
    return np.asarray(im.convert("L" if gray else "RGB").resize((size, size), Image.BILINEAR))


def _decode_labeled(paths: list[Path], labels: list, d: DataConfig, base: Path, where: str, text: bool) -> dict:
    """Decode labeled files and make the class table from the labels of the files that decoded: a class whose
    every file is unreadable is no class (as an empty folder is not), whichever way its files fail."""
    out = _decode_files(paths, list(range(len(paths))), d.image_size, base, d.max_image_pixels)
    read = out["train_y"].tolist()  # positions in `paths` of the files that decoded
    dead = sorted({str(label) for label in labels} - {str(labels[i]) for i in read})
    if dead and read:
        log.warning("%s: every image of class(es) %s is unreadable; left out of the classes", where, ", ".join(dead))
    table = class_table({labels[i] for i in read} or set(labels), d.class_names, d.remap_labels, where, text=text)
    out["train_y"] = torch.tensor([table.index[labels[i]] for i in read], dtype=torch.int64)
    return {**out, "class_names": table.names, "label_ids": table.label_ids}


@DECODERS.register("image_folder")
def _decode_image_folder(d: DataConfig, listing: Listing) -> dict:
    root = require_root(d)
    # folder names are names, even "1", "2"
    out = _decode_labeled(listing.paths, listing.labels, d, root, f"data.root {root}", text=True)
    return {**out, "label_ids": None}


@DECODERS.register("csv")
def _decode_csv(d: DataConfig, listing: Listing) -> dict:
    return _decode_labeled(listing.paths, listing.labels, d, require_root(d), f"data.manifest {d.manifest}",
                           text=False)


def _resize_tensor(x: np.ndarray, size: int) -> torch.Tensor:
    """[N, H, W] or [N, H, W, C] uint8 -> [N, C, size, size] uint8, antialiased, in chunks to bound memory."""
    if x.ndim == 3:
        x = x[..., None]
    t = _nhwc_to_nchw(x)
    if t.shape[-1] == size and t.shape[-2] == size:
        return t
    out = torch.empty(t.shape[0], t.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, len(t), 4096):
        chunk = F.interpolate(t[i:i + 4096].float(), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        out[i:i + 4096] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out


def _nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch.uint8)


def _from_arrays(d: DataConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]], where: str,
                 names: list[str] | None = None) -> dict:
    """Array sources: labels are integer ids (labels.class_table's rule); `names`: the source's own class names
    per id (CIFAR's batches.meta), used when data.class_names does not give them."""
    labels = {name: np.asarray(y).reshape(-1).astype(np.int64) for name, (_, y) in splits.items()}
    table = class_table({int(v) for y in labels.values() for v in np.unique(y)}, d.class_names, d.remap_labels, where)
    lookup = np.vectorize(table.index.__getitem__, otypes=[np.int64])
    out: dict = {"unreadable": []}
    for name, (x, _) in splits.items():
        out[f"{name}_x"] = _resize_tensor(x, d.image_size)
        out[f"{name}_y"] = torch.from_numpy(lookup(labels[name]) if len(labels[name]) else labels[name])
    out["orig_sizes"] = torch.tensor([[splits["train"][0].shape[2], splits["train"][0].shape[1]]] *
                                     len(splits["train"][0]), dtype=torch.int64).reshape(-1, 2)
    use_source_names = names is not None and d.class_names is None
    out["class_names"] = [names[i] for i in table.label_ids] if use_source_names else table.names
    out["label_ids"] = table.label_ids
    return out


@DECODERS.register("digits")
def _decode_digits(d: DataConfig, listing: Listing) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, values 0..16
    return _from_arrays(d, {"train": (x, digits.target)}, "digits")


@DECODERS.register("npz")
def _decode_npz(d: DataConfig, listing: Listing) -> dict:
    path = npz_path(Path(d.root))
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise KdsearchError(f"data.root {path}: not a readable .npz ({e})") from None
    with z:
        if "train_images" not in z or "train_labels" not in z:
            raise KdsearchError(f"data.root {path}: needs arrays train_images and train_labels (found "
                                f"{list(z.keys())})")
        splits = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "val", "test") if f"{s}_images" in z}
    return _from_arrays(d, splits, f"data.root {path}")


@DECODERS.register("idx")
def _decode_idx(d: DataConfig, listing: Listing) -> dict:
    files = idx_files(Path(d.root))
    return _from_arrays(d, {s: (read_idx(images), read_idx(labels)) for s, (images, labels) in files.items()},
                        f"data.root {d.root}")


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python batches are pickles; allow only what they hold, so a planted file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:
        raise KdsearchError(f"data.root {path}: not a CIFAR python batch ({e})") from None


@DECODERS.register("cifar10")
def _decode_cifar10(d: DataConfig, listing: Listing) -> dict:
    files = cifar_files(Path(d.root))
    splits: dict[str, list] = {"train": [], "test": []}
    names = None
    for p in files:
        batch = _unpickle(p)
        if p.name == "batches.meta":
            names = [n.decode() for n in batch[b"label_names"]]
            continue
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits["test" if p.name == "test_batch" else "train"].append((x, np.asarray(batch[b"labels"])))
    arrays = {s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for s, v in splits.items() if v}
    return _from_arrays(d, arrays, f"data.root {d.root}", names)


def decode_unlabeled(u: UnlabeledConfig, listing: Listing, size: int, max_pixels: int | None) -> dict:
    root = require_unlabeled_root(u)
    if u.source in ("image_folder", "csv"):
        out = _decode_files(listing.paths, [UNLABELED] * len(listing.paths), size, root, max_pixels)
        return {"x": out["train_x"], "unreadable": out["unreadable"]}
    if u.source == "npz":
        path = npz_path(root, "data.unlabeled.root")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = ["images"] if "images" in z.files else sorted(k for k in z.files if k.endswith("images"))
                if not keys:
                    raise KdsearchError(f"data.unlabeled.root {path}: needs an `images` array (or *_images arrays); "
                                        f"found {z.files}")
                arrays = [z[k] for k in keys]
        except (ValueError, OSError) as e:
            raise KdsearchError(f"data.unlabeled.root {path}: not a readable .npz ({e})") from None
    else:
        arrays = [read_idx(p) for p in unlabeled_idx_files(root)]
    return {"x": torch.cat([_resize_tensor(a, size) for a in arrays]), "unreadable": []}

"""Data: every source decoded once into uint8 tensors at image_size, cached on disk, split.

Decoding is the slow part (PIL on thousands of files), so its result is saved
under `output.dir/cache/` keyed by a fingerprint of the files (path, size,
mtime) and the settings; a later run with the same key loads one file.
"""

from __future__ import annotations

import csv
import gzip
import logging
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from ._io import fingerprint, load_cache, save_atomic
from .config import Config, DataConfig, UnlabeledConfig
from .errors import KdsearchError
from .labels import UNLABELED
from .registry import Registry

log = logging.getLogger("kdsearch")

CACHE_FORMAT = 1  # bump when the cached layout changes


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, S, S]
    y: torch.Tensor  # int64 [N]


@dataclass
class Dataset:
    """Decoded, resized, split data. Images stay uint8 until a batch is fed to a model."""

    train: Split
    val: Split
    test: Split | None
    class_names: list[str]
    fingerprint: str
    """Identifies the files, decode settings and split; keys the teacher cache."""
    unreadable: list[str] = field(default_factory=list)
    orig_sizes: torch.Tensor | None = None  # int [N_all, 2] (width, height) before resizing
    labeled: torch.Tensor | None = None
    """bool [N_train]: whose label the student gets (data.label_budget); None = every train image's."""
    unlabeled: torch.Tensor | None = None
    """uint8 [N_u, C, S, S]: data.unlabeled's images, in the train split's channels."""
    unlabeled_fingerprint: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train.x.shape[1]

    def class_counts(self) -> torch.Tensor:
        """Labeled images per class, as the student sees them (what its CE class weights follow)."""
        y = self.train.y if self.labeled is None else self.train.y[self.labeled]
        return torch.bincount(y, minlength=self.num_classes)

    @property
    def pool_fingerprint(self) -> str:
        """Identifies the images the student trains on (train split + unlabeled): keys the teacher-output cache."""
        if self.unlabeled_fingerprint is None:
            return self.fingerprint
        return fingerprint({"data": self.fingerprint, "unlabeled": self.unlabeled_fingerprint})

    def pool_labels(self) -> torch.Tensor:
        """Labels of `pool()`'s images, without copying any pixels."""
        y = self.train.y if self.labeled is None else torch.where(self.labeled, self.train.y, UNLABELED)
        if self.unlabeled is None:
            return y
        return torch.cat([y, torch.full((len(self.unlabeled),), UNLABELED, dtype=torch.int64)])

    def pool(self) -> Split:
        """The student's training images: the train split, then data.unlabeled's images. Labels are the train
        split's where the student may see them, else UNLABELED (transfer images: the teacher's outputs only)."""
        x = self.train.x if self.unlabeled is None else torch.cat([self.train.x, self.unlabeled])
        return Split(x, self.pool_labels())

    def counts(self) -> dict[str, int]:
        """labeled / transfer / val / test image counts."""
        n_labeled = len(self.train.y) if self.labeled is None else int(self.labeled.sum())
        n_extra = 0 if self.unlabeled is None else len(self.unlabeled)
        return {"labeled": n_labeled, "transfer": len(self.train.y) - n_labeled + n_extra,
                "transfer_from_label_budget": len(self.train.y) - n_labeled, "transfer_from_unlabeled": n_extra,
                "val": len(self.val.y), "test": 0 if self.test is None else len(self.test.y)}


# --------------------------------------------------------------------------- public entry


def load_dataset(cfg: Config) -> Dataset:
    """Decode (or load the decode cache), check, and split the config's data."""
    d = cfg.data
    files = _source_files(d)
    key = fingerprint({"format": CACHE_FORMAT, "source": d.source, "size": d.image_size, "manifest": d.manifest,
                 "class_names": d.class_names, "files": files})
    cache = cfg.output_dir / "cache" / f"data-{key}.pt"
    decoded = load_cache(cache)
    to_save = []  # written only once everything decoded and checked: bad input leaves no cache behind
    if decoded is None:
        decoded = DECODERS[d.source](d)
        _check_decoded(d, decoded)
        to_save.append((decoded, cache))
    for name in decoded["unreadable"]:
        log.warning("skipped unreadable image: %s", name)
    data = _split(decoded, d, cfg.seed, key)
    if d.label_budget is not None:
        data.labeled = label_budget_mask(data.train.y, d.label_budget, cfg.seed)
    if d.unlabeled is not None:
        data.unlabeled, data.unlabeled_fingerprint, bad, pending = _load_unlabeled(cfg, data.channels)
        data.unreadable += bad
        to_save += pending
    for obj, path in to_save:
        save_atomic(obj, path)
    return data


def label_budget_mask(y: torch.Tensor, budget: int, seed: int) -> torch.Tensor:
    """Keep `budget` labels per class (all of a smaller class), picked with a seeded generator.

    scikit-learn's stratified splitters keep class *proportions*; a fixed count
    per class is what a labeling budget means, hence these few lines.
    """
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    mask = np.zeros(len(y_np), dtype=bool)
    for c in np.unique(y_np):
        members = np.flatnonzero(y_np == c)
        mask[rng.choice(members, size=min(budget, len(members)), replace=False)] = True
    return torch.from_numpy(mask)


def stratified_sample(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a seeded sample of `n` items whose label histogram follows y's (sorted).

    Datasets are often stored class by class (an image folder is read one
    subfolder after another), so "the first n" is a sample of one or two classes.
    Falls back to a plain seeded sample where stratifying is impossible (a class
    with a single item, or n below the number of classes).
    """
    if n >= len(y):
        return torch.arange(len(y))
    idx = np.arange(len(y))
    try:
        picked, _ = train_test_split(idx, train_size=n, stratify=y.numpy(), random_state=seed)
    except ValueError:
        picked = np.random.default_rng(seed).choice(idx, size=n, replace=False)
    return torch.from_numpy(np.sort(picked))


def val_subset(data: "Dataset", size: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded, class-stratified subset of `size` val images (search.rung_val_size), for decisions
    that need a ranking rather than the exact score; None = the whole split (size unset or not smaller)."""
    return None if size is None or size >= len(data.val.y) else stratified_sample(data.val.y, size, seed)


def check_sources(d: DataConfig) -> None:
    """The data's files exist and are where the config says, without decoding anything."""
    _source_files(d)


def source_image_count(d: DataConfig) -> int:
    """Images the source holds, counted without decoding (0 where that needs a full read)."""
    if d.source == "image_folder":
        return len(_image_folder_files(Path(d.root)))
    if d.source == "csv":
        return len(_csv_rows(d)[1])
    if d.source == "npz":
        with np.load(_npz_path(Path(d.root)), allow_pickle=False) as z:
            return sum(len(z[k]) for k in z.files if k.endswith("_labels"))
    return 0  # digits, idx, cifar10: fixed, small sets


def unlabeled_image_count(u: UnlabeledConfig) -> int:
    """Images data.unlabeled holds, counted without decoding where that is cheap (folders, csv), else 0."""
    if u.source == "image_folder":
        return len(_unlabeled_folder_files(_require_unlabeled_root(u)))
    if u.source == "csv":
        return len(_unlabeled_csv_paths(u))
    _unlabeled_files(u)  # the files exist
    return 0


def num_classes_hint(d: DataConfig) -> int:
    """Class count without decoding images (for size checks in `validate`)."""
    if d.class_names is not None:
        return len(d.class_names)
    if d.source == "image_folder":
        return len({p.parent.name for p in _image_folder_files(Path(d.root))})
    if d.source == "csv":
        return len({label for _, label in _csv_rows(d)[1]})
    if d.source == "npz":
        with np.load(_npz_path(Path(d.root)), allow_pickle=False) as z:
            return int(z["train_labels"].max()) + 1
    if d.source == "idx":
        return int(read_idx(_idx_files(Path(d.root))["train"][1]).max()) + 1
    return 10  # digits and cifar10


def _check_decoded(d: DataConfig, dec: dict) -> None:
    where = d.root if d.root is not None else d.source
    n = len(dec["train_y"])
    if n == 0:
        extra = f" ({len(dec['unreadable'])} unreadable)" if dec["unreadable"] else ""
        raise KdsearchError(f"data.root {where}: no readable images found{extra}; check the folder and data.source")
    present = torch.unique(dec["train_y"]).numel()
    if present < 2:
        raise KdsearchError(
            f"data.root {where}: found {present} class; a classifier needs at least two "
            "(one subfolder or label per class)")


def _split(dec: dict, d: DataConfig, seed: int, key: str) -> Dataset:
    x, y = dec["train_x"], dec["train_y"]
    if "val_x" in dec:
        train, val = Split(x, y), Split(dec["val_x"], dec["val_y"])
    else:
        counts = torch.bincount(y)
        rare = [dec["class_names"][i] for i, c in enumerate(counts.tolist()) if c == 1]
        if rare:
            raise KdsearchError(f"data.root {d.root}: class {rare[0]!r} has one image; a stratified val split needs "
                                "at least two per class: add images or remove the class")
        idx = np.arange(len(y))
        try:
            tr, va = train_test_split(idx, test_size=d.val_fraction, stratify=y.numpy(), random_state=seed)
        except ValueError as e:
            raise KdsearchError(f"data.val_fraction {d.val_fraction}: {e}; choose a fraction that leaves every class "
                                "in both splits") from None
        tr, va = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va))
        train, val = Split(x[tr], y[tr]), Split(x[va], y[va])
    test = Split(dec["test_x"], dec["test_y"]) if "test_x" in dec else None
    fp = fingerprint({"decoded": key, "seed": seed, "val_fraction": d.val_fraction})
    return Dataset(train, val, test, list(dec["class_names"]), fp, list(dec["unreadable"]), dec.get("orig_sizes"))


# --------------------------------------------------------------------------- fingerprints and cache


def _stat(p: Path) -> list:
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def _unlabeled_files(u: UnlabeledConfig) -> list:
    root = _require_unlabeled_root(u)
    if u.source == "image_folder":
        return [_stat(p) for p in _unlabeled_folder_files(root)]
    if u.source == "csv":
        return [_stat(_manifest_path(u, "data.unlabeled"))] + [_stat(root / p) for p in _unlabeled_csv_paths(u)]
    if u.source == "npz":
        return [_stat(_npz_path(root, "data.unlabeled.root"))]
    return [_stat(p) for p in _unlabeled_idx_files(root)]


def check_unlabeled(u: UnlabeledConfig) -> None:
    """data.unlabeled's files exist, without decoding anything."""
    _unlabeled_files(u)


def _source_files(d: DataConfig) -> list:
    """What the decode depends on, cheaply: (path, size, mtime) of each input file."""
    if d.source == "digits":
        import sklearn
        return [f"sklearn-{sklearn.__version__}"]
    root = _require_dir(d)
    if d.source == "image_folder":
        return [_stat(p) for p in _image_folder_files(root)]
    if d.source == "csv":
        _, rows = _csv_rows(d)
        return [_stat(_manifest_path(d))] + [_stat(root / p) for p, _ in rows]
    if d.source == "npz":
        return [_stat(_npz_path(root))]
    if d.source == "idx":
        return [_stat(p) for pair in _idx_files(root).values() for p in pair]
    return [_stat(p) for p in _cifar_files(root)]


# --------------------------------------------------------------------------- decoders


def _require_dir(d: DataConfig) -> Path:
    """data.root, which must be a folder (npz: a folder or the .npz file itself)."""
    root = Path(d.root)
    if not (root.is_dir() or (d.source == "npz" and root.is_file())):
        layout = {
            "image_folder": "one subfolder per class holding its images (root/<class>/<image>)",
            "csv": f"the images and the manifest {d.manifest}",
            "npz": "a MedMNIST-style .npz (train_images, train_labels, val_*, test_*)",
            "idx": "*-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz] files",
            "cifar10": "the python batches data_batch_1..5 and test_batch",
        }[d.source]
        what = "not found" if d.source == "npz" else "folder not found"
        raise KdsearchError(f"data.root {root}: {what}; it should hold {layout}. "
                            f"Point data.root elsewhere with --set data.root=PATH")
    return root


def _image_folder_files(root: Path) -> list[Path]:
    exts = {e.lower() for e in Image.registered_extensions()}
    return sorted(p for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in exts
                  and not p.parent.name.startswith(".") and not p.name.startswith("."))


DECODERS: Registry[Callable[[DataConfig], dict]] = Registry("data.source")
"""data.source -> decoder(data config) -> {"splits": ..., "class_names": ..., "unreadable": ...}."""


def _decode_files(paths: list[Path], labels: list[int], size: int, base: Path) -> dict:
    """PIL-decode each file, square-resize it; unreadable files are skipped and named."""
    arrays, ys, sizes, bad = [], [], [], []
    for p, label in zip(paths, labels):
        try:
            with Image.open(p) as im:
                im.load()
                sizes.append(im.size)
                gray = im.mode in ("1", "L", "I", "I;16", "F")
                im = im.convert("L" if gray else "RGB").resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(im))
                ys.append(label)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            bad.append(f"{p.relative_to(base) if p.is_relative_to(base) else p} ({type(e).__name__})")
    if any(a.ndim == 3 for a in arrays):  # mixed folders become RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    x = _nhwc_to_nchw(np.stack(arrays)) if arrays else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return {"train_x": x, "train_y": torch.tensor(ys, dtype=torch.int64), "unreadable": bad,
            "orig_sizes": torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)}


@DECODERS.register("image_folder")
def _decode_image_folder(d: DataConfig) -> dict:
    root = _require_dir(d)
    files = _image_folder_files(root)
    classes = sorted({p.parent.name for p in files})
    index = {c: i for i, c in enumerate(classes)}
    out = _decode_files(files, [index[p.parent.name] for p in files], d.image_size, root)
    out["class_names"] = classes
    return out


def _manifest_path(d: DataConfig | UnlabeledConfig, key: str = "data") -> Path:
    path = Path(d.manifest)
    path = path if path.is_absolute() else Path(d.root) / path
    if not path.is_file():
        columns = "path,label" if key == "data" else "path"
        raise KdsearchError(f"{key}.manifest {path}: file not found; give a CSV with column(s) {columns} "
                            f"(paths relative to {key}.root)")
    return path


def _csv_rows(d: DataConfig) -> tuple[Path, list[tuple[str, str]]]:
    root = _require_dir(d)
    manifest = _manifest_path(d)
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise KdsearchError(f"data.manifest {manifest}: needs a header with columns path,label "
                                f"(found {reader.fieldnames})")
        rows = [(r["path"], r["label"]) for r in reader]
    missing = [p for p, _ in rows if not (root / p).is_file()]
    if missing:
        raise KdsearchError(f"data.manifest {manifest}: {len(missing)} listed file(s) missing under {root}, e.g. "
                            f"{', '.join(missing[:3])}; fix the paths or data.root")
    return root, rows


@DECODERS.register("csv")
def _decode_csv(d: DataConfig) -> dict:
    root, rows = _csv_rows(d)
    classes = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    out = _decode_files([root / p for p, _ in rows], [index[label] for _, label in rows], d.image_size, root)
    out["class_names"] = classes
    return out


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


def _names(d: DataConfig, num: int) -> list[str]:
    if d.class_names is not None:
        if len(d.class_names) < num:
            raise KdsearchError(f"data.class_names: {len(d.class_names)} names for {num} label ids; give one per label")
        return list(d.class_names[:num])
    return [str(i) for i in range(num)]


def _from_arrays(d: DataConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    out: dict = {"unreadable": []}
    num = 0
    for name, (x, y) in splits.items():
        out[f"{name}_x"] = _resize_tensor(x, d.image_size)
        out[f"{name}_y"] = torch.from_numpy(np.asarray(y).reshape(-1).astype(np.int64))
        num = max(num, int(out[f"{name}_y"].max()) + 1 if len(y) else 0)
    out["orig_sizes"] = torch.tensor([[splits["train"][0].shape[2], splits["train"][0].shape[1]]] *
                                     len(splits["train"][0]), dtype=torch.int64).reshape(-1, 2)
    out["class_names"] = _names(d, num)
    return out


@DECODERS.register("digits")
def _decode_digits(d: DataConfig) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, values 0..16
    return _from_arrays(d, {"train": (x, digits.target)})


def _npz_path(root: Path, key: str = "data.root") -> Path:
    if root.is_file():
        return root
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        raise KdsearchError(f"{key} {root}: expected exactly one .npz file, found {len(found)}; "
                            f"point {key} at the .npz file")
    return found[0]


@DECODERS.register("npz")
def _decode_npz(d: DataConfig) -> dict:
    path = _npz_path(Path(d.root))
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise KdsearchError(f"data.root {path}: not a readable .npz ({e})") from None
    with z:
        if "train_images" not in z or "train_labels" not in z:
            raise KdsearchError(f"data.root {path}: needs arrays train_images and train_labels (found "
                                f"{list(z.keys())})")
        splits = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "val", "test") if f"{s}_images" in z}
    return _from_arrays(d, splits)


def _idx_files(root: Path) -> dict[str, tuple[Path, Path]]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        imgs = sorted(root.glob(f"{prefix}-images-idx3-ubyte*"))
        labels = sorted(root.glob(f"{prefix}-labels-idx1-ubyte*"))
        if imgs and labels:
            out[split] = (imgs[0], labels[0])
    if "train" not in out:
        raise KdsearchError(f"data.root {root}: no train-images-idx3-ubyte[.gz] with train-labels-idx1-ubyte[.gz]; "
                            "point data.root at the folder holding the MNIST-format files")
    return out


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    try:
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()
    except (struct.error, ValueError) as e:
        raise KdsearchError(f"data.root {path}: not an unsigned-byte IDX file ({e})") from None


@DECODERS.register("idx")
def _decode_idx(d: DataConfig) -> dict:
    files = _idx_files(Path(d.root))
    return _from_arrays(d, {s: (read_idx(images), read_idx(labels)) for s, (images, labels) in files.items()})


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python batches are pickles; allow only what they hold, so a planted file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _cifar_files(root: Path) -> list[Path]:
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    files = [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]
    present = [p for p in files if p.is_file()]
    if not any(p.name.startswith("data_batch") for p in present):
        raise KdsearchError(f"data.root {root}: no data_batch_N files; point data.root at the extracted "
                            "cifar-10-batches-py folder")
    meta = base / "batches.meta"
    return present + ([meta] if meta.is_file() else [])


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:
        raise KdsearchError(f"data.root {path}: not a CIFAR python batch ({e})") from None


@DECODERS.register("cifar10")
def _decode_cifar10(d: DataConfig) -> dict:
    files = _cifar_files(Path(d.root))
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
    out = _from_arrays(d, arrays)
    if names and d.class_names is None:
        out["class_names"] = names[:len(out["class_names"])]
    return out


# --------------------------------------------------------------------------- unlabeled images


def _require_unlabeled_root(u: UnlabeledConfig) -> Path:
    root = Path(u.root)
    if root.is_dir() or (u.source in ("npz", "idx") and root.is_file()):
        return root
    layout = {"image_folder": "images, in subfolders or not", "csv": f"the images and the manifest {u.manifest}",
              "npz": "an .npz with an images array", "idx": "*-images-idx3-ubyte[.gz] files"}[u.source]
    raise KdsearchError(f"data.unlabeled.root {root}: not found; it should hold {layout}. "
                        "Point it elsewhere with --set data.unlabeled.root=PATH")


def _unlabeled_folder_files(root: Path) -> list[Path]:
    exts = {e.lower() for e in Image.registered_extensions()}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _unlabeled_csv_paths(u: UnlabeledConfig) -> list[str]:
    root, manifest = _require_unlabeled_root(u), _manifest_path(u, "data.unlabeled")
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise KdsearchError(f"data.unlabeled.manifest {manifest}: needs a header with a path column "
                                f"(found {reader.fieldnames})")
        paths = [r["path"] for r in reader]
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise KdsearchError(f"data.unlabeled.manifest {manifest}: {len(missing)} listed file(s) missing under {root}, "
                            f"e.g. {', '.join(missing[:3])}; fix the paths or data.unlabeled.root")
    return paths


def _unlabeled_idx_files(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(root.glob("*-images-idx3-ubyte*"))
    if not files:
        raise KdsearchError(f"data.unlabeled.root {root}: no *-images-idx3-ubyte[.gz] file; point it at the IDX "
                            "images file or its folder")
    return files


def _decode_unlabeled(u: UnlabeledConfig, size: int) -> dict:
    root = _require_unlabeled_root(u)
    if u.source in ("image_folder", "csv"):
        paths = (_unlabeled_folder_files(root) if u.source == "image_folder"
                 else [root / p for p in _unlabeled_csv_paths(u)])
        out = _decode_files(paths, [UNLABELED] * len(paths), size, root)
        return {"x": out["train_x"], "unreadable": out["unreadable"]}
    if u.source == "npz":
        path = _npz_path(root, "data.unlabeled.root")
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
        arrays = [read_idx(p) for p in _unlabeled_idx_files(root)]
    return {"x": torch.cat([_resize_tensor(a, size) for a in arrays]), "unreadable": []}


def _load_unlabeled(cfg: Config, channels: int) -> tuple[torch.Tensor, str, list[str], list]:
    """data.unlabeled decoded (cached like the labeled data) in `channels`: (images, fingerprint, unreadable,
    [(decoded, cache path)] still to be written)."""
    u = cfg.data.unlabeled
    key = fingerprint({"format": CACHE_FORMAT, "unlabeled": u.source, "size": cfg.data.image_size,
                       "manifest": u.manifest, "files": _unlabeled_files(u)})
    cache = cfg.output_dir / "cache" / f"unlabeled-{key}.pt"
    decoded, pending = load_cache(cache), []
    if decoded is None:
        decoded = _decode_unlabeled(u, cfg.data.image_size)
        if len(decoded["x"]) == 0:
            extra = f" ({len(decoded['unreadable'])} unreadable)" if decoded["unreadable"] else ""
            raise KdsearchError(f"data.unlabeled.root {u.root}: no readable images found{extra}; check the folder "
                                "and data.unlabeled.source")
        pending.append((decoded, cache))
    for name in decoded["unreadable"]:
        log.warning("skipped unreadable unlabeled image: %s", name)
    x = decoded["x"]
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    elif x.shape[1] == 3 and channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
        luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
        x = (x.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return x, key, [f"unlabeled: {n}" for n in decoded["unreadable"]], pending

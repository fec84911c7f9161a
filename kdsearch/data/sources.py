"""Where a data source's files are, and what can be learned from them without decoding: the file list that
fingerprints the decode (path, size, mtime), the image and class counts that `validate` and the preflight use, and
a one-line error for every missing file or wrong layout."""

from __future__ import annotations

import csv
import functools
import gzip
import logging
import os
import struct
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DataConfig, UnlabeledConfig
from ..core.errors import KdsearchError
from ..core.labels import ClassTable, class_table

log = logging.getLogger("kdsearch")

DIGITS_IMAGES = 1797  # scikit-learn's digits
CIFAR_BATCH = 10_000  # images per CIFAR-10 python batch file


def _stat(p: Path) -> list:
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def require_root(d: DataConfig) -> Path:
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


def _images_under(folder: Path) -> list[Path]:
    """Image files under `folder`, at any depth, hidden files and folders left out; symlinked subfolders are not
    followed, so a link loop cannot recurse."""
    exts = {e.lower() for e in Image.registered_extensions()}
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")
                  and Path(f).suffix.lower() in exts and (Path(dirpath) / f).is_file()]
    return files


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_folder(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """One walk of an image folder: every image under each class folder, subfolders included (their class is the
    top folder, as torchvision's ImageFolder reads them), sorted by path; each image's class; and the class
    folders holding no image, which are left out of the classes (and said so, since a teacher or a label_map that
    counts them no longer matches)."""
    found = {folder.name: _images_under(folder) for folder in class_folders(root)}
    empty = [name for name, files in found.items() if not files]
    if empty:
        _warn_once(f"data.root {root}: class folder(s) with no images, left out of the classes: {', '.join(empty)}")
    pairs = sorted((p, name) for name, files in found.items() for p in files)
    return [p for p, _ in pairs], [name for _, name in pairs], empty


@functools.cache
def _warn_once(message: str) -> None:  # a command that lists twice (validate of two configs) says it once
    log.warning(message)


def manifest_path(d: DataConfig | UnlabeledConfig, key: str = "data") -> Path:
    path = Path(d.manifest)
    path = path if path.is_absolute() else Path(d.root) / path
    if not path.is_file():
        columns = "path,label" if key == "data" else "path"
        raise KdsearchError(f"{key}.manifest {path}: file not found; give a CSV with column(s) {columns} "
                            f"(paths relative to {key}.root)")
    return path


def csv_rows(d: DataConfig) -> tuple[Path, list[tuple[str, str]]]:
    root = require_root(d)
    manifest = manifest_path(d)
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise KdsearchError(f"data.manifest {manifest}: needs a header with columns path,label "
                                f"(found {reader.fieldnames})")
        rows = [(r["path"], (r["label"] or "").strip()) for r in reader]  # "melanoma " is "melanoma"
    if d.label_map:
        rows = [(p, d.label_map.get(label, label)) for p, label in rows]
    check_label_spellings({label for _, label in rows}, manifest)
    check_inside(manifest, root, [p for p, _ in rows], "data")
    missing = [p for p, _ in rows if not (root / p).is_file()]
    if missing:
        raise KdsearchError(f"data.manifest {manifest}: {len(missing)} listed file(s) missing under {root}, e.g. "
                            f"{', '.join(missing[:3])}; fix the paths or data.root")
    return root, rows


def check_label_spellings(labels: set[str], manifest: Path) -> None:
    """Exit 2 when two labels differ only by case or inner spacing ("Melanoma", "melanoma", "mela  noma"): one
    diagnosis spelled two ways would become two classes, each with half its images."""
    spellings: dict[str, list[str]] = {}
    for label in sorted(labels):
        spellings.setdefault(" ".join(label.split()).casefold(), []).append(label)
    clashes = [v for v in spellings.values() if len(v) > 1]
    if clashes:
        said = "; ".join(" and ".join(repr(x) for x in v) for v in clashes[:3])
        example = ", ".join(f"{x!r}: {v[0]!r}" for v in clashes[:1] for x in v[1:])
        raise KdsearchError(f"data.manifest {manifest}: labels {said} differ only by case or spacing; make them one "
                            f"spelling in the manifest or map them with data.label_map ({{{example}}})")


def check_inside(manifest: Path, root: Path, paths: list[str], key: str) -> None:
    """A manifest's paths are relative and stay under root: an absolute path or one climbing out with .. is
    refused (a manifest from elsewhere must not make kdsearch read, and cache, files outside the data)."""
    outside = [p for p in paths if os.path.isabs(p) or os.path.normpath(p).split(os.sep)[0] == ".."]
    if outside:
        raise KdsearchError(f"{key}.manifest {manifest}: {len(outside)} path(s) leave {key}.root {root}, e.g. "
                            f"{', '.join(outside[:3])}; give paths relative to {key}.root, inside it")


def npz_path(root: Path, key: str = "data.root") -> Path:
    if root.is_file():
        return root
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        raise KdsearchError(f"{key} {root}: expected exactly one .npz file, found {len(found)}; "
                            f"point {key} at the .npz file")
    return found[0]


def idx_files(root: Path) -> dict[str, tuple[Path, Path]]:
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


def _idx_count(path: Path) -> int:
    """The item count in an IDX file's header (the first dimension), without reading the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(8)
    try:
        return struct.unpack(">I", head[4:8])[0]
    except struct.error:
        return 0  # the decoder names the broken file


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


def cifar_files(root: Path) -> list[Path]:
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    files = [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]
    present = [p for p in files if p.is_file()]
    if not any(p.name.startswith("data_batch") for p in present):
        raise KdsearchError(f"data.root {root}: no data_batch_N files; point data.root at the extracted "
                            "cifar-10-batches-py folder")
    meta = base / "batches.meta"
    return present + ([meta] if meta.is_file() else [])


@dataclass(frozen=True)
class Listing:
    """One source as found on disk, without decoding: made once per command (the plan, `preflight.Plan`) and handed
    to the decode, so that a folder is walked once."""

    files: list = field(repr=False)
    """(path, size, mtime) of each input file (digits: the scikit-learn version): what the decode depends on, and
    its cache key."""
    images: int
    """Images the source holds, counted without decoding (0 where only the decode can tell: an unlabeled .npz or
    IDX file)."""
    paths: list[Path] = field(default_factory=list, repr=False)
    """image_folder and csv: each image file, in the decode's order."""
    labels: list[str] = field(default_factory=list, repr=False)
    """image_folder: each image's class folder; csv: its manifest label (data.label_map applied)."""
    empty_classes: list[str] = field(default_factory=list)
    """image_folder: class folders holding no image (left out of the classes)."""


@dataclass(frozen=True)
class SourceListing:
    """The config's data as found on disk: the labeled source, data.unlabeled's, and the class table read from the
    labels alone."""

    data: Listing
    unlabeled: Listing | None
    classes: ClassTable


def list_sources(d: DataConfig) -> SourceListing:
    """Find the data's files (one listing of each folder), count them, and read the class table from their labels:
    every layout error is found here, before anything is decoded or written."""
    listing = list_source(d)
    unlabeled = list_unlabeled(d.unlabeled) if d.unlabeled is not None else None
    return SourceListing(listing, unlabeled, class_table_hint(d, listing))


def list_source(d: DataConfig) -> Listing:
    """data.source's files, counted, and (image_folder, csv) each image's path and label."""
    if d.source == "digits":
        return Listing([f"sklearn-{version('scikit-learn')}"], DIGITS_IMAGES)  # package metadata: no import
    root = require_root(d)
    if d.source == "image_folder":
        paths, labels, empty = _image_folder(root)
        return Listing([_stat(p) for p in paths], len(paths), paths, labels, empty)
    if d.source == "csv":
        _, rows = csv_rows(d)
        paths = [root / p for p, _ in rows]
        return Listing([_stat(manifest_path(d))] + [_stat(p) for p in paths], len(rows), paths,
                       [label for _, label in rows])
    if d.source == "npz":
        path = npz_path(root)
        with np.load(path, allow_pickle=False) as z:
            count = sum(len(z[k]) for k in z.files if k.endswith("_labels"))
        return Listing([_stat(path)], count)
    if d.source == "idx":
        found = idx_files(root)
        return Listing([_stat(p) for pair in found.values() for p in pair],
                       sum(_idx_count(images) for images, _ in found.values()))
    files = cifar_files(root)
    return Listing([_stat(p) for p in files], CIFAR_BATCH * sum(p.name != "batches.meta" for p in files))


def class_table_hint(d: DataConfig, listing: Listing | None = None) -> ClassTable:
    """The data's class table (labels.class_table's rule) from its labels alone: no image is decoded. What
    `validate` shows, and its class count for the size checks. `listing`: the source's, when already made."""
    if d.source in ("image_folder", "csv"):
        labels = set((listing or list_source(d)).labels)
        if d.source == "image_folder":
            return class_table(labels, d.class_names, d.remap_labels, f"data.root {d.root}", text=True)
        return class_table(labels, d.class_names, d.remap_labels, f"data.manifest {d.manifest}")
    if d.source == "npz":
        path = npz_path(Path(d.root))
        with np.load(path, allow_pickle=False) as z:
            ids = {int(v) for k in z.files if k.endswith("_labels") for v in np.unique(z[k])}
        return class_table(ids, d.class_names, d.remap_labels, f"data.root {path}")
    if d.source == "idx":
        ids = {int(v) for _, labels in idx_files(Path(d.root)).values() for v in np.unique(read_idx(labels))}
        return class_table(ids, d.class_names, d.remap_labels, f"data.root {d.root}")
    return class_table(set(range(10)), d.class_names, d.remap_labels, d.source)  # digits, cifar10: ids 0..9


def require_unlabeled_root(u: UnlabeledConfig) -> Path:
    root = Path(u.root)
    if root.is_dir() or (u.source in ("npz", "idx") and root.is_file()):
        return root
    layout = {"image_folder": "images, in subfolders or not", "csv": f"the images and the manifest {u.manifest}",
              "npz": "an .npz with an images array", "idx": "*-images-idx3-ubyte[.gz] files"}[u.source]
    raise KdsearchError(f"data.unlabeled.root {root}: not found; it should hold {layout}. "
                        "Point it elsewhere with --set data.unlabeled.root=PATH")


def unlabeled_folder_files(root: Path) -> list[Path]:
    """Every image under root, subfolders included (see `_images_under`)."""
    return sorted(_images_under(root))


def unlabeled_csv_paths(u: UnlabeledConfig) -> list[str]:
    root, manifest = require_unlabeled_root(u), manifest_path(u, "data.unlabeled")
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise KdsearchError(f"data.unlabeled.manifest {manifest}: needs a header with a path column "
                                f"(found {reader.fieldnames})")
        paths = [r["path"] for r in reader]
    check_inside(manifest, root, paths, "data.unlabeled")
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise KdsearchError(f"data.unlabeled.manifest {manifest}: {len(missing)} listed file(s) missing under {root}, "
                            f"e.g. {', '.join(missing[:3])}; fix the paths or data.unlabeled.root")
    return paths


def unlabeled_idx_files(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(root.glob("*-images-idx3-ubyte*"))
    if not files:
        raise KdsearchError(f"data.unlabeled.root {root}: no *-images-idx3-ubyte[.gz] file; point it at the IDX "
                            "images file or its folder")
    return files


def list_unlabeled(u: UnlabeledConfig) -> Listing:
    """data.unlabeled's files, and (folders, csv) each image's path and their count."""
    root = require_unlabeled_root(u)
    if u.source in ("image_folder", "csv"):
        paths = unlabeled_folder_files(root) if u.source == "image_folder" else \
            [root / p for p in unlabeled_csv_paths(u)]
        head = [_stat(manifest_path(u, "data.unlabeled"))] if u.source == "csv" else []
        return Listing(head + [_stat(p) for p in paths], len(paths), paths)
    if u.source == "npz":
        return Listing([_stat(npz_path(root, "data.unlabeled.root"))], 0)
    return Listing([_stat(p) for p in unlabeled_idx_files(root)], 0)

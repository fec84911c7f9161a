"""Data: every source decoded once into uint8 tensors at image_size, cached on disk, split.

Decoding is the slow part (PIL on thousands of files), so its result is saved
under `output.dir/cache/` keyed by a fingerprint of the files (path, size,
mtime) and the settings; a later run with the same key loads one file.
Finding the files is `sources`, decoding them is `decoders`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ..core.io import fingerprint, load_cache, save_atomic
from ..config import Config, DataConfig
from .decoders import DECODERS, decode_unlabeled
from ..core.errors import KdsearchError
from ..core.labels import UNLABELED, ClassTable
from .sources import Listing, SourceListing, list_sources

log = logging.getLogger("kdsearch")


CACHE_FORMAT = 3  # bump when the cached layout or the decode changes (2: label_ids; 3: EXIF, 16-bit by range)


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
    label_ids: list[int] | None = None
    """Class index -> the integer label id in the source (None: text labels); see labels.py."""

    @property
    def class_table(self) -> ClassTable:
        """Class index -> name (and integer label id): what inspect-data shows and labels.json carries."""
        return ClassTable({}, self.class_names, self.label_ids)

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


def load_dataset(cfg: Config, sources: SourceListing | None = None) -> Dataset:
    """Decode (or load the decode cache), check, and split the config's data. `sources`: its files as the command's
    plan found them (`sources.list_sources`); listed here when not given."""
    d = cfg.data
    listing = sources or list_sources(d)
    files = listing.data.files
    key = fingerprint({"format": CACHE_FORMAT, "source": d.source, "size": d.image_size, "manifest": d.manifest,
                       "class_names": d.class_names, "remap": d.remap_labels, "label_map": d.label_map,
                       "max_pixels": d.max_image_pixels,
                       "files": files})
    cache = cfg.output_dir / "cache" / f"data-{key}.pt"
    decoded = load_cache(cache)
    to_save = []  # written only once everything decoded and checked: bad input leaves no cache behind
    if decoded is None:
        decoded = DECODERS[d.source](d, listing.data)
        _check_decoded(d, decoded)
        to_save.append((decoded, cache))
    for name in decoded["unreadable"]:
        log.warning("skipped unreadable image: %s", name)
    data = _split(decoded, d, cfg.seed, key)
    if d.label_budget is not None:
        data.labeled = label_budget_mask(data.train.y, d.label_budget, cfg.seed)
    if d.unlabeled is not None:
        data.unlabeled, data.unlabeled_fingerprint, bad, pending = _load_unlabeled(cfg, listing.unlabeled,
                                                                                    data.channels)
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
    data = Dataset(train, val, test, list(dec["class_names"]), fp, list(dec["unreadable"]), dec.get("orig_sizes"),
                   label_ids=dec.get("label_ids"))
    counts = torch.bincount(val.y, minlength=data.num_classes).tolist()
    missing = [n for n, c in zip(data.class_names, counts) if c == 0]
    if missing:  # engine.classification_metrics: macro-F1 averages over the classes present in val or predicted
        log.warning("val has no images of class(es) %s: no val score measures them (macro-F1 averages over the "
                    "classes val holds); raise data.val_fraction or add images", ", ".join(missing))
    return data


def _load_unlabeled(cfg: Config, listing: Listing, channels: int) -> tuple[torch.Tensor, str, list[str], list]:
    """data.unlabeled decoded (cached like the labeled data) in `channels`: (images, fingerprint, unreadable,
    [(decoded, cache path)] still to be written)."""
    u = cfg.data.unlabeled
    key = fingerprint({"format": CACHE_FORMAT, "unlabeled": u.source, "size": cfg.data.image_size,
                       "manifest": u.manifest, "max_pixels": cfg.data.max_image_pixels, "files": listing.files})
    cache = cfg.output_dir / "cache" / f"unlabeled-{key}.pt"
    decoded, pending = load_cache(cache), []
    if decoded is None:
        decoded = decode_unlabeled(u, listing, cfg.data.image_size, cfg.data.max_image_pixels)
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

"""Small file helpers shared by every cache: fingerprints, atomic writes, trusted loads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("kdsearch")


def fingerprint(obj: Any) -> str:
    """A short, stable hash of JSON-able settings (key order ignored)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file, then rename: a crash never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_cache(path: Path) -> Any | None:
    """A cache file's content, or None when absent or unreadable (then it is rebuilt, never trusted)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        log.warning("cache %s unreadable (%s); rebuilding it", path, e)
        return None

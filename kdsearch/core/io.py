"""Small file helpers shared by every cache: fingerprints, atomic writes, trusted loads."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import KdsearchError

log = logging.getLogger("kdsearch")


def user_cache_dir() -> Path:
    """kdsearch's folder in the user's cache (`$XDG_CACHE_HOME/kdsearch`, else `~/.cache/kdsearch`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdsearch"


def fingerprint(obj: Any) -> str:
    """A short, stable hash of JSON-able settings (key order ignored)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinite floats as None: JSON has no NaN (jq and JavaScript reject Python's bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


DISK_FULL_BYTES = 1 << 20
"""torch's zip writer reports a full disk as a RuntimeError ("unexpected pos"); with less than this left on the
target's file system, a failed write is taken for a full disk."""


def disk_full(e: BaseException, folder: Path) -> bool:
    """Whether a failed write into `folder` failed because its file system is full."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if isinstance(e, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < DISK_FULL_BYTES
        except OSError:
            return False
    return False


def disk_full_error(path: Path) -> KdsearchError:
    free = shutil.disk_usage(path.parent if path.parent.exists() else path).free
    return KdsearchError(f"{path}: no space left on the device writing it ({free / 1e6:.1f} MB free there, partial "
                         "files removed); free space or point output.dir elsewhere (`kdsearch validate CONFIG` shows "
                         "what a run writes)")


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file, then rename, then record its SHA-256 beside it (`<file>.sha256`).

    A crash never leaves a half-written cache; a crash between the two renames
    leaves a checksum that does not match, so the file is rebuilt, not trusted.
    A failed write (a full disk, Ctrl-C) removes its temp files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp_sum = _checksum_path(tmp)
    try:
        torch.save(obj, tmp)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
        tmp_sum.write_text(digest + "\n")
        os.replace(tmp_sum, _checksum_path(path))
    except BaseException as e:
        full = disk_full(e, path.parent)
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path) from None
        raise


def load_cache(path: Path) -> Any | None:
    """A cache file's content, or None when absent, unreadable or not matching its recorded SHA-256.

    None means "rebuild it": a cache is never used unless it is byte for byte what was written
    (a flipped bit in tensor data would load fine and silently change results).
    """
    if not path.is_file():
        return None
    sums = _checksum_path(path)
    expected = sums.read_text().strip() if sums.is_file() else None
    if expected != file_sha256(path):
        log.warning("cache %s does not match its checksum %s (corrupted or incomplete); rebuilding it", path,
                    sums.name if expected else "(missing)")
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        log.warning("cache %s unreadable (%s); rebuilding it", path, e)
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clear_stale(path: Path) -> None:
    """Remove temp siblings of `path` left by a writer on this host that was killed (SIGKILL, a power cut) before
    it could clean up: their names carry the host and pid (`.NAME.tmp-HOST-PID-*`, `.NAME.old-HOST-PID`)."""
    stale = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp|old)-{re.escape(socket.gethostname())}-(\d+)(?:-\w*)?")
    for p in path.parent.iterdir():
        m = stale.fullmatch(p.name)
        if m and int(m[1]) != os.getpid() and not _alive(int(m[1])):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Write a folder's files into a temp sibling, then swap it in: a crash leaves the old folder intact, and the
    temp folder of a writer that was killed outright is removed by the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    stamp = f"{socket.gethostname()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{stamp}-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any other folder
    try:
        yield tmp
    except BaseException as e:
        full = disk_full(e, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise disk_full_error(path) from None
        raise
    old = path.with_name(f".{path.name}.old-{stamp}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)

"""One writer per output folder, and one MLflow sqlite store created at a time.

Both are OS-level file locks (filelock), so they are released on every exit path, SIGKILL included: a crashed
run never leaves a lock that blocks the next one. Commands that write into output.dir take the folder's lock
exclusively; commands that only read it take it shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import filelock

from ..core.errors import KdsearchError

LOCK_FILE = ".kdsearch-lock.db"
"""In output.dir: a SQLite file that filelock.ReadWriteLock locks (shared readers, one exclusive writer)."""
HOLDER_FILE = ".kdsearch-lock.json"
"""In output.dir: which writer holds the lock (pid, command, start time), for the message a second run gets."""
STORE_LOCK_TIMEOUT_S = 300.0
"""How long a run waits for another to finish creating the same MLflow sqlite store."""


@contextlib.contextmanager
def output_lock(folder: Path, command: str, shared: bool = False) -> Iterator[None]:
    """Hold output.dir for `command`; exit 2 at once, naming the holder, when another command holds it."""
    folder = Path(folder)
    check_output_folder(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.ReadWriteLock(folder / LOCK_FILE, is_singleton=False)
        (lock.acquire_read if shared else lock.acquire_write)(timeout=0, blocking=False)
    except filelock.Timeout:
        raise KdsearchError(f"output.dir {folder}: {_holder(folder)} is using it; wait for it to finish or set "
                            "another output.dir (--set output.dir=PATH)") from None
    except (OSError, sqlite3.Error) as e:
        raise KdsearchError(f"output.dir {folder}: cannot be created or locked ({type(e).__name__}: {e}); point "
                            "output.dir at a writable folder (--set output.dir=PATH)") from None
    try:
        if not shared:
            (folder / HOLDER_FILE).write_text(json.dumps({"pid": os.getpid(), "command": command,
                                                          "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        if not shared:
            (folder / HOLDER_FILE).unlink(missing_ok=True)
        lock.release(force=True)
        lock.close()
        _tidy(folder, created)


def _tidy(folder: Path, created: bool) -> None:
    """The lock file goes once no command holds it (checked by taking it), so output.dir holds only what commands
    wrote; a command that wrote nothing (bad input, stopped at once) also removes the folder it created."""
    probe = filelock.ReadWriteLock(folder / LOCK_FILE, is_singleton=False)
    try:
        probe.acquire_write(timeout=0, blocking=False)
    except (filelock.Timeout, OSError, sqlite3.Error):
        return  # another command holds it now: it is theirs to remove
    try:
        for name in (LOCK_FILE, LOCK_FILE + "-journal"):
            (folder / name).unlink(missing_ok=True)
    finally:
        probe.release(force=True)
        probe.close()
    try:
        if created and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass


def existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_output_folder(out: Path) -> Path:
    """output.dir is a folder, or can be made one, that this user can write; returns its nearest existing part."""
    if out.exists() and not out.is_dir():
        raise KdsearchError(f"output.dir {out}: is a file; set output.dir (or KDSEARCH_OUTPUT_DIR) to a folder")
    base = existing_ancestor(out)
    if not base.is_dir():
        raise KdsearchError(f"output.dir {out}: {base} is a file, not a folder; set output.dir (or "
                            "KDSEARCH_OUTPUT_DIR) to a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise KdsearchError(f"output.dir {out}: {base} is not writable; set output.dir (or KDSEARCH_OUTPUT_DIR) to a "
                            "folder you can write")
    return base


def _holder(folder: Path) -> str:
    try:
        h = json.loads((folder / HOLDER_FILE).read_text())
        os.kill(int(h["pid"]), 0)  # the recorded writer is alive: it holds the lock
        return f"another kdsearch {h['command']} (pid {h['pid']}, started {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another kdsearch command"


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise access to a sqlite MLflow store while it may be created: MLflow's first-time schema migration
    fails when two processes run it at once. Other stores (a server, Databricks) need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S):
            yield
    except filelock.Timeout:
        raise KdsearchError(f"tracking.uri {uri}: another process has held {db}.lock for "
                            f"{STORE_LOCK_TIMEOUT_S:g} s; check for a hung kdsearch or MLflow process") from None

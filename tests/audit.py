"""Counting what a `kdsearch` command does to the disk, in every process it starts, through Python's audit hooks
(`sys.addaudithook`): `os.scandir` and `os.listdir` are audit events of the interpreter itself, and kdsearch raises
`sizes.MEASURED_EVENT` / `sizes.COUNTED_EVENT` each time it builds a student to weigh it. A `sitecustomize.py` on
PYTHONPATH installs the hook in the command's process and in every Python process it starts (Ray's workers too).

Used by tests/test_plan.py and benchmarks/plan_counts.py.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
from pathlib import Path

from kdsearch.models.sizes import COUNTED_EVENT, MEASURED_EVENT

HOOK = '''
import os, sys
_log, _roots = os.environ["KDSEARCH_AUDIT_LOG"], os.environ["KDSEARCH_AUDIT_ROOTS"].split(os.pathsep)

def _hook(event, args):
    if event in ("os.scandir", "os.listdir") and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if any(path == r or path.startswith(r + os.sep) for r in _roots):
            with open(_log, "a") as f:
                f.write(f"list\\t{path}\\n")
    elif event in (%r, %r):
        with open(_log, "a") as f:
            f.write(f"{event}\\t{args[0]}\\n")

sys.addaudithook(_hook)
''' % (MEASURED_EVENT, COUNTED_EVENT)


def counted(command: list[str], cwd: Path, roots: list[Path], name: str, env: dict | None = None,
            timeout: int = 900) -> tuple[collections.Counter, collections.Counter, float, subprocess.CompletedProcess]:
    """Run `command` with the hook and a fresh kdsearch size cache (every student is measured cold). Returns the
    listings per folder under `roots`, the (event, student) counts, the wall seconds and the process."""
    hook_dir, log = cwd / f"hook-{name}", cwd / f"audit-{name}.log"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    log.unlink(missing_ok=True)
    base = {**os.environ, **(env or {})}
    env = {**base, "PYTHONPATH": os.pathsep.join(p for p in [str(hook_dir), base.get("PYTHONPATH", "")] if p),
           "KDSEARCH_AUDIT_LOG": str(log), "KDSEARCH_AUDIT_ROOTS": os.pathsep.join(str(r) for r in roots),
           "XDG_CACHE_HOME": str(cwd / f"cache-{name}"), "COLUMNS": "200"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    lines = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    listed = collections.Counter(Path(p) for kind, p in lines if kind == "list")
    measured = collections.Counter((kind, p) for kind, p in lines if kind != "list")
    return listed, measured, seconds, proc


def folders(roots: list[Path]) -> set[Path]:
    """Every folder under `roots`, the roots included."""
    return {p for r in roots for p in [r, *r.rglob("*")] if p.is_dir()}

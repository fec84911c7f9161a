"""How long `kdsearch validate` and `kdsearch list-models` take, against `python -c "import torch"` on the same
machine (issue 16's target: validate at most 2x torch's import). Median of N runs of each, in fresh processes;
validate's and torch's peak resident memory too.

"cold": an empty student-size cache each run (the first call on a machine: sizes measured on the meta device,
torchvision imported); "warm": the cache filled by an earlier call (every later call).

    .venv/bin/python benchmarks/validate_speed.py [--runs 5] [--config search_spaces/digits.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))


def measure(cmd: list[str], runs: int, cold: bool = False) -> tuple[float, float]:
    """Median seconds and median peak resident memory (MB, from the child's own rusage) of `runs` fresh runs."""
    times, peaks = [], []
    with tempfile.TemporaryDirectory() as cache:
        for i in range(runs + (0 if cold else 1)):  # warm: one untimed call fills the cache
            env = {**os.environ, "XDG_CACHE_HOME": f"{cache}/{i}" if cold else cache}
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
            if cold or i:
                times.append(elapsed)
                peaks.append(usage.ru_maxrss / 1024)  # KB on Linux
    return statistics.median(times), statistics.median(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config", default="search_spaces/digits.yaml")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "validate_speed.json")
    args = ap.parse_args()
    torch_s, torch_mb = measure([sys.executable, "-c", "import torch"], args.runs)
    out = {"import_torch_s": round(torch_s, 2), "import_torch_peak_mb": round(torch_mb)}
    for cold in (False, True):
        which = "cold" if cold else "warm"
        validate_s, validate_mb = measure([KDSEARCH, "validate", args.config], args.runs, cold)
        out[f"validate_{which}_s"] = round(validate_s, 2)
        out[f"validate_{which}_over_torch"] = round(validate_s / torch_s, 2)
        out[f"validate_{which}_peak_mb"] = round(validate_mb)
        out[f"list_models_{which}_s"] = round(measure([KDSEARCH, "list-models"], args.runs, cold)[0], 2)
    out["help_s"] = round(measure([KDSEARCH, "--help"], args.runs)[0], 2)
    out = {**out, "runs": args.runs, "config": args.config, "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

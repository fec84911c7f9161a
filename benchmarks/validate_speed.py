"""How long `kdsearch validate` and `kdsearch list-models` take, against `python -c "import torch"` on the same
machine (issue 16's target: validate at most 2x torch's import). Median of N runs of each, in fresh processes.

    .venv/bin/python benchmarks/validate_speed.py [--runs 5] [--config search_spaces/digits.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))


def seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config", default="search_spaces/digits.yaml")
    args = ap.parse_args()
    torch_s = seconds([sys.executable, "-c", "import torch"], args.runs)
    validate_s = seconds([KDSEARCH, "validate", args.config], args.runs)
    list_s = seconds([KDSEARCH, "list-models"], args.runs)
    help_s = seconds([KDSEARCH, "--help"], args.runs)
    print(json.dumps({"import_torch_s": round(torch_s, 2), "validate_s": round(validate_s, 2),
                      "validate_over_torch": round(validate_s / torch_s, 2), "list_models_s": round(list_s, 2),
                      "help_s": round(help_s, 2), "runs": args.runs, "config": args.config}, indent=2))


if __name__ == "__main__":
    main()

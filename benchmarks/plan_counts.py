"""How often each command lists the data's folders and builds a student to weigh it (issue 26's before/after).

    python benchmarks/plan_counts.py [--images 2000] [--label after] [--pythonpath DIR] [--out FILE]

Makes a skin-lesion-shaped image folder (HAM10000's seven classes in its proportions, two classes with images in
subfolders, an empty class folder) with an unlabeled folder beside it, then runs `validate`, `train`,
`train-teacher`, `run` (2 trials, fp32 and int8 searched over two students) and `report` on it, each with a cold
student-size cache, and counts through Python's audit hooks (tests/audit.py) in every process the command starts.
`--pythonpath DIR` runs another checkout of kdsearch (e.g. a `git worktree` of an older commit) with the installed
`kdsearch` command; an older checkout raises the size events only if instrumented with the same `sys.audit` lines.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import audit  # noqa: E402

HAM10000 = {"nv": 0.67, "mel": 0.111, "bkl": 0.11, "bcc": 0.051, "akiec": 0.033, "vasc": 0.014, "df": 0.011}
STUDENTS = ["shufflenet_v2_x0_5", "resnet8"]
COMMANDS = ["validate", "train", "train-teacher", "run", "report"]


def make_data(base: Path, images: int) -> list[Path]:
    rng = np.random.default_rng(0)
    root, extra = base / "skin", base / "unlabeled"
    for cls, share in HAM10000.items():
        n = max(2, round(images * share))
        for i in range(n):
            folder = root / cls / ("dermoscopy" if cls in ("mel", "bcc") and i % 3 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{cls}{i}.png")
    (root / "unsorted").mkdir()
    for clinic in ("clinic_a", "clinic_b"):
        (extra / clinic).mkdir(parents=True)
        for i in range(images // 4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(extra / clinic / f"u{i}.png")
    return [root, extra]


def config(base: Path, roots: list[Path]) -> Path:
    space = {"lr": 3.0e-3, "alpha": 0.5, "temperature": 4.0, "batch_size": 64, "weight_decay": 1.0e-4,
             "class_weight_power": 0.5, "precision": {"choice": ["fp32", "int8"]}}
    cfg = {"name": "plan", "seed": 0,
           "data": {"source": "image_folder", "root": str(roots[0]), "image_size": 8, "augment": "none",
                    "unlabeled": {"source": "image_folder", "root": str(roots[1])}},
           "teacher": {"source": "train", "arch": "resnet8", "epochs": 1, "patience": 1},
           "student": {"candidates": STUDENTS},
           "search": {"num_samples": 2, "max_epochs": 1, "grace_period": 1, "max_concurrent": 2, "space": space},
           "tracking": {"uri": f"sqlite:///{base / 'mlflow.db'}"}, "output": {"dir": str(base / "out")}}
    path = base / "plan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--label", default="after")
    ap.add_argument("--pythonpath", help="another kdsearch checkout to run (default: the installed one)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "plan_counts.json")
    args = ap.parse_args()
    kdsearch = str(Path(sys.executable).with_name("kdsearch"))
    base = Path(tempfile.mkdtemp(prefix="plan-counts-"))
    try:
        roots = make_data(base, args.images)
        path = config(base, roots)
        every = audit.folders(roots)
        rows = {}
        for command in COMMANDS:
            argv = [kdsearch, command, str(path)] + ([] if command == "validate" else ["--device", "cpu"])
            env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else {}
            listed, measured, seconds, proc = audit.counted(argv, base, roots, command, env)
            rows[command] = {
                "exit": proc.returncode, "seconds": round(seconds, 1),
                "folders": len(every), "listings": sum(listed.values()),
                "most_listings_of_one_folder": max(listed.values(), default=0),
                "student_builds": {s: measured[audit.MEASURED_EVENT, s] for s in STUDENTS},
                "weights_counts": {s: measured[audit.COUNTED_EVENT, s] for s in STUDENTS},
            }
            print(command, json.dumps(rows[command]), flush=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result[args.label] = {"images": args.images, "machine": f"{platform.machine()} {platform.processor() or ''}",
                          "commands": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

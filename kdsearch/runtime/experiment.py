"""Where a config's search lives on disk, and the state kdsearch keeps beside Ray's there.

Ray Tune keeps its experiment under `output.dir/ray/<name>/`; kdsearch adds one
file, the search state (search id, MLflow parent run, teacher identity), which
`--resume`, export, report and submissions read back. A trial's checkpoint is a
different file with a different name (`TRIAL_STATE_FILE`). No Ray import here:
finding a folder needs none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Config

SEARCH_STATE_FILE = "kdsearch.json"
"""In the experiment folder: search id, MLflow parent run id, teacher identity."""
TRIAL_STATE_FILE = "state.pt"
"""In each trial checkpoint: the student, optimizer and scheduler state and the epoch."""
RESCORED_FILE = "rescored.json"
"""In the checkpoint of a best trial the search re-scored after it ended (no trial ran all its epochs): its shipped
file's whole-split figures (tuner.rescored), which export checks the file against."""


def experiment_dir(cfg: Config) -> Path:
    return (cfg.output_dir / "ray" / cfg.name).resolve()


def read_search_state(cfg: Config) -> dict[str, Any]:
    """The saved search state; {} when no search has written one."""
    path = experiment_dir(cfg) / SEARCH_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_search_state(cfg: Config, state: dict[str, Any]) -> None:
    folder = experiment_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SEARCH_STATE_FILE).write_text(json.dumps(state))

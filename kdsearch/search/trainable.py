"""The Ray Tune trainable: the one place that talks to Tune's session API (report, get_checkpoint).

Each call to `tune.report` is one epoch, so ASHA's `training_iteration` counts
epochs. A checkpoint (student + optimizer + scheduler + epoch) goes with every
report, so a failed trial resumes from its last epoch.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from ..config import Config
from ..core.devices import resolve_device
from ..core.results import REPORTED
from ..distill.distiller import Distiller, Hparams, Prepared
from ..models import deployed
from ..runtime.experiment import TRIAL_STATE_FILE


def distill_trainable(config: dict[str, Any], cfg: Config, prepared: Prepared) -> None:
    """Train one student with the hyperparameters Optuna picked, reporting every epoch."""
    for name in ("ray.train", "ray.tune"):  # per-checkpoint INFO lines would drown the progress view
        logging.getLogger(name).setLevel(logging.WARNING)
    # The counts travel with the pickled teacher (live teachers only; cached runs ship no models)
    passes_before, seconds_before = prepared.teacher.forward_passes, prepared.teacher.seconds
    device = resolve_device()  # Ray hides the GPUs a trial did not ask for
    torch.set_num_threads(max(1, int(cfg.search.resources_per_trial.cpu)))
    distiller = Distiller(cfg, Hparams.from_mapping(config), prepared, device)
    node_id = ray.get_runtime_context().get_node_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / TRIAL_STATE_FILE, weights_only=True, map_location=device)
            distiller.load_state_dict(state)
    while distiller.epoch < cfg.search.max_epochs:
        metrics = distiller.run_epoch()
        report = {k: metrics[k] for k in REPORTED if k in metrics}  # the shipped file's figures: last epoch only
        # live teacher only (0 when its outputs are cached); counts this trial's process since it started
        report["teacher_forward_passes"] = prepared.teacher.forward_passes - passes_before
        report["teacher_seconds"] = prepared.teacher.seconds - seconds_before
        report["node_id"] = node_id  # which Ray node ran it (a cluster spreads trials over nodes)
        report["device"] = device.type  # export re-checks the student on the same kind of device
        with tempfile.TemporaryDirectory() as folder:
            torch.save(distiller.state_dict(), Path(folder) / TRIAL_STATE_FILE)
            if distiller.shipped is not None:  # the last epoch: the files that ship, as scored (export copies them)
                (Path(folder) / deployed.FILE).write_bytes(distiller.shipped)
                torch.save(distiller.weights, Path(folder) / deployed.WEIGHTS_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
        if metrics["diverged"]:
            break  # the trial ends here (marked diverged), freeing its slot

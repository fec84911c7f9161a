"""Export the best finished trial as a deployable student (the contract's layout).

Written into a temp folder, re-evaluated from the written files, then swapped
in: a refused or crashed export leaves the previous one intact.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import results
from ._io import atomic_dir
from .config import Config
from .data import Dataset, load_dataset, val_subset
from .distill import Hparams, trial_student
from .engine import Metrics, evaluate
from .errors import KdsearchError
from .experiment import TRIAL_STATE_FILE, experiment_dir, read_search_state
from .sizes import WEIGHTS_FILE, cast_state_dict
from .students import create_student, student_spec
from .versions import versions

log = logging.getLogger("kdsearch")

# How far the re-evaluated metric may drift from the trial's: fp32 files on a CPU reproduce it exactly;
# fp16 rounding, or a GPU (TF32 convolutions, cuDNN picking its algorithms per run), can flip a borderline
# prediction or two.
TOLERANCE = {"fp32": 1e-6, "fp16": 0.01}
GPU_TOLERANCE = 0.01


@dataclass
class BestTrial:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_dir: Path


@dataclass
class ExportResult:
    out_dir: Path
    trial: BestTrial
    metrics: Metrics
    files: dict[str, int]
    registered: str | None
    val_images: int
    """The whole val split the exported file was scored on (`metrics`)."""


def best_trial(cfg: Config, partial: bool = False) -> BestTrial:
    """The best finished trial of the config's search (results.best: by its last whole-split score). A search that
    was stopped before it finished exports only with `partial`."""
    from ray import tune

    path = experiment_dir(cfg)
    if not tune.Tuner.can_restore(str(path)):
        raise KdsearchError(f"no search found at {path}; run `kdsearch run CONFIG` first (or check name/output.dir)")
    state = read_search_state(cfg)
    if not state.get("finished", True) and not partial:
        done = sum(state.get("trials", {}).values())
        raise KdsearchError(f"{path}: the search was stopped before it finished ({done} of {cfg.search.num_samples} "
                            "trials finished); continue it with `kdsearch run CONFIG --resume`, or export its best so "
                            "far with `kdsearch export-best CONFIG --partial`")
    metric, mode = cfg.search.metric, cfg.search.resolved_mode
    analysis = tune.ExperimentAnalysis(str(path), default_metric=metric, default_mode=mode)
    finished = [t for t in analysis.trials
                if t.status == "TERMINATED" and t.checkpoint is not None and metric in (t.last_result or {})]
    if not finished:
        raise KdsearchError(f"{path}: no finished trial to export; let `kdsearch run CONFIG --resume` finish one")
    best = results.best(finished, lambda t: t.last_result, metric, mode)
    return BestTrial(best.trial_id, dict(best.config), dict(best.last_result), Path(best.checkpoint.path))


def export_best(cfg: Config, out: Path | None = None, data: Dataset | None = None,
                search_state: dict[str, Any] | None = None, register: bool = True,
                partial: bool = False) -> ExportResult:
    """Write student.pt, student.torchscript.pt, student.onnx (when onnx is installed) and model_card.json."""
    trial = best_trial(cfg, partial)
    data = data if data is not None else load_dataset(cfg)
    search_state = search_state if search_state is not None else read_search_state(cfg)
    hp = Hparams.from_mapping(trial.config)
    model = trial_student(cfg, hp, trial.checkpoint_dir / TRIAL_STATE_FILE, data.num_classes)
    out = Path(out) if out is not None else cfg.output_dir / "best"
    with atomic_dir(out) as tmp:
        # Everything after the weights starts from the written file, so it checks what users get.
        model = write_weights(cfg, hp.student, model, data.num_classes, tmp / WEIGHTS_FILE)
        example = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
        scripted = write_torchscript(model, example, tmp / "student.torchscript.pt")
        m = check_against_trial(cfg, scripted, trial, data, out)
        _export_onnx(model, example, tmp / "student.onnx")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / "labels.json").write_text(json.dumps(data.class_table.as_json(), indent=2))
        files["labels.json"] = (tmp / "labels.json").stat().st_size
        card = model_card(cfg, hp, trial, data, m, files, search_state)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
        files["model_card.json"] = (tmp / "model_card.json").stat().st_size
    registered = None
    if register:
        from .tracking import register_student

        registered = register_student(cfg, model, example, out, search_state.get("parent_run_id"))
    return ExportResult(out, trial, m, files, registered, len(data.val.y))


def write_weights(cfg: Config, student: str, model: torch.nn.Module, num_classes: int, path: Path) -> torch.nn.Module:
    """Save the state dict in student.precision, refuse it over the size limit, and return the model as loaded
    back from the file (in float32, eval mode)."""
    precision = cfg.student.precision
    torch.save(cast_state_dict(model, precision), path)
    if path.stat().st_size > cfg.student.max_size_mb * 1_000_000:
        raise KdsearchError(f"student.max_size_mb {cfg.student.max_size_mb:g}: the exported {student} is "
                            f"{path.stat().st_size / 1e6:.2f} MB in {precision}; export refused")
    written = torch.load(path, weights_only=True)
    model = create_student(student, num_classes, cfg.data.image_size).eval()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in written.items()})
    return model


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> torch.jit.ScriptModule:
    """Trace the model to `path` and return it loaded back."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is what the contract ships
        torch.jit.trace(model, example).save(str(path))
        return torch.jit.load(str(path))


def check_against_trial(cfg: Config, model: torch.nn.Module, trial: BestTrial, data: Dataset, out: Path) -> Metrics:
    """The exported model's whole-split val metrics, after checking that it reproduces its trial's score on the
    trial's device type and on the images that score saw (the whole val split, or the rung subset when no trial
    completed); refuses the export otherwise."""
    spec, size, metric, precision = student_spec(cfg), cfg.data.image_size, cfg.search.metric, cfg.student.precision
    trial_device = str(trial.metrics.get("device", "cpu"))
    device = "cuda" if trial_device == "cuda" and torch.cuda.is_available() else "cpu"
    exact = trial_device == device == "cpu"
    tolerance = TOLERANCE[precision] if exact else max(TOLERANCE[precision], GPU_TOLERANCE)
    m = evaluate(model.to(device), data.val.x, data.val.y, spec, size, data.num_classes, device)
    checked = m
    if not results.on_full_split(trial.metrics):
        idx = val_subset(data, cfg.search.rung_val_size, cfg.seed)
        checked = evaluate(model, data.val.x[idx], data.val.y[idx], spec, size, data.num_classes, device)
    got, expected = results.metric_value(checked, metric), float(trial.metrics[metric])
    model.to("cpu")
    if abs(got - expected) > tolerance:
        raise KdsearchError(f"{out}: the exported student scores {metric}={got:.6f} on val but its trial "
                            f"reported {expected:.6f}; export refused (re-run `kdsearch export-best`)")
    return m


def model_card(cfg: Config, hp: Hparams, trial: BestTrial, data: Dataset, m: Metrics, files: dict[str, int],
               search_state: dict[str, Any]) -> dict[str, Any]:
    """model_card.json: what the student is, how it scores, what it was trained on and with."""
    spec, metric = student_spec(cfg), cfg.search.metric
    return {
        "student": hp.student,
        "hyperparameters": hp.as_dict(),
        "metrics": {"val_macro_f1": m.macro_f1, "val_accuracy": m.accuracy, "val_loss": m.loss,
                    # null: the class has no val image, so no F1 (engine.classification_metrics)
                    "val_per_class_f1": {n: (v if math.isfinite(v) else None)
                                         for n, v in zip(data.class_names, m.per_class_f1)},
                    f"trial_{metric}": float(trial.metrics[metric]),
                    "trial_val_images": int(trial.metrics.get("val_images") or len(data.val.y))},
        "files": dict(files),
        "size_limit_mb": cfg.student.max_size_mb,
        "precision": cfg.student.precision,
        "class_names": data.class_names,
        "classes": data.class_table.as_json(),  # index -> class (and its label id in the source): labels.json
        "input": {"size": cfg.data.image_size, "channels": 3, "mean": list(spec.mean), "std": list(spec.std),
                  "layout": "float32 NCHW, RGB scaled to [0, 1], then (x - mean) / std"},
        "teacher": search_state.get("teacher", {}),
        "data": {"source": cfg.data.source, "fingerprint": data.fingerprint, "train_images": len(data.train.y),
                 "val_images": len(data.val.y), "label_budget": cfg.data.label_budget,
                 "images": data.counts()},  # labeled / transfer / val / test: what the student learned from
        "trial_id": trial.trial_id,
        "search_finished": search_state.get("finished", True),  # false: exported from a stopped search (--partial)
        "seed": cfg.seed,
        "versions": versions(),
        "config": cfg.model_dump(mode="json", by_alias=True),
    }


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        log.info("onnx not installed: skipping student.onnx (pip install 'kdsearch[onnx]')")
        return
    try:
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except Exception as e:  # an architecture the exporter cannot handle still gets its other files
        log.warning("ONNX export failed (%s: %s); student.onnx not written", type(e).__name__, str(e)[:200])
        path.unlink(missing_ok=True)

"""Export the best finished trial as a deployable student (the contract's layout).

Written into a temp folder, re-evaluated from the written files, then swapped
in: a refused or crashed export leaves the previous one intact.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..core import figures, results
from ..core.errors import KdsearchError
from ..core.figures import Figure
from ..core.io import atomic_dir
from ..core.versions import versions
from ..data.dataset import Dataset, load_dataset, val_subset
from ..distill.distiller import Hparams, shipped_format, trial_student
from ..engine.loop import Metrics, evaluate
from ..models import deployed
from ..models.deployed import cast_state_dict
from ..models.students import student_spec
from ..runtime.experiment import RESCORED_FILE, TRIAL_STATE_FILE, experiment_dir, read_search_state
from ..search.analysis import budget_cut, file_sizes, search_analysis, trial_figure

log = logging.getLogger("kdsearch")

# How far the re-evaluated metric may drift from the trial's: fp32 files on a CPU reproduce it exactly;
# fp16 rounding, int8 kernels of another CPU, or a GPU (TF32 convolutions, cuDNN picking its algorithms per run),
# can flip a borderline prediction or two.
TOLERANCE = {"fp32": 1e-6, "fp16": 0.01, "int8": 0.01}  # int8: the same file on another CPU's kernels
GPU_TOLERANCE = 0.01


@dataclass
class BestTrial:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_dir: Path
    figure: Figure
    """Its last figure with where it comes from: finished, or stopped after k of N epochs."""


@dataclass
class ExportResult:
    out_dir: Path
    trial: BestTrial
    metrics: Metrics
    files: dict[str, int]
    registered: str | None
    val_images: int
    """The whole val split the exported file was scored on (`metrics`)."""
    format: str = "fp32"


def _ended_trials(cfg: Config, partial: bool):
    """Tune's ended trials of the config's search (TERMINATED with a checkpoint and the metric): finished ones and
    those ASHA or the time budget stopped (their figures say which)."""
    path = experiment_dir(cfg)
    analysis = search_analysis(cfg)
    if analysis is None:
        raise KdsearchError(f"no search found at {path}; run `kdsearch run CONFIG` first (or check name/output.dir)")
    state = read_search_state(cfg)
    if not state.get("finished", True) and not partial:
        done = sum(state.get("trials", {}).values())
        raise KdsearchError(f"{path}: the search was stopped before it finished ({done} of {cfg.search.num_samples} "
                            "trials finished); continue it with `kdsearch run CONFIG --resume`, or export its best so "
                            "far with `kdsearch export-best CONFIG --partial`")
    metric = cfg.search.metric
    ended = [t for t in analysis.trials
             if t.status == "TERMINATED" and t.checkpoint is not None and metric in (t.last_result or {})]
    if not ended:
        raise KdsearchError(f"{path}: no finished trial to export; let `kdsearch run CONFIG --resume` finish one")
    return ended


def _as_best(cfg: Config, t, cut: set[str] = frozenset()) -> BestTrial:
    """A Tune trial as exported: its last result, or the whole-split figures the search re-scored it with."""
    folder = Path(t.checkpoint.path)
    rescored = json.loads((folder / RESCORED_FILE).read_text()) if (folder / RESCORED_FILE).is_file() else {}
    metrics = {**t.last_result, **rescored}
    return BestTrial(t.trial_id, dict(t.config), metrics, folder,
                     trial_figure(cfg, t, cut=t.trial_id in cut, result=metrics))


def best_trial(cfg: Config, partial: bool = False, trial_id: str | None = None) -> BestTrial:
    """The search's pick (core.figures.chosen: the best finished trial; when none finished, the best of those that
    ran the most epochs, as the search re-scored it), or the trial `trial_id`. A search stopped before it finished,
    or a trial ASHA or the time budget stopped, exports only with `partial`."""
    ended = _ended_trials(cfg, partial)
    cut = budget_cut(cfg)
    if trial_id is not None:
        found = [t for t in ended if t.trial_id == trial_id]
        if not found:
            raise KdsearchError(f"--trial {trial_id}: no trial with that id and a result in {experiment_dir(cfg)}; "
                                f"those with one: {', '.join(t.trial_id for t in ended)}")
        trial = _as_best(cfg, found[0], cut)
        if not trial.figure.finished and not trial.metrics.get("rescored") and not partial:
            raise KdsearchError(f"--trial {trial_id}: the trial did not finish ({trial.figure.where()}); its figure "
                                "is not a finished student's. Export it anyway with --partial (its model card and "
                                "MLflow version say so), or pick a finished trial")
        return trial
    shown = [trial_figure(cfg, t, cut=t.trial_id in cut) for t in ended]
    top = figures.chosen(shown, cfg.search.resolved_mode, file_sizes(ended))
    if top is None:
        raise KdsearchError(f"{experiment_dir(cfg)}: no trial has a score to export; let `kdsearch run CONFIG "
                            "--resume` finish one")
    return _as_best(cfg, next(t for t in ended if t.trial_id == top.trial), cut)


def pareto_trials(cfg: Config, partial: bool = False) -> list[BestTrial]:
    """The finished trials on the search's Pareto front (finished_study), best on the first objective first."""
    from ..search.finished_study import rebuild

    ended = _ended_trials(cfg, partial)
    study = rebuild(ended, cfg)  # finished trials only
    by_id = {t.trial_id: t for t in ended}
    front = [_as_best(cfg, by_id[i]) for i in study.front]
    if not front:
        raise KdsearchError(f"{experiment_dir(cfg)}: no trial ran all its epochs, so the search has no Pareto front; "
                            "let `kdsearch run CONFIG --resume` finish some, or export the best with export-best")
    return front


def export_best(cfg: Config, out: Path | None = None, data: Dataset | None = None,
                search_state: dict[str, Any] | None = None, register: bool = True,
                partial: bool = False, trial_id: str | None = None) -> ExportResult:
    """Write student.pt, student.torchscript.pt (in the trial's format), student.onnx (float formats, when onnx is
    installed) and model_card.json for the best finished trial, or for `trial_id`."""
    return export_trial(cfg, best_trial(cfg, partial, trial_id), out or cfg.output_dir / "best", data, search_state,
                        register)


def export_pareto(cfg: Config, out: Path | None = None, partial: bool = False) -> list[ExportResult]:
    """Every member of the Pareto front into `out`/pareto/<trial>/ (default output.dir/best/pareto), none
    registered in MLflow (the best is, by export_best). The folder is replaced as a whole."""
    front = pareto_trials(cfg, partial)
    data, state = load_dataset(cfg), read_search_state(cfg)
    folder = Path(out) if out is not None else cfg.output_dir / "best"
    exported = []
    with atomic_dir(folder / "pareto") as tmp:
        for trial in front:
            exported.append(export_trial(cfg, trial, tmp / trial.trial_id, data, state, register=False))
    return [replace(e, out_dir=folder / "pareto" / e.trial.trial_id) for e in exported]


def export_trial(cfg: Config, trial: BestTrial, out: Path, data: Dataset | None = None,
                 search_state: dict[str, Any] | None = None, register: bool = True) -> ExportResult:
    """Export one finished trial: the files it shipped (copied from its checkpoint, as scored), re-checked."""
    data = data if data is not None else load_dataset(cfg)
    search_state = search_state if search_state is not None else read_search_state(cfg)
    hp = Hparams.from_mapping(trial.config)
    fmt = shipped_format(cfg, hp)
    model = trial_student(cfg, hp, trial.checkpoint_dir / TRIAL_STATE_FILE, data.num_classes)
    example = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    with atomic_dir(Path(out)) as tmp:
        # Everything after the files is measured on the written files, so it checks what users get.
        write_files(cfg, hp.student, fmt, model, trial.checkpoint_dir, tmp)
        scripted = deployed.load(tmp / deployed.FILE)
        m = check_against_trial(cfg, scripted, trial, data, out, fmt)
        onnx = _export_onnx(model, example, tmp / "student.onnx", fmt, cfg.student.max_size_mb)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / "labels.json").write_text(json.dumps(data.class_table.as_json(), indent=2))
        files["labels.json"] = (tmp / "labels.json").stat().st_size
        shipped = {"format": fmt, "file": deployed.FILE, "file_bytes": files[deployed.FILE],
                   "latency_ms": deployed.latency_ms(scripted, cfg.data.image_size), "cpu": deployed.cpu_name(),
                   "latency_setting": f"batch 1, 1 thread, median of {deployed.LATENCY_RUNS} runs after "
                                      f"{deployed.LATENCY_WARMUP} warm-up",
                   "torch": torch.__version__, "loads_with": "torch.jit.load (torch only), on a CPU",
                   "trial_latency_ms": trial.metrics.get("latency_ms"), "trial_cpu": trial.metrics.get("cpu"),
                   "onnx": onnx}
        card = model_card(cfg, hp, trial, data, m, files, search_state, shipped)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
        files["model_card.json"] = (tmp / "model_card.json").stat().st_size
    registered = None
    if register:
        from ..tracking import register_student

        registered = register_student(cfg, scripted, example, out, search_state.get("parent_run_id"),
                                      trial_tags(trial))
    return ExportResult(Path(out), trial, m, files, registered, len(data.val.y), fmt)


def trial_tags(trial: BestTrial) -> dict[str, str]:
    """The registered version's provenance: which trial, whether it finished, and where its figure comes from."""
    f = trial.figure
    return {"kdsearch.trial_id": trial.trial_id, "kdsearch.trial_finished": str(f.finished).lower(),
            "kdsearch.trial_epochs": f"{f.epochs}/{f.max_epochs}", "kdsearch.trial_ended": f.ending,
            "kdsearch.trial_figure": f.text()}


def write_files(cfg: Config, student: str, fmt: str, model: torch.nn.Module, checkpoint: Path, folder: Path) -> None:
    """The trial's shipped files into `folder`: copied from its checkpoint when its last epoch wrote them; else
    (a search from before formats were searched: fp32 or fp16 only) made from its float weights. Refused over the
    size limit."""
    limit = cfg.student.max_size_mb
    if (checkpoint / deployed.FILE).is_file():
        shutil.copyfile(checkpoint / deployed.WEIGHTS_FILE, folder / deployed.WEIGHTS_FILE)
        shutil.copyfile(checkpoint / deployed.FILE, folder / deployed.FILE)
    elif fmt == "int8":
        raise KdsearchError(f"{checkpoint}: this trial never wrote its int8 file (it did not finish its last epoch); "
                            "export a finished trial (kdsearch export-best CONFIG --trial ID)")
    else:
        torch.save(cast_state_dict(model, fmt), folder / deployed.WEIGHTS_FILE)
        (folder / deployed.FILE).write_bytes(deployed.script_bytes(deployed.as_format(model, student, fmt, 0, []),
                                                                    cfg.data.image_size))
    for name in (deployed.WEIGHTS_FILE, deployed.FILE):
        if (folder / name).stat().st_size > limit * 1_000_000:
            raise KdsearchError(f"student.max_size_mb {limit:g}: the exported {student} {name} is "
                                f"{(folder / name).stat().st_size / 1e6:.2f} MB in {fmt}; export refused")


def check_against_trial(cfg: Config, model: torch.nn.Module, trial: BestTrial, data: Dataset, out: Path,
                        fmt: str) -> Metrics:
    """The exported file's whole-split val metrics on the CPU, after checking that it reproduces its trial's score
    on the images that score saw (the whole val split, or the rung subset when no trial completed); refuses the
    export otherwise. A trial scores its shipped file on the CPU on its last epoch; an older trial's float score
    on a GPU is reproduced within GPU_TOLERANCE."""
    spec, size, metric = student_spec(cfg), cfg.data.image_size, cfg.search.metric
    exact = str(trial.metrics.get("scored", "")).endswith("file") or trial.metrics.get("device", "cpu") == "cpu"
    tolerance = TOLERANCE[fmt] if exact else max(TOLERANCE[fmt], GPU_TOLERANCE)
    m = evaluate(model, data.val.x, data.val.y, spec, size, data.num_classes, "cpu")
    checked = m
    if not results.on_full_split(trial.metrics):
        idx = val_subset(data, cfg.search.rung_val_size, cfg.seed)
        checked = evaluate(model, data.val.x[idx], data.val.y[idx], spec, size, data.num_classes, "cpu")
    got, expected = results.metric_value(checked, metric), float(trial.metrics[metric])
    if abs(got - expected) > tolerance:
        raise KdsearchError(f"{out}: the exported student scores {metric}={got:.6f} on val but its trial "
                            f"reported {expected:.6f}; export refused (re-run `kdsearch export-best`)")
    return m


def model_card(cfg: Config, hp: Hparams, trial: BestTrial, data: Dataset, m: Metrics, files: dict[str, int],
               search_state: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
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
                    "trial_val_macro_f1_float": trial.metrics.get("val_macro_f1_float"),  # before conversion
                    "trial_val_images": int(trial.metrics.get("val_images") or len(data.val.y)),
                    # where the trial's figure comes from: model, images, epochs done of max, how it ended
                    "trial_figure": trial.figure.as_dict(),
                    **({"trial_chosen_on": trial.metrics["chosen_on"]} if trial.metrics.get("chosen_on") else {}),
                    # chosen on a rung-subset score (no trial ran all its epochs), then re-scored whole by the search
                    **({"trial_rung_subset": {metric: trial.metrics[f"subset_{metric}"],
                                              "val_images": int(trial.metrics["subset_val_images"])}}
                       if f"subset_{metric}" in trial.metrics else {})},
        "files": dict(files),
        "size_limit_mb": cfg.student.max_size_mb,
        "precision": shipped["format"],
        "shipped": shipped,  # the file's format, size, CPU latency (here and in its trial), CPU and torch version
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
        "trial_finished": trial.figure.finished,  # false: the trial stopped before its last epoch
        "trial_epochs": {"done": trial.figure.epochs, "of": trial.figure.max_epochs, "ended": trial.figure.ending},
        "seed": cfg.seed,
        "versions": versions(),
        "config": cfg.model_dump(mode="json", by_alias=True),
    }


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, fmt: str, limit_mb: float) -> str:
    """student.onnx in the shipped format (fp16: float16 weights and arithmetic; int8: none, said why), refused over
    the size limit like the other files; returns what was done, for the model card."""
    if fmt == "int8":
        why = "not written: ONNX export of eager int8 (torch.ao) models is not supported"
        log.info("student.onnx: %s", why)
        return why
    try:
        import onnx  # noqa: F401
    except ImportError:
        log.info("onnx not installed: skipping student.onnx (pip install 'kdsearch[onnx]')")
        return "not written: onnx is not installed (pip install 'kdsearch[onnx]')"
    if fmt == "fp16":
        model, example = copy.deepcopy(model).half(), example.half()
    try:
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except Exception as e:  # an architecture the exporter cannot handle still gets its other files
        log.warning("ONNX export failed (%s: %s); student.onnx not written", type(e).__name__, str(e)[:200])
        path.unlink(missing_ok=True)
        return f"not written: the exporter failed ({type(e).__name__})"
    size = path.stat().st_size
    if size > limit_mb * 1_000_000:
        path.unlink()
        why = f"not written: {size / 1e6:.1f} MB in {fmt}, over student.max_size_mb {limit_mb:g}"
        log.warning("student.onnx %s", why)
        return why
    return f"written in {fmt} ({size / 1e6:.2f} MB)"

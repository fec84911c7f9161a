"""`kdsearch report CONFIG [--seeds N]`: teacher vs student without KD vs student with KD, plus the search's plots.

The KD gain is measured, not assumed: the best configuration the search found
is trained again with and without distillation (alpha = 0, feature_weight = 0)
for the same number of optimizer steps (search.max_epochs of the KD arm; the
no-KD arm, which sees only the labeled images, gets the epochs that match its
steps), on the same data, views and seeds. With N seeds
the figures are means with standard deviations. Everything lands in
`output.dir/report/` (report.json + PNGs) and on the search's MLflow parent run.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..core import figures, results
from ..core.io import atomic_dir, json_safe
from ..data.dataset import Dataset, Split
from ..distill.distiller import (
    Hparams,
    Prepared,
    default_hparams,
    prepare,
    shipped_format,
    train_student,
    training_indices,
)
from ..engine.loop import Metrics, evaluate, predict_logits
from ..models.deployed import load as load_shipped
from ..models.students import student_spec
from ..preflight import Plan, preflight
from ..search.analysis import budget_cut, search_analysis, trial_figure

log = logging.getLogger("kdsearch")

TOP_TRIALS = 5  # learning curves drawn


def search_trials(cfg: Config) -> list[dict[str, Any]]:
    """Every trial of the config's search: id, config, last result, per-epoch history, whether ASHA stopped it, and
    its last figure (core.figures.Figure). Empty when there is no search yet."""
    analysis = search_analysis(cfg)
    if analysis is None:
        return []
    cut = budget_cut(cfg)
    frames = analysis.trial_dataframes
    out = []
    for t in analysis.trials:
        last = dict(t.last_result or {})
        if cfg.search.metric not in last or t.trial_id not in frames:
            continue
        out.append({"trial_id": t.trial_id, "config": dict(t.config), "last": last, "history": frames[t.trial_id],
                    "status": t.status, "errored": t.status == "ERROR",
                    "stopped_early": results.ended(last, cfg.search.max_epochs) == "stopped_early",
                    "figure": trial_figure(cfg, t, cut=t.trial_id in cut)})
    return out


def what_mattered(cfg: Config, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The search's Pareto front and hyperparameter importances, from its finished trials (finished_study)."""
    from ..search.finished_study import rebuild

    study = rebuild([t for t in trials if not t["errored"]], cfg, lambda t: t["trial_id"], lambda t: t["config"],
                    lambda t: t["last"])
    return {"pareto_front": study.front, "importances": study.importances(),
            "importance_lines": study.importance_lines()}


def best_hparams(cfg: Config, trials: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> tuple[Hparams, str]:
    """The best finished trial's hyperparameters, or the config's fixed point when there is no search."""
    done = {t["trial_id"]: t for t in trials if not t["errored"]}
    top = figures.chosen([t["figure"] for t in done.values()], cfg.search.resolved_mode)
    if top is None:
        return default_hparams(cfg, pairs), "config defaults (no search found)"
    return Hparams.from_mapping(done[top.trial]["config"]), f"search trial {top.trial} ({top.text()})"


def _teacher_metrics(prepared: Prepared, split: str, x: torch.Tensor, y: torch.Tensor,
                     device) -> tuple[Metrics, torch.Tensor]:
    """The teacher on a split: val from its cached outputs when there are some, else a forward pass."""
    t = prepared.teacher
    cached = split == "val" and prepared.targets is not None
    logits = prepared.targets.val_logits if cached else t.predict(x, device)
    return t.score(logits, y, prepared.data.num_classes)


def _summary(runs: list[Metrics], prefix: str, suffix: str) -> dict[str, float]:
    out = {}
    for name, values in (("accuracy", [m.accuracy for m in runs]), ("macro_f1", [m.macro_f1 for m in runs])):
        out[f"{prefix}_{name}{suffix}"] = statistics.fmean(values)
        if len(values) > 1:
            out[f"{prefix}_{name}{suffix}_std"] = statistics.stdev(values)
    return out


def run_report(cfg: Config, seeds: int = 1, device: str | torch.device = "cpu",
               plan: Plan | None = None) -> dict[str, Any]:
    """Teacher vs student without KD vs student with KD, trained at the search's best hyperparameters. `plan`: the
    command's preflight (made here when not given)."""
    from ..tracking import log_report

    prepared = prepare(cfg, device, plan=plan or preflight(cfg, search=False))
    prepared.teacher.to(device)
    data = prepared.data
    trials = search_trials(cfg)
    hp, source = best_hparams(cfg, trials, prepared.pairs)
    splits = {"val": data.val, **({"test": data.test} if data.test is not None else {})}
    seed_list = [cfg.seed + i for i in range(seeds)]
    fmt = shipped_format(cfg, hp)
    runs, first_student = train_arms(cfg, prepared, hp, splits, seed_list, device)
    shown, teacher_val_pred = kd_figures(prepared, splits, runs, fmt, device)
    added = figures.kd_added([t["figure"] for t in trials if not t["errored"]], cfg.search.resolved_mode)
    family = "vit" if hp.student.startswith("vit") else "cnn"
    report = {
        "config": cfg.name,
        family: shown,
        "format": fmt,  # student_* and kd_gain_* are the arms' files in this format; *_float the float models
        "scored": f"{fmt} file on the CPU" + ("" if fmt == "fp32" else "; *_float: the float model"),
        "best_config": hp.as_dict(),
        "best_config_from": source,
        "loss": hp.loss,  # the distillation term of the best trial (the "with KD" arm)
        "seeds": seed_list,
        "epochs": cfg.search.max_epochs,
        "arms": arm_budgets(cfg, data, hp),  # equal optimizer steps: the no-KD arm sees fewer images an epoch
        "splits": list(splits),
        "teacher": prepared.teacher.identity,
        "trials": len(trials),
        **what_mattered(cfg, trials),
        # inside the search: the no-KD control against its matched KD start point (core.figures.kd_added)
        "kd_added_in_search": None if added is None else {**added.as_dict(), "line": added.line()},
    }
    out = cfg.output_dir / "report"
    with atomic_dir(out) as tmp:
        student_pred = predict_logits(first_student, data.val.x, student_spec(cfg), cfg.data.image_size,
                                      device).argmax(1)
        written = draw_plots(cfg, tmp, trials, data, hp.student, runs["val"]["with_kd"]["shipped"][0], seed_list[0],
                             teacher_val_pred, student_pred, report["pareto_front"])
        report["plots"] = {k: str(out / p.name) for k, p in written.items()}
        (tmp / "report.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
        report["mlflow_run_id"] = log_report(cfg, tmp, shown)
    return report


Runs = dict[str, dict[str, dict[str, list[Metrics]]]]
"""split -> "with_kd" / "without_kd" -> "shipped" (the arm's file in the trial's format) / "float" (the float model)
-> one Metrics per seed."""


def arm_budgets(cfg: Config, data: Dataset, hp: Hparams) -> dict[str, dict[str, int]]:
    """Epochs, images per epoch and optimizer steps of each arm. The no-KD arm (alpha 0) trains on the labeled
    images only, so under data.label_budget (or with data.unlabeled) an epoch of it is fewer steps: it gets the
    epochs that make its optimizer steps equal the KD arm's (rounded), as benchmarks/kd_gain.py does."""
    pool_y = data.pool_labels()
    plain = training_indices(pool_y, hp.replace(alpha=0.0, feature_weight=0.0))  # what train_arms' no-KD arm sees
    labeled = len(pool_y) if plain is None else len(plain)

    def steps(images: int) -> int:
        return -(-images // hp.batch_size)

    kd_epochs = cfg.search.max_epochs
    kd_steps = steps(len(pool_y)) * kd_epochs
    plain_epochs = max(1, round(kd_steps / steps(labeled)))
    return {"with_kd": {"epochs": kd_epochs, "images_per_epoch": len(pool_y), "optimizer_steps": kd_steps},
            "without_kd": {"epochs": plain_epochs, "images_per_epoch": labeled,
                           "optimizer_steps": steps(labeled) * plain_epochs}}


def train_arms(cfg: Config, prepared: Prepared, hp: Hparams, splits: dict[str, Split], seed_list: list[int],
               device) -> tuple[Runs, torch.nn.Module]:
    """The best configuration trained with KD and without (alpha = 0, feature_weight = 0) for each seed, for the
    same number of optimizer steps (`arm_budgets`), each made into its shipped file in the trial's format (as a
    search's last epoch does) and scored on each split as that file on the CPU and as the float model; also returns
    the first seed's student with KD (for the sample predictions)."""
    data, spec, size = prepared.data, student_spec(cfg), cfg.data.image_size
    without = hp.replace(alpha=0.0, feature_weight=0.0)
    budgets = arm_budgets(cfg, data, hp)
    runs: Runs = {s: {k: {"shipped": [], "float": []} for k in ("with_kd", "without_kd")} for s in splits}
    first_student = None
    for seed in seed_list:
        for kind, h in (("with_kd", hp), ("without_kd", without)):
            epochs = budgets[kind]["epochs"]
            # its own epoch count is its schedule's length too (the cosine learning rate spans the arm's steps)
            arm_cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"max_epochs": epochs})})
            log.info("report: training %s with seed %d (%s, %d epochs)", h.student, seed, kind, epochs)
            d, _ = train_student(arm_cfg, h, prepared, device, seed=seed)  # its last epoch makes the file (deploy)
            shipped = load_shipped(d.shipped) if d.shipped is not None else None  # None: it diverged
            for split, s in splits.items():
                float_m = evaluate(d.model, s.x, s.y, spec, size, data.num_classes, device)
                runs[split][kind]["float"].append(float_m)
                runs[split][kind]["shipped"].append(float_m if shipped is None else
                                                    evaluate(shipped, s.x, s.y, spec, size, data.num_classes, "cpu"))
            if first_student is None and kind == "with_kd":
                first_student = d.model
    return runs, first_student


def kd_figures(prepared: Prepared, splits: dict[str, Split], runs: Runs, fmt: str,
               device) -> tuple[dict[str, float], torch.Tensor | None]:
    """Teacher, student without KD, student with KD and the KD gain per split (no suffix: val, the split the search
    optimised; _test: the held-out test split), the students as their files in `fmt`, and beside them (_float) the
    float models' figures and gain when the format is not fp32; also the teacher's val predictions."""
    out: dict[str, float] = {}
    teacher_val_pred = None
    for split, s in splits.items():
        tm, pred = _teacher_metrics(prepared, split, s.x, s.y, device)
        teacher_val_pred = pred if split == "val" else teacher_val_pred
        sfx = "" if split == "val" else "_test"
        out.update({f"teacher_accuracy{sfx}": tm.accuracy, f"teacher_macro_f1{sfx}": tm.macro_f1})
        for model, tail in (("shipped", ""), ("float", "_float")):
            if model == "float" and fmt == "fp32":
                continue  # the fp32 file scores as the float model
            out.update(_summary(runs[split]["without_kd"][model], "student", f"_without_kd{sfx}{tail}"))
            out.update(_summary(runs[split]["with_kd"][model], "student", f"_with_kd{sfx}{tail}"))
            for name in ("accuracy", "macro_f1"):
                out[f"kd_gain_{name}{sfx}{tail}"] = (out[f"student_{name}_with_kd{sfx}{tail}"]
                                                     - out[f"student_{name}_without_kd{sfx}{tail}"])
    return out, teacher_val_pred


def draw_plots(cfg: Config, folder: Path, trials: list[dict[str, Any]], data: Dataset, student: str, m: Metrics,
               seed: int, teacher_pred: torch.Tensor, student_pred: torch.Tensor,
               front: list[str] = ()) -> dict[str, Path]:
    """The search's plots (when there is a search) and the KD student's confusion matrix and sample predictions."""
    from ..search import plots

    written = {}
    if trials:
        metric = cfg.search.metric
        written["learning_curves"] = plots.learning_curves(trials, metric, cfg.search.resolved_mode,
                                                           folder / "learning_curves.png", TOP_TRIALS)
        written["metric_vs_size"] = plots.metric_vs_size(trials, metric, cfg.student.max_size_mb,
                                                         folder / "metric_vs_size.png", frozenset(front))
        searched = [k for k in trials[0]["config"] if len({str(t["config"].get(k)) for t in trials}) > 1]
        written["parallel_coordinates"] = plots.parallel_coordinates(trials, searched or list(trials[0]["config"]),
                                                                     metric, folder / "parallel_coordinates.png")
    title = f"{student} with KD, val (seed {seed})"
    written["confusion_matrix"] = plots.confusion(m.confusion, data.class_names, title, folder / "confusion_matrix.png")
    written["sample_predictions"] = plots.sample_predictions(data.val.x, data.val.y, teacher_pred, student_pred,
                                                             data.class_names, folder / "sample_predictions.png")
    return written

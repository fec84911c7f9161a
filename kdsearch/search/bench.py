"""`kdsearch bench CONFIG`: the figures that say whether the search spends its time well.

(a) teacher forward passes of a search (cached outputs) against what a
    teacher-in-the-loop search would do: Σ over trials of epochs × N;
(b) seconds per epoch of distillation from cached teacher outputs divided by
    seconds per epoch of plain cross-entropy on the same student and views
    (target ≤ 1.05);
(c) search efficiency: Σ trial seconds / (Tuner.fit wall seconds × slots)
    (target ≥ 0.85);
(d) scheduling overhead per trial: (fit wall × slots − Σ trial seconds) / trials.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import ray
import torch

from ..config import Config
from ..core.errors import KdsearchError
from ..distill.distiller import default_hparams, prepare
from ..engine.batches import cached_batches, epoch_generator
from ..engine.loop import train_one_epoch
from ..losses import create_loss, cross_entropy_loss
from ..models.students import create_student, student_spec
from ..teachers.cache import teacher_targets


def epoch_ratio(cfg: Config, prepared, epochs: int = 3) -> dict[str, Any]:
    """(b): the same student, views and optimizer; KD from cached logits vs plain CE, epochs interleaved.

    Timed with the threads a trial gets. On a shared machine epoch times drift by ±15% whichever
    loss runs, so the figure is the median over epochs of KD/CE for adjacent (same-epoch) pairs,
    which share the machine's state; order alternates each epoch.
    """
    torch.set_num_threads(max(1, int(cfg.search.resources_per_trial.cpu)))
    hp = default_hparams(cfg, prepared.pairs)
    data, targets, spec, size = prepared.data, prepared.targets, student_spec(cfg), cfg.data.image_size
    torch.manual_seed(cfg.seed)
    kd_model = create_student(hp.student, data.num_classes, size)
    ce_model = create_student(hp.student, data.num_classes, size)
    ce_model.load_state_dict(kd_model.state_dict())  # both start from the same weights
    models = {"kd": kd_model, "ce": ce_model}
    losses = {"kd": create_loss(hp.loss, alpha=max(hp.alpha, 0.5), temperature=hp.temperature, dkd_beta=hp.dkd_beta),
              "ce": cross_entropy_loss()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=hp.lr) for k, m in models.items()}
    seconds: dict[str, list[float]] = {"kd": [], "ce": []}
    for epoch in range(epochs + 1):  # epoch 0 warms up allocators and kernels; not counted
        for kind in (("kd", "ce") if epoch % 2 else ("ce", "kd")):  # alternate who goes first
            logits = targets.logits if kind == "kd" else None
            batches = cached_batches(targets.views, data.pool_labels(), logits, hp.batch_size, spec, size,
                                     epoch_generator(cfg.seed, epoch))
            stats = train_one_epoch(models[kind], batches, losses[kind], opts[kind])
            if epoch > 0:
                seconds[kind].append(stats.seconds)
    pairs = [k / c for k, c in zip(seconds["kd"], seconds["ce"])]
    return {"student": hp.student, "batch_size": hp.batch_size, "threads": torch.get_num_threads(),
            "kd_epoch_seconds": statistics.median(seconds["kd"]), "ce_epoch_seconds": statistics.median(seconds["ce"]),
            "ratio": statistics.median(pairs), "pair_ratios": pairs, "epochs_timed": epochs}


def run_bench(cfg: Config, device: str = "cpu", epochs: int = 3) -> dict[str, Any]:
    from .tuner import run_search

    if not cfg.teacher.cache:
        raise KdsearchError("teacher.cache false: bench measures the cached teacher outputs; set teacher.cache: true "
                            "(--set teacher.cache=true)")
    bench_cfg = cfg.model_copy(update={"name": f"{cfg.name}-bench-{int(time.time())}"})
    prepared = prepare(cfg, device)
    # (a) what computing the teacher's outputs once costs, counted on a fresh cache folder
    fresh = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": cfg.output_dir / "bench" / "fresh"})})
    once = teacher_targets(fresh, prepared.data, prepared.teacher, device).forward_passes
    ratio = epoch_ratio(cfg, prepared, epochs)
    result = run_search(bench_cfg, device=device)
    slots = min(cfg.search.max_concurrent, int(ray.cluster_resources().get("CPU",
                                                                           1) // cfg.search.resources_per_trial.cpu))
    n_trials = sum(result.trials.values())
    n_train = len(prepared.data.pool_labels())  # labeled and transfer images: what the teacher scores per view
    return {
        "config": cfg.name,
        "train_images": n_train,
        "views": prepared.targets.views.num_views,
        "a_teacher_passes": {
            "computed_once": once,
            "this_search": result.teacher_forward_passes,
            "teacher_in_the_loop": result.trial_epochs * n_train,
            "trials": n_trials,
            "trial_epochs": result.trial_epochs,
        },
        "b_epoch_seconds": ratio,
        "c_search_efficiency": {
            "value": result.trial_seconds / (result.fit_seconds * slots),
            "trial_seconds": result.trial_seconds,
            "fit_wall_seconds": result.fit_seconds,
            "slots": slots,
        },
        "d_overhead_seconds_per_trial": (result.fit_seconds * slots - result.trial_seconds) / max(n_trials, 1),
        "search_wall_seconds": result.wall_seconds,
        "trials": result.trials,
        "best": result.best["metrics"].get(cfg.search.metric) if result.best else None,
        "machine": {"cpus": os.cpu_count(), "device": device, "torch": torch.__version__},
    }

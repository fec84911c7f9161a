"""One student's distillation, epoch by epoch, plus the preparation every run shares.

`prepare` does the once-per-search work (data, size filter, teacher, teacher
outputs); `Distiller` is one student with fixed hyperparameters that advances
an epoch at a time and can checkpoint and resume — `kdsearch train` loops it
directly, the Ray trainable reports after each epoch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel, ConfigDict

from ..config import Config
from ..config.space import split_pair
from ..core.labels import UNLABELED
from ..data.dataset import Dataset, load_dataset, stratified_sample, val_subset
from ..data.transforms import to_input
from ..engine.batches import cached_batches, epoch_generator, live_batches
from ..engine.loop import Metrics, evaluate, recalibrate_bn, train_one_epoch
from ..losses import FeatureHintLoss, class_weights, create_loss
from ..models.deployed import as_format, cpu_name, latency_ms, script_bytes, weights
from ..models.deployed import load as load_shipped
from ..models.quantize import int8_from_qat, qat_model
from ..models.sizes import Deployments, file_bytes, select_deployments
from ..models.students import FeatureStudent, create_student, student_spec
from ..preflight import Plan
from ..teachers import Teachers
from ..teachers.cache import TeacherTargets
from ..teachers.step import teach

log = logging.getLogger("kdsearch")

QAT_LR_SCALE = 0.1  # quantization-aware epochs run at this fraction of the trial's peak lr
BN_SAMPLES = 512  # images for BatchNorm recalibration: enough for stable statistics, ~10% of a digits epoch


class Hparams(BaseModel):
    """One point of the search space: every key of `config.Space`, typed (tests/test_config.py checks that the two
    list the same keys). Values from Tune or a JSON file are validated and coerced here, once."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    student: str
    temperature: float
    alpha: float
    lr: float
    weight_decay: float
    batch_size: int
    class_weight_power: float
    optimizer: str = "adamw"
    feature_weight: float = 0.0
    feature_loss: str = "mse"
    loss: str = "kd"
    """The distillation term D: kd | dist | kd_ls | dkd."""
    dkd_beta: float = 1.0
    teacher_weights: tuple[float, ...] = ()
    """Ensemble member weights for this trial (from teacher_weight_0, 1, ...); () = teacher.weights."""
    precision: str | None = None
    """The format the student ships in; None = student.precision (see `shipped_format`)."""
    int8_qat_epochs: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "Hparams":
        """From a trial's flat config (Tune's, with teacher_weight_0, teacher_weight_1, ..., and student_format
        when the format is searched)."""
        values = split_pair(values)
        members = sorted((k for k in values if k.startswith("teacher_weight_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        weights = tuple(float(values[k]) for k in members) if members else tuple(values.get("teacher_weights", ()))
        return cls.model_validate({**values, "teacher_weights": weights})

    def replace(self, **changes: Any) -> "Hparams":
        return self.model_validate({**self.model_dump(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def shipped_format(cfg: Config, hp: Hparams) -> str:
    """The format a run's student ships in: its own (searched, or search.space.precision's fixed value), else
    student.precision."""
    return hp.precision or cfg.student.precision


@dataclass
class Prepared:
    """What every run of a config shares: built once per search."""

    data: Dataset
    teacher: Teachers
    targets: TeacherTargets | None
    """Cached teacher outputs; None when teacher.cache is false (the teacher runs live)."""
    teacher_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    """The majority-class baseline on val: what a teacher must beat to be worth copying."""
    deployments: Deployments
    """The (student, format) pairs whose shipped file fits the size limit, with their file sizes (the plan's)."""

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return self.deployments.pairs

    @property
    def students(self) -> list[str]:
        """Candidates that fit the size limit in at least one searched format."""
        return self.deployments.students


def default_hparams(cfg: Config, pairs: list[tuple[str, str]]) -> Hparams:
    """Fixed values as given, distributions at their midpoint/first choice; the (student, format) pair that gives,
    when it fits, else the first pair that fits with that student, else the first pair that fits."""
    values = cfg.search.space.fixed()
    fmt = values.get("precision") or cfg.student.precision
    if (values.get("student"), fmt) not in pairs:
        values["student"], fmt = next((p for p in pairs if p[0] == values.get("student")), pairs[0])
    return Hparams.from_mapping({**values, "precision": fmt})


def prepare(cfg: Config, device: torch.device | str, teach_fn: Callable | None = None,
            plan: Plan | None = None) -> Prepared:
    """Data, the students that fit, the teacher and its outputs. `teach_fn(cfg, data, device)` does the teacher's
    part: `teachers.step.teach` by default, or `teachers.worker`'s Ray task. `plan`: the command's preflight, whose
    listing and sizes are used as they are (found here when not given)."""
    data = load_dataset(cfg, plan.sources if plan else None)
    if plan is not None and len(plan.sources.classes.names) == data.num_classes:
        deployments = plan.deployments
    else:  # no plan, or a class the labels name had no readable image: the last layer's size differs
        deployments = select_deployments(cfg, data.num_classes)
    for name, fmt, n in deployments.over:
        log.warning("student %s is %.1f MB in %s, over student.max_size_mb %g: never trained", name, n / 1e6, fmt,
                    cfg.student.max_size_mb)
    for name, reason in deployments.not_int8.items():
        log.warning("student %s is searched without int8: %s", name, reason)
    taught = (teach_fn or teach)(cfg, data, device)
    baseline = taught.baseline
    return Prepared(data, taught.teacher, taught.targets, taught.scores,
                    {"val_accuracy": baseline.accuracy, "val_macro_f1": baseline.macro_f1}, deployments)


class Distiller:
    """One student, one set of hyperparameters, trained an epoch at a time."""

    def __init__(self, cfg: Config, hp: Hparams, prepared: Prepared, device: torch.device | str,
                 seed: int | None = None):
        self.cfg, self.hp, self.device = cfg, hp, torch.device(device)
        self.seed = cfg.seed if seed is None else seed
        """Seeds the student's initialisation and batch order; the split and views stay cfg.seed's."""
        data = prepared.data
        self.data, self.teacher = data, prepared.teacher
        self.spec = student_spec(cfg)
        self.format = shipped_format(cfg, hp)
        known = prepared.deployments.file_bytes.get((hp.student, self.format))  # the plan's: no build in a trial
        self.file_bytes = known if known is not None else \
            file_bytes(hp.student, data.num_classes, cfg.data.image_size, self.format)
        """The shipped file's size as measured on an untrained build; a deployed trial reports its own file's."""
        self.shipped: bytes | None = None
        """The shipped TorchScript file, once `deploy` made it (the last epoch)..."""
        self.weights: dict[str, torch.Tensor] | None = None
        """...and the weights file's contents in the same format."""
        torch.manual_seed(self.seed)
        self.model = create_student(hp.student, data.num_classes, cfg.data.image_size).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every batch has the same shape: tune the kernels once
        weight = class_weights(data.class_counts(), hp.class_weight_power).to(self.device)
        members = torch.tensor(hp.teacher_weights or prepared.teacher.weights, dtype=torch.float32)
        if members.sum() <= 0:  # every searched weight at 0: fall back to equal weights
            members = torch.ones_like(members)
        self.loss = create_loss(hp.loss, alpha=hp.alpha, temperature=hp.temperature, weight=weight,
                                teacher_weights=members.to(self.device), dkd_beta=hp.dkd_beta)
        self.features = hp.feature_weight > 0
        self.trainee = self.model  # what the optimizer trains: the student, plus an adapter for feature hints
        if self.features:
            teacher_dim = (prepared.targets.features.shape[-1] if prepared.targets is not None
                           else sum(m.head.in_features for m in prepared.teacher.members))
            self.trainee = FeatureStudent(self.model, teacher_dim).to(self.device)
            self.loss = FeatureHintLoss(self.loss, hp.feature_weight, hp.feature_loss)
        pool_y = data.pool_labels()
        train_idx = training_indices(pool_y, hp)
        pick = (lambda t: t) if train_idx is None else (lambda t: t[:, train_idx])  # noqa: E731  [V, N, ...]
        self.y = (pool_y if train_idx is None else pool_y[train_idx]).to(self.device)
        self.optimizer = _optimizer(hp, self.trainee)
        steps = -(-len(self.y) // hp.batch_size) * cfg.search.max_epochs
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)
        self.cached = prepared.targets is not None
        if self.cached:  # data on the device once, not per batch
            views = prepared.targets.views
            self.views = (views if train_idx is None else views.take(train_idx)).to(self.device)
            self.logits = pick(prepared.targets.logits).to(self.device)
            self.teacher_features = pick(prepared.targets.features).to(self.device) if self.features else None
        else:
            pool_x = data.pool().x  # live teacher: the pixels themselves (cached runs have them as views)
            self.x = (pool_x if train_idx is None else pool_x[train_idx]).to(self.device)
            self.teacher.to(self.device)  # the live teacher runs next to the student
        # BatchNorm is recalibrated before each evaluation, and int8 calibrated, on a fixed, class-stratified
        # sample of the student's training images (transfer images as one more stratum), unaugmented, as val and
        # deployment see them: the same images for every trial of a search.
        bn_idx = stratified_sample(pool_y, BN_SAMPLES, cfg.seed)
        bn = prepared.targets.views.x[bn_idx] if self.cached else pool_x[bn_idx]
        self._bn_images = bn.to(self.device)  # uint8: a quarter of the float inputs' memory (300 MB at 224 px)
        self.rung_val = val_subset(data, cfg.search.rung_val_size, cfg.seed)
        self.epoch = 0

    def bn_inputs(self):
        """Model inputs for BatchNorm recalibration, made a batch at a time."""
        size, bn = self.cfg.data.image_size, self._bn_images
        return (to_input(bn[i:i + 128], self.spec, size) for i in range(0, len(bn), 128))

    def _batches(self, epoch: int | None = None):
        gen = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        bs, size = self.hp.batch_size, self.cfg.data.image_size
        if self.cached:
            return cached_batches(self.views, self.y, self.logits, bs, self.spec, size, gen, self.teacher_features)
        if self.features:
            live = lambda xb: self.teacher.outputs(xb, features=True)  # noqa: E731
        else:
            live = (lambda xb: self.teacher.outputs(xb)[0]) if self.hp.alpha > 0 else None
        return live_batches(self.x, self.y, bs, self.cfg.data.augment, self.spec, size, gen, teacher=live)

    def run_epoch(self, full: bool | None = None) -> dict[str, Any]:
        """Train one epoch, evaluate on val; returns the metrics the search reports.

        `full`: score the whole val split rather than the rung subset; default: on the last epoch (max_epochs)."""
        stats = train_one_epoch(self.trainee, self._batches(), self.loss, self.optimizer, self.scheduler)
        start = time.perf_counter()
        recalibrate_bn(self.model, self.bn_inputs())
        full = self.epoch + 1 >= self.cfg.search.max_epochs if full is None else full
        val = self.data.val
        x, y = (val.x, val.y) if full or self.rung_val is None else (val.x[self.rung_val], val.y[self.rung_val])
        m = evaluate(self.model, x, y, self.spec, self.cfg.data.image_size, self.data.num_classes, self.device)
        self.epoch += 1
        diverged = not (math.isfinite(stats.train_loss) and math.isfinite(m.loss))
        if diverged:
            log.warning("the student diverged at epoch %d (train_loss %s, val_loss %s): lower lr or use adamw",
                        self.epoch, stats.train_loss, m.loss)
        out = {
            "epoch": self.epoch,
            "train_loss": stats.train_loss,
            "val_loss": m.loss,
            "val_accuracy": m.accuracy,
            "val_macro_f1": m.macro_f1,
            "val_per_class_f1": m.per_class_f1,
            "val_confusion": m.confusion,
            "val_full": len(y) == len(val.y),
            "val_images": len(y),
            "val_split_images": len(val.y),
            "epoch_seconds": stats.seconds,
            "eval_seconds": time.perf_counter() - start,  # includes BatchNorm recalibration
            "size_mb": self.file_bytes / 1e6,
            "format": self.format,
            "scored": "float",  # the float model; the last epoch's figures are the shipped file's (`deploy`)
            "diverged": diverged,  # NaN or infinite loss: the run stops here and is never the best
        }
        if full and not diverged:
            out.update(self.deploy(float_metrics=m))
        return out

    def deploy(self, float_metrics: Metrics | None = None) -> dict[str, Any]:
        """The student as the file that ships, in its format (int8: calibrated on the BatchNorm sample, after
        `int8_qat_epochs` of quantization-aware training when set), scored on the whole val split on the CPU and
        timed there. Its figures replace the float model's val_* (kept as val_*_float); `self.shipped` holds the
        file."""
        start = time.perf_counter()
        size, k, val = self.cfg.data.image_size, self.data.num_classes, self.data.val
        if self.format == "int8" and self.hp.int8_qat_epochs > 0:
            deployed = int8_from_qat(self._quantization_aware())
        else:
            deployed = as_format(self.model, self.hp.student, self.format, k, self.bn_inputs())
        self.weights = weights(self.model, deployed, self.format)
        self.shipped = script_bytes(deployed, size)
        scripted = load_shipped(self.shipped)
        m = evaluate(scripted, val.x, val.y, self.spec, size, k, "cpu")
        out = {"val_loss": m.loss, "val_accuracy": m.accuracy, "val_macro_f1": m.macro_f1,
               "val_per_class_f1": m.per_class_f1, "val_confusion": m.confusion, "val_full": True,
               "val_images": len(val.y), "val_split_images": len(val.y), "size_mb": len(self.shipped) / 1e6,
               "scored": f"{self.format} file",
               "latency_ms": latency_ms(scripted, size), "cpu": cpu_name()}
        if float_metrics is None:
            float_metrics = evaluate(self.model, val.x, val.y, self.spec, size, k, self.device)
        out.update({"val_loss_float": float_metrics.loss, "val_accuracy_float": float_metrics.accuracy,
                    "val_macro_f1_float": float_metrics.macro_f1, "deploy_seconds": time.perf_counter() - start})
        return out

    def _quantization_aware(self) -> torch.nn.Module:
        """int8_qat_epochs more epochs of the same loss and teacher on the fake-quantized student, at a tenth of
        the peak lr (the float student has converged; QAT only adapts it to int8's rounding)."""
        model = qat_model(self.model, self.hp.student, self.data.num_classes).to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.hp.lr * QAT_LR_SCALE,
                                      weight_decay=self.hp.weight_decay)
        loss = self.loss.loss if self.features else self.loss  # the student's logits only: no adapter here

        def logits_only(batches):
            for x, y, teacher in batches:
                yield x, y, teacher[0] if isinstance(teacher, tuple) else teacher

        for i in range(self.hp.int8_qat_epochs):
            train_one_epoch(model, logits_only(self._batches(epoch=self.epoch + i)), loss, optimizer)
        return model

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": self.epoch}
        if self.features:
            state["adapter"] = self.trainee.adapter.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.features:
            self.trainee.adapter.load_state_dict(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])


def training_indices(pool_y: torch.Tensor, hp: Hparams) -> torch.Tensor | None:
    """The pool images a student with `hp` trains on: all of them (None), or, with alpha = 0 and no feature hints,
    the labeled ones only, since a transfer image then carries no signal at all."""
    if hp.alpha != 0 or hp.feature_weight != 0:
        return None
    idx = (pool_y != UNLABELED).nonzero().flatten()
    return None if len(idx) == len(pool_y) else idx


def trial_student(cfg: Config, hp: Hparams, state_file: Path, num_classes: int) -> torch.nn.Module:
    """A trial's student as its last checkpoint saved it (BatchNorm statistics recalibrated, as it was scored),
    on the CPU in eval mode."""
    state = torch.load(state_file, weights_only=True, map_location="cpu")
    model = create_student(hp.student, num_classes, cfg.data.image_size)
    model.load_state_dict(state["model"])
    return model.eval()


def _optimizer(hp: Hparams, model: torch.nn.Module) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)


def train_student(cfg: Config, hp: Hparams, prepared: Prepared, device, epochs: int | None = None,
                  on_epoch: Callable[[dict[str, Any]], None] | None = None,
                  seed: int | None = None) -> tuple[Distiller, list[dict[str, Any]]]:
    """Run `epochs` (default search.max_epochs) epochs; returns the distiller and per-epoch metrics."""
    d = Distiller(cfg, hp, prepared, device, seed)
    history, epochs = [], epochs or cfg.search.max_epochs
    for epoch in range(epochs):
        history.append(d.run_epoch(full=epoch == epochs - 1))
        if on_epoch:
            on_epoch(history[-1])
        if history[-1]["diverged"]:
            break
    return d, history

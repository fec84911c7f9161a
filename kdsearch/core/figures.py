"""One figure type for every result kdsearch shows or logs, and the comparison rules that read it.

A number loses its meaning when it loses where it came from: a 1-epoch float score read as a finished int8 file's,
a ResNet-34 control set against a ResNet-18 KD trial. `Figure` carries the number with its provenance (metric,
split and images scored, the model scored: the shipped file in format F or the float model, epochs done of the
maximum, how the trial ended, and the trial's student, format and lr), and its `text` says all of it. The rules
below only compare figures whose provenance matches on what they compare:

- `best`: finished figures only (all epochs ran and the last epoch scored the shipped file on the whole split).
  When no trial finished (a time budget cut them all), `best_unfinished` ranks the trials that ran the most epochs
  among themselves, and the figure says how far they got.
- `kd_added`: the no-KD control (alpha 0) against the KD trial that differs from it in alpha (and feature hints)
  alone, both finished: the same student, format, lr and epochs. No matched finished pair: no gain, and the
  reason.

"Finished" means `epochs >= max_epochs`; a whole val split smaller than `search.rung_val_size` does not make an
epoch before the last a finished trial's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .points import same_value, split_pair
from .results import ended

NOT_KD_KEYS = ("alpha", "feature_weight")
"""What a no-KD control changes in its matched KD trial's configuration (tune_space.start_points makes the pair)."""
KD_MATCH = ("student", "format", "lr", "epochs", "model", "images")
"""What a KD-added comparison holds equal, beyond the configuration match (the property tests check each)."""


@dataclass(frozen=True)
class Figure:
    """A result as shown or logged, with where it comes from."""

    metric: str
    value: float
    images: int
    """Images it was scored on."""
    split_images: int
    """Images in the whole split."""
    whole: bool
    """Scored on every image of its split (else on the rung subset), as the trial reported it (`val_full`)."""
    model: str
    """What was scored: "<format> file" (the shipped TorchScript file) or "float model"."""
    epochs: int
    max_epochs: int
    ending: str
    """completed | stopped_early | budget_cut | diverged | running (results.ENDINGS)."""
    split: str = "val"
    trial: str | None = None
    student: str | None = None
    format: str | None = None
    lr: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def of_result(cls, result: Mapping[str, Any], metric: str, max_epochs: int, *, trial: str | None = None,
                  config: Mapping[str, Any] | None = None, precision: str = "fp32", cut: bool = False,
                  running: bool = False) -> "Figure":
        """The figure a trial's reported result holds for `metric`. `precision`: student.precision, the format of a
        trial whose config names none; `cut`: the time budget stopped it; `running`: it has not ended yet."""
        point = split_pair(dict(config or {}))
        images = int(result.get("val_images") or 0)
        whole = bool(result.get("val_full", True))  # results from before the flag scored the whole split
        split_images = int(result.get("val_split_images") or (images if whole else 0))
        scored = str(result.get("scored") or "float")
        value = result.get(metric)
        return cls(metric=metric, value=float(value) if isinstance(value, (int, float)) else math.nan,
                   images=images, split_images=max(split_images, images), whole=whole, model=_model(scored),
                   epochs=int(result.get("training_iteration", result.get("epoch", 0)) or 0), max_epochs=max_epochs,
                   ending="running" if running else ended(dict(result), max_epochs, cut=cut), trial=trial,
                   student=point.get("student"), format=str(point.get("precision") or precision),
                   lr=float(point["lr"]) if isinstance(point.get("lr"), (int, float)) else None, config=point)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Figure":
        """The inverse of `as_dict` (a figure kept in a JSON file: rescored.json, report.json, a model card)."""
        return cls(**{k: d[k] for k in ("metric", "value", "images", "split_images", "model", "epochs", "max_epochs",
                                        "split", "trial", "student", "format", "lr")}, whole=d["whole_split"],
                   ending=d["ended"])

    @property
    def shipped(self) -> bool:
        """Scored as the file that ships, not the float model."""
        return self.model.endswith(" file")

    @property
    def finished(self) -> bool:
        """All epochs ran, the last one scored the shipped file on the whole split, nothing diverged (`ending`
        completed: results.ended, the rule results.finished reads too)."""
        return self.ending == "completed" and self.whole and self.shipped and math.isfinite(self.value)

    @property
    def rankable(self) -> bool:
        return math.isfinite(self.value) and self.ending != "diverged"

    def where(self) -> str:
        """Where the number comes from, in words: model, images, epochs and how the trial ended."""
        of = f" of {self.split_images}" if self.split_images > self.images else ""  # a result from before the count
        images = (f"whole {self.split} split, {self.images} images" if self.whole
                  else f"rung subset: {self.images}{of} {self.split} images")
        epochs = f"{self.epochs} of {self.max_epochs} epochs"
        if self.ending == "stopped_early":
            epochs = f"stopped by ASHA after {epochs}"
        elif self.ending == "budget_cut":
            epochs = f"cut by the time budget after {epochs}"
        elif self.ending in ("running", "diverged"):
            epochs = f"{self.ending}, {epochs}"
        return f"{self.model}, {images}, {epochs}"

    def text(self, digits: int = 4) -> str:
        """`metric value (where)`: how every figure is shown."""
        return f"{self.metric} {self.value:.{digits}f} ({self.where()})"

    def as_dict(self) -> dict[str, Any]:
        """The provenance as plain fields (model card, report.json, MLflow tags)."""
        return {"metric": self.metric, "value": self.value, "split": self.split, "images": self.images,
                "split_images": self.split_images, "whole_split": self.whole, "model": self.model,
                "epochs": self.epochs, "max_epochs": self.max_epochs, "ended": self.ending,
                "finished": self.finished, "trial": self.trial, "student": self.student, "format": self.format,
                "lr": self.lr}


def _model(scored: str) -> str:
    return scored if scored.endswith(" file") else "float model"


def _sign(mode: str) -> float:
    return -1.0 if mode == "max" else 1.0


def _ranked(figures: list[Figure], mode: str, size: Mapping[str, float] | None = None) -> list[Figure]:
    """Best first on the value; ties go to the smaller shipped file (`size`: trial -> MB), then keep the order."""
    size = size or {}
    return sorted(figures, key=lambda f: (_sign(mode) * f.value, size.get(f.trial or "", math.inf)))


def best(figures: Iterable[Figure], mode: str, size: Mapping[str, float] | None = None) -> Figure | None:
    """The best finished figure (all epochs, the shipped file, the whole split); None when no trial finished."""
    done = [f for f in figures if f.finished]
    return _ranked(done, mode, size)[0] if done else None


def best_unfinished(figures: Iterable[Figure], mode: str,
                    size: Mapping[str, float] | None = None) -> Figure | None:
    """When no trial finished: the best of the trials that ran the most epochs, compared only with each other (a
    3-epoch score is not ranked against a 1-epoch one; within a search an epoch before the last is scored alike for
    every trial: the float model on the same images); None without any."""
    pool = [f for f in figures if f.rankable and f.ending != "running"]
    if not pool:
        return None
    most = max(f.epochs for f in pool)
    return _ranked([f for f in pool if f.epochs == most], mode, size)[0]


def chosen(figures: Iterable[Figure], mode: str, size: Mapping[str, float] | None = None) -> Figure | None:
    """What a search's result is: its best finished figure, else its best unfinished one (which says so)."""
    figures = list(figures)
    return best(figures, mode, size) or best_unfinished(figures, mode, size)


def comparable(a: Figure, b: Figure, on: Iterable[str] = KD_MATCH) -> bool:
    """The two figures agree on every provenance field in `on` and measure the same metric on the same split."""
    return a.metric == b.metric and a.split == b.split and all(getattr(a, k) == getattr(b, k) for k in on)


def _same_point(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = NOT_KD_KEYS) -> bool:
    return all(same_value(a.get(k), b.get(k)) for k in (set(a) | set(b)) - set(ignore))


def _alpha(f: Figure) -> float:
    return float(f.config.get("alpha", 1.0))


@dataclass(frozen=True)
class KdAdded:
    """What distillation added inside one search: a no-KD control against its matched KD trial."""

    control: Figure
    kd: Figure | None
    """The matched KD trial (same configuration but alpha and feature hints); None when there is none."""
    gain: float | None
    """kd - control in the metric's better direction; None unless both finished."""
    why: str = ""
    """Why no gain is claimed (gain None)."""

    def as_dict(self) -> dict[str, Any]:
        return {"gain": self.gain, "why": self.why or None, "control": self.control.as_dict(),
                "kd": self.kd.as_dict() if self.kd else None,
                "control_trial": self.control.trial, "kd_trial": self.kd.trial if self.kd else None}

    def line(self) -> str:
        """The summary's sentence."""
        c = self.control
        control = f"no-KD control (alpha 0) {c.trial} {c.text()}"
        if self.gain is None:
            kd = f"; matched KD trial {self.kd.trial} {self.kd.text()}" if self.kd is not None else ""
            return f"KD added: no gain claimed, {self.why}: {control}{kd}"
        lr = f" at lr {c.lr:g}" if c.lr is not None else ""
        return (f"KD added {self.gain:+.4f} {c.metric} in this search, {c.student} {c.format}{lr}: KD trial "
                f"{self.kd.trial} (alpha {_alpha(self.kd):g}) {self.kd.text()} against {control}")


def kd_added(figures: Iterable[Figure], mode: str) -> KdAdded | None:
    """The no-KD control (alpha 0) against its matched KD trial, both finished; None without a control. With several
    controls, the first with a matched finished pair (else the first control, with why there is no gain)."""
    figures = [f for f in figures if f.ending != "running"]
    controls = [f for f in figures if _alpha(f) == 0 and not float(f.config.get("feature_weight", 0) or 0)]
    if not controls:
        return None
    results = []
    for c in controls:
        kd = [f for f in figures if _alpha(f) > 0 and _same_point(f.config, c.config)]
        match = next((k for k in kd if k.finished), kd[0] if kd else None)
        if match is None:
            results.append(KdAdded(c, None, None, "no KD trial shares the control's student, format, lr and "
                                                  "other settings"))
        elif not (c.finished and match.finished):
            late = [f"{f.trial} {f.where()}" for f in (c, match) if not f.finished]
            results.append(KdAdded(c, match, None, "the matched pair did not both finish (" + "; ".join(late) + ")"))
        elif not comparable(c, match):
            results.append(KdAdded(c, match, None, "the matched pair was not scored alike"))
        else:
            results.append(KdAdded(c, match, -_sign(mode) * (match.value - c.value)))
    return next((r for r in results if r.gain is not None), results[0])

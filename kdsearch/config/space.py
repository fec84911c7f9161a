"""The search-space language of the YAML: a distribution (`{uniform: [lo, hi]}`, ...) or a fixed value per
hyperparameter, and `Space`, the hyperparameters kdsearch searches, with their valid ranges.

`tune_space.py` turns a `Space` into Ray Tune domains; `distill.Hparams` is one point of it.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from ..core.points import PAIR_KEY, split_pair  # noqa: F401  (read here by config's users)

Scalar = Union[bool, int, float, str]


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


# --------------------------------------------------------------------------- search space


class Dist(ConfigModel):
    """A distribution to search over: exactly one of `uniform`, `loguniform`, `choice`, `int`."""

    uniform: tuple[float, float] | None = None
    """[low, high]: any real number between, uniformly."""
    loguniform: tuple[float, float] | None = None
    """[low, high], low > 0: uniform in log space (learning rates, weight decay)."""
    choice: list[Scalar] | None = None
    """A list of values, one picked per trial."""
    int_: tuple[int, int] | None = Field(None, alias="int")
    """[low, high]: an integer between, inclusive."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "Dist":
        set_ = [k for k in ("uniform", "loguniform", "choice", "int_") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("give exactly one of uniform, loguniform, choice, int (e.g. {uniform: [0.0, 1.0]})")
        if self.choice is not None and not self.choice:
            raise ValueError("choice is empty; list at least one value")
        for name in ("uniform", "loguniform", "int_"):
            lo_hi = getattr(self, name)
            if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"low {lo_hi[0]} must be below high {lo_hi[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "choice", "int") if self._get(k) is not None)

    @property
    def args(self) -> Any:
        return self._get(self.kind)

    def _get(self, kind: str) -> Any:
        return getattr(self, "int_" if kind == "int" else kind)

    def fixed_point(self) -> Scalar:
        """The value a single run (`kdsearch train`) uses: midpoint, geometric midpoint, or first choice."""
        if self.uniform:
            return (self.uniform[0] + self.uniform[1]) / 2
        if self.loguniform:
            return math.sqrt(self.loguniform[0] * self.loguniform[1])
        if self.int_:
            return (self.int_[0] + self.int_[1]) // 2
        return self.choice[0]

    def values_to_check(self) -> list[Scalar]:
        """The values whose validity bounds the whole distribution (endpoints or every choice)."""
        return list(self.choice) if self.choice is not None else list(self.args)


def _param_tag(v: Any) -> str:
    return "dist" if isinstance(v, (dict, Dist)) else "fixed"


Param = Annotated[
    Union[Annotated[Dist, Tag("dist")], Annotated[Scalar, Tag("fixed")]],
    Discriminator(_param_tag),
]
"""A search-space entry: a distribution, or a fixed value (`batch_size: 64`)."""


def _check_param(v: Param, *, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False,
                 integer: bool = False) -> Param:
    values = v.values_to_check() if isinstance(v, Dist) else [v]
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"{x!r} is not a number")
        if integer and (not float(x).is_integer()):
            raise ValueError(f"{x!r} is not an integer")
        if x < lo or x > hi or (lo_open and x == lo):
            left = "(" if lo_open else "["
            raise ValueError(f"{x} is outside {left}{lo:g}, {hi:g}]; choose values in that range")
    return v


# Valid values of the numeric space keys.
_SPACE_BOUNDS = {
    "temperature": dict(lo=0.0, lo_open=True),
    "alpha": dict(lo=0.0, hi=1.0),
    "lr": dict(lo=0.0, lo_open=True),
    "weight_decay": dict(lo=0.0),
    "batch_size": dict(lo=1, integer=True),
    "class_weight_power": dict(lo=0.0),
    "feature_weight": dict(lo=0.0),
    "dkd_beta": dict(lo=0.0, lo_open=True),
    "int8_qat_epochs": dict(lo=0, integer=True),
}

FORMATS = ("fp32", "fp16", "int8")
"""The formats a student ships in (its TorchScript file and weights): float32, float16, or int8 (static quantization,
kdsearch.quantize)."""

FEATURE_LOSSES = ("mse", "cosine")


class Space(ConfigModel):
    """What Optuna searches. Every key is a distribution or a fixed value."""

    temperature: Param = Dist(uniform=(1.0, 8.0))
    """Softmax temperature T of the distillation term. 1-8 spans sharp to very soft targets (Hinton et al. used
    2-20)."""
    alpha: Param = Dist(uniform=(0.0, 1.0))
    """Weight of the distillation term; 0 = the student without KD (the baseline)."""
    lr: Param = Dist(loguniform=(1.0e-4, 1.0e-1))
    """Peak learning rate (cosine-decayed over max_epochs). Log-uniform: good values span decades."""
    weight_decay: Param = Dist(loguniform=(1.0e-5, 1.0e-3))
    """Decoupled weight decay (AdamW) or L2 (SGD)."""
    batch_size: Param = Dist(choice=[32, 64, 128])
    """Mini-batch size; small sets favour small batches (more steps per epoch)."""
    class_weight_power: Param = Dist(uniform=(0.0, 1.0))
    """Cross-entropy class weights w_c ∝ (1/n_c)^power: 0 = unweighted, 1 = balanced."""
    optimizer: Param = "adamw"
    """adamw | sgd (momentum 0.9, Nesterov). AdamW is forgiving for students trained from scratch."""
    student: Param | None = None
    """Student architecture; unset = a choice over student.candidates that fit max_size_mb."""
    feature_weight: Param = 0.0
    """Weight of the FitNets-style feature term (teacher's penultimate features vs a learned linear map of the
    student's); 0 = off."""
    feature_loss: Param = "mse"
    """mse | cosine: how the mapped student features are compared with the teacher's."""
    loss: Param = "kd"
    """The distillation term D (kd | dist | kd_ls | dkd), weighed by alpha against CE_w. kd is Hinton's, the common
    baseline."""
    dkd_beta: Param = 1.0
    """dkd only: weight of the non-target-class term (Zhao et al. use 0.5-8 depending on the pair); 1 = KD's balance."""
    teacher_weights: list[Param] | None = None
    """Ensemble teachers only: one weight per member (normalised to sum 1); unset = teacher.weights."""
    precision: Param | None = None
    """The format the student ships in: fp32 | fp16 | int8, or a choice over them (the format is then searched with
    the student, as pairs that fit student.max_size_mb); unset = student.precision. A trial's last epoch scores the
    file in this format."""
    int8_qat_epochs: Param = 0
    """int8 only: epochs of quantization-aware fine-tuning after the float epochs, the teacher still teaching (0 =
    post-training quantization only)."""

    @field_validator(*_SPACE_BOUNDS, mode="after")
    @classmethod
    def _in_bounds(cls, v: Param, info) -> Param:
        return _check_param(v, **_SPACE_BOUNDS[info.field_name])

    @field_validator("optimizer", "feature_loss", "loss", "precision", mode="after")
    @classmethod
    def _known_name(cls, v: Param, info) -> Param:
        from ..losses import list_losses  # the registry pulls in torch; import late

        if v is None:
            return v
        valid = {"optimizer": OPTIMIZERS, "feature_loss": FEATURE_LOSSES, "loss": list_losses(),
                 "precision": FORMATS}[info.field_name]
        for x in v.values_to_check() if isinstance(v, Dist) else [v]:
            if x not in valid:
                raise ValueError(f"unknown {info.field_name} {x!r}; valid: {', '.join(valid)}")
        return v

    @field_validator("teacher_weights", mode="after")
    @classmethod
    def _weights_in_bounds(cls, v: list[Param] | None) -> list[Param] | None:
        for w in v or []:
            _check_param(w, lo=0.0)
        return v

    @property
    def may_use_features(self) -> bool:
        """Whether some trial can have feature_weight > 0 (then teacher features are cached too)."""
        v = self.feature_weight
        return any(x > 0 for x in v.values_to_check()) if isinstance(v, Dist) else v > 0

    @field_validator("student", mode="after")
    @classmethod
    def _known_student(cls, v: Param | None) -> Param | None:
        if v is not None:
            for x in v.values_to_check() if isinstance(v, Dist) else [v]:
                check_student_name(x)
        return v

    def fixed(self) -> dict[str, Scalar]:
        """One value per key: fixed values as given, distributions at their midpoint/first choice."""
        out = {}
        for name, v in self.entries().items():
            out[name] = v.fixed_point() if isinstance(v, Dist) else v
        return out

    def entries(self) -> dict[str, Param]:
        """Every set key as a flat name -> Param map; teacher_weights become teacher_weight_0, teacher_weight_1, ..."""
        out = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if name == "teacher_weights":
                out.update({f"teacher_weight_{i}": w for i, w in enumerate(v or [])})
            elif v is not None:
                out[name] = v
        return out


OPTIMIZERS = ("adamw", "sgd")


def check_student_name(name: Any) -> None:
    from ..models.students import list_students  # the registry pulls in torch; import late

    if name not in list_students():
        close = difflib.get_close_matches(str(name), list_students(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown student {name!r}; {hint}valid: {', '.join(list_students())}")

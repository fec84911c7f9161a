"""The config: pydantic models for the contract's YAML, validated once, here.

Below this module code receives typed objects, never dicts. Each field's
docstring is its meaning and the reason for its default; they also become the
descriptions in the JSON Schema (`kdsearch validate --schema`).
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import KdsearchError

# The metrics a search can optimise, each with the direction that is "better".
# Defined once: ASHA, Optuna, export and report all read it from here.
METRIC_MODES: dict[str, str] = {"val_macro_f1": "max", "val_accuracy": "max", "val_loss": "min"}

Scalar = Union[bool, int, float, str]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


# --------------------------------------------------------------------------- search space


class Dist(_Model):
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
}

FEATURE_LOSSES = ("mse", "cosine")


class Space(_Model):
    """What Optuna searches. Every key is a distribution or a fixed value."""

    temperature: Param = Dist(uniform=(1.0, 8.0))
    """Softmax temperature T of the distillation term. 1-8 spans sharp to very soft targets (Hinton et al. used 2-20)."""
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
    """Weight of the FitNets-style feature term (teacher's penultimate features vs a learned linear map of the student's); 0 = off."""
    feature_loss: Param = "mse"
    """mse | cosine: how the mapped student features are compared with the teacher's."""
    loss: Param = "kd"
    """The distillation term D (kd | dist | kd_ls | dkd), weighed by alpha against CE_w. kd is Hinton's, the common baseline."""
    dkd_beta: Param = 1.0
    """dkd only: weight of the non-target-class term (Zhao et al. use 0.5-8 depending on the pair); 1 = KD's balance."""
    teacher_weights: list[Param] | None = None
    """Ensemble teachers only: one weight per member (normalised to sum 1); unset = teacher.weights."""

    @field_validator(*_SPACE_BOUNDS, mode="after")
    @classmethod
    def _in_bounds(cls, v: Param, info) -> Param:
        return _check_param(v, **_SPACE_BOUNDS[info.field_name])

    @field_validator("optimizer", "feature_loss", "loss", mode="after")
    @classmethod
    def _known_name(cls, v: Param, info) -> Param:
        from .losses import list_losses  # the registry pulls in torch; import late

        valid = {"optimizer": OPTIMIZERS, "feature_loss": FEATURE_LOSSES, "loss": list_losses()}[info.field_name]
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
                _check_student_name(x)
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


def _check_student_name(name: Any) -> None:
    from .students import list_students  # the registry pulls in torch; import late

    if name not in list_students():
        close = difflib.get_close_matches(str(name), list_students(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown student {name!r}; {hint}valid: {', '.join(list_students())}")


# --------------------------------------------------------------------------- sections


class DataConfig(_Model):
    """Where the images come from and how they are shaped."""

    source: Literal["image_folder", "csv", "npz", "idx", "cifar10", "digits"] = "digits"
    """digits needs nothing on disk (scikit-learn ships it), so it is the default."""
    root: Path | None = None
    """Folder holding the data (image_folder: one subfolder per class). Relative paths are from the working directory."""
    manifest: str | None = None
    """csv only: a file with columns path,label; paths relative to root."""
    class_names: list[str] | None = None
    """Names for label ids 0..K-1 where the source has none (npz, idx, cifar10 give numbers)."""
    image_size: int = Field(224, ge=8, le=1024)
    """Student input size; images are square-resized once and cached. 224 is what ImageNet-style students expect."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the training images held out for validation (stratified, seeded) when the source has no val split."""
    augment: Literal["none", "standard", "strong"] = "standard"
    """none | standard (shift + flip) | strong (standard + colour jitter + erasing). Standard is a safe default for natural and medical images."""
    label_budget: int | None = Field(None, ge=1)
    """Labeled training images per class the student gets (seeded, stratified); the rest of the train split become
    transfer images (teacher outputs, no label). null = every label. A teacher trained here still sees every label."""
    unlabeled: "UnlabeledConfig | None" = None
    """Extra images without labels, used as transfer images: the teacher labels them softly for the student."""

    @model_validator(mode="after")
    def _needs_root(self) -> "DataConfig":
        if self.source != "digits" and self.root is None:
            raise ValueError(f"data.source {self.source} needs data.root: the folder that holds the data")
        if self.source == "csv" and not self.manifest:
            raise ValueError("data.source csv needs data.manifest: a CSV with columns path,label")
        return self


class UnlabeledConfig(_Model):
    """Images without labels: a folder (with or without subfolders), a csv with a `path` column, an npz of images,
    or IDX image files. Unreadable files are skipped and named."""

    source: Literal["image_folder", "csv", "npz", "idx"] = "image_folder"
    """image_folder: every image under root, subfolders included; csv: `manifest` with a path column; npz: its
    `images` array (or every *_images array); idx: every *-images-idx3-ubyte[.gz] file under root."""
    root: Path
    """Folder holding the images (npz and idx: the file itself may be named)."""
    manifest: str | None = None
    """csv only: a file with a `path` column (a `label` column, if any, is ignored); paths relative to root."""

    @model_validator(mode="after")
    def _needs_manifest(self) -> "UnlabeledConfig":
        if self.source == "csv" and not self.manifest:
            raise ValueError("data.unlabeled.source csv needs data.unlabeled.manifest: a CSV with a path column")
        return self


DataConfig.model_rebuild()


class InputSpec(_Model):
    """How a model wants its pixels: the same view, preprocessed its own way."""

    size: int | None = Field(None, ge=8, le=2048)
    """Square side in pixels; unset = data.image_size."""
    channels: Literal[1, 3] = 3
    """1 = grayscale, 3 = RGB; images are converted to this."""
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted after scaling to [0, 1]. 0.5 suits models trained from scratch."""
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel std divided by."""


class TeacherResources(_Model):
    """Ray resources of the task that does the teacher's once-per-search work."""

    gpu: float = Field(1.0, ge=0)
    """GPUs the task holds; 1 = a whole GPU for the teacher."""
    cpu: float = Field(1.0, gt=0)
    """CPUs the task holds."""


_DTYPE_DOC = """Precision of the teacher's forward passes (a `train` teacher still trains in float32); float16/bfloat16
    halve memory and roughly halve the time of a big teacher on a GPU. Outputs are cached per dtype."""
_RESOURCES_DOC = """Run the teacher's once-per-search work (training a `train` teacher, computing its cached outputs) as a
    Ray task holding these resources, e.g. {gpu: 1, cpu: 4}: on a cluster whose head has no GPU, a GPU node does it.
    Unset = on a GPU worker ({gpu: 1}) when this machine has no GPU but the Ray cluster has one, else here."""


class _TeacherBase(_Model):
    cache: bool = True
    """Compute the teacher's outputs once and reuse them; false = the teacher runs live on every batch."""
    cache_views: int = Field(1, ge=1, le=64)
    """Seeded augmented views cached per training image; the student trains on exactly these. 1 keeps the cache as small as the data."""
    input: InputSpec | None = None
    """The teacher's own input size/channels/normalisation; unset = the student's."""
    min_val_macro_f1: float | None = Field(None, ge=0.0, le=1.0)
    """Refuse to distil (exit 2, before any student trains) from a teacher whose val macro-F1 is below this; unset =
    only a warning when it is no better than predicting the majority class."""
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description=_DTYPE_DOC)
    resources: TeacherResources | None = Field(None, description=_RESOURCES_DOC)

    @model_validator(mode="after")
    def _resources_need_cache(self):
        if self.resources is not None and not self.cache:
            raise ValueError("resources: a live teacher (cache: false) runs inside each trial on the trial's "
                             "resources; set cache: true or drop resources")
        return self


class TrainTeacher(_TeacherBase):
    """A teacher trained here on the train split, with early stopping on val, cached under output.dir."""

    source: Literal["train"] = "train"
    arch: str = "resnet18"
    """A registry name (`kdsearch list-models`), a timm model name, or `package.module:ClassName`."""
    epochs: int = Field(20, ge=1)
    """Upper bound on teacher epochs; early stopping usually ends sooner."""
    patience: int = Field(5, ge=1)
    """Epochs without a better val accuracy before the teacher stops."""
    lr: float = Field(1.0e-3, gt=0)
    """AdamW learning rate for the teacher: a robust default for training from scratch."""
    batch_size: int = Field(128, ge=1)
    """Teacher mini-batch size."""


class CheckpointTeacher(_TeacherBase):
    """A teacher architecture plus saved weights (a state_dict, loaded with weights_only=True)."""

    source: Literal["checkpoint"]
    arch: str
    """A registry name, a timm model name, or `package.module:ClassName` for your own model."""
    weights: Path
    """The state_dict file (torch.save of model.state_dict())."""
    arch_kwargs: dict[str, Scalar | list[Scalar]] = {}
    """Keyword arguments for `package.module:ClassName` (registry and timm models get num_classes)."""


class TorchscriptTeacher(_TeacherBase):
    """A teacher exported with torch.jit.save; needs no Python class."""

    source: Literal["torchscript"]
    path: Path
    """The TorchScript file."""


class HuggingFaceTeacher(_TeacherBase):
    """A Hugging Face model (hub id or local folder) loaded with `from_pretrained`, used in one of three modes."""

    source: Literal["huggingface"]
    model: str
    """Hub id (google/medsiglip-448) or a local folder written by save_pretrained. Gated models read HF_TOKEN."""
    mode: Literal["classifier", "zero_shot", "linear_probe"]
    """classifier: the model's own head, its labels matched to the class names; zero_shot: image-text
    similarity to one prompt per class (SigLIP/CLIP); linear_probe: logistic regression on frozen image embeddings."""
    revision: str | None = None
    """Hub branch, tag or commit to pin; unset = main."""
    batch_size: int = Field(64, ge=1)
    """Images per teacher forward pass when its outputs are computed."""
    prompt: str = "a photo of {label}"
    """zero_shot: the text for each class; {label} is the class name with _ and - as spaces."""
    prompts: dict[str, str | list[str]] | None = None
    """zero_shot: per-class prompts (several are averaged), overriding `prompt` for the classes listed."""
    label_map: dict[str, str] | None = None
    """classifier: {teacher label: dataset class} where the names differ; unmatched names must be equal."""
    class_weight_power: float = Field(1.0, ge=0.0)
    """linear_probe: class weights (1/n_c)^power of the logistic regression; 1 = balanced, as macro-F1 wants."""

    @field_validator("prompt")
    @classmethod
    def _has_label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("prompt needs a {label} placeholder, e.g. 'a dermatoscopic image of {label}'")
        return v


_MemberConfig = Annotated[Union[TrainTeacher, CheckpointTeacher, TorchscriptTeacher, HuggingFaceTeacher],
                          Field(discriminator="source")]


def _default_source(v: Any) -> Any:
    """A teacher section without `source` is a teacher trained here."""
    return {**v, "source": "train"} if isinstance(v, dict) and "source" not in v else v


class EnsembleTeacher(_Model):
    """Several teachers distilled into one student: the target is their weighted mean probability at T."""

    source: Literal["ensemble"]
    members: list[Annotated[_MemberConfig, BeforeValidator(_default_source)]] = Field(min_length=2)
    """Two or more teachers of any other source, each with its own input preprocessing."""
    weights: list[float] | None = None
    """One weight per member (normalised to sum 1); unset = equal. search.space.teacher_weights searches them."""
    cache: bool = True
    """Compute each member's outputs once and reuse them; false = the members run live on every batch."""
    cache_views: int = Field(1, ge=1, le=64)
    """Seeded augmented views cached per training image, shared by all members."""
    min_val_macro_f1: float | None = Field(None, ge=0.0, le=1.0)
    """Refuse to distil (exit 2) from an ensemble whose combined val macro-F1 is below this; unset = only a warning."""
    resources: TeacherResources | None = Field(None, description=_RESOURCES_DOC)

    @model_validator(mode="after")
    def _consistent(self) -> "EnsembleTeacher":
        if self.weights is not None:
            if len(self.weights) != len(self.members):
                raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members; give one per member")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        for i, m in enumerate(self.members):  # defaults pass, so a dumped config loads again
            if not m.cache or m.cache_views != 1 or m.resources is not None:
                raise ValueError(f"members[{i}] sets cache/cache_views/resources; set them on the ensemble, which "
                                 "computes every member's outputs the same way, in one place")
            if m.min_val_macro_f1 is not None:
                raise ValueError(f"members[{i}] sets min_val_macro_f1; set it on the ensemble, whose combined "
                                 "prediction is what the student learns")
        if self.resources is not None and not self.cache:
            raise ValueError("resources: a live teacher (cache: false) runs inside each trial on the trial's "
                             "resources; set cache: true or drop resources")
        return self

    @property
    def resolved_weights(self) -> tuple[float, ...]:
        w = self.weights or [1.0] * len(self.members)
        return tuple(x / sum(w) for x in w)


# One builder per source in teachers.py (hf_teachers.py for huggingface).
TeacherConfig = Annotated[Union[TrainTeacher, CheckpointTeacher, TorchscriptTeacher, HuggingFaceTeacher,
                                EnsembleTeacher], Field(discriminator="source")]


class StudentConfig(_Model):
    """The student zoo the search draws from, and the size limit."""

    candidates: list[str] = Field(
        ["shufflenet_v2_x1_0", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet8"], min_length=1
    )
    """Architectures the search may pick; those over max_size_mb are dropped before any training."""
    max_size_mb: float = Field(25.0, gt=0)
    """Limit on the exported weights file, in MB = 1,000,000 bytes. 25 MB fits typical edge and mobile budgets."""
    precision: Literal["fp32", "fp16"] = "fp32"
    """Precision the size is counted and the student exported in; fp16 halves the file."""

    @field_validator("candidates", mode="after")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_student_name(name)
        return v


class Resources(_Model):
    """Ray resources one trial holds."""

    cpu: float = Field(1.0, gt=0)
    """CPUs per trial; 1 lets trials run side by side on a laptop."""
    gpu: float = Field(0.0, ge=0)
    """GPUs per trial; fractions (0.25) pack several small students on one GPU."""


class SearchConfig(_Model):
    """Ray Tune + Optuna (TPE) + ASHA settings."""

    num_samples: int = Field(32, ge=1)
    """Trials to run. 32 gives TPE room to learn after its random start-up trials."""
    max_concurrent: int = Field(2, ge=1)
    """Trials running at once; TPE learns less from each when many run blind in parallel."""
    metric: Literal["val_macro_f1", "val_accuracy", "val_loss"] = "val_macro_f1"
    """What ASHA and Optuna optimise. Macro-F1 because medical classes are imbalanced."""
    mode: Literal["max", "min"] | None = None
    """max | min; unset = the metric's own direction (max for F1 and accuracy, min for loss)."""
    max_epochs: int = Field(30, ge=1)
    """Epochs of the longest trial (ASHA's max_t); also the epochs of `kdsearch train`."""
    grace_period: int = Field(3, ge=1)
    """Epochs every trial gets before ASHA may stop it."""
    reduction_factor: float = Field(3.0, ge=2.0)
    """ASHA keeps 1/reduction_factor of the trials at each rung."""
    resources_per_trial: Resources = Resources()
    """Ray resources per trial."""
    time_budget_s: float | None = Field(None, gt=0)
    """Stop starting new trials after this many seconds; null = no limit."""
    rung_val_size: int | None = Field(2000, ge=1)
    """Val images that score the epochs before a trial's last (ASHA's rung decisions, a trained teacher's early
    stopping): a fixed, seeded, class-stratified subset, the same for every trial. Every trial's last epoch, the
    best trial, export, report and MLflow's val_* metrics use the whole val split. 2,000 images estimate an
    accuracy of 0.85 with a standard error of 0.008: enough to rank trials, at a fraction of a large split's
    cost; null = the whole split every epoch (exact rung decisions, slower)."""
    start_points: bool = True
    """Before TPE's random start-up, try the literature's defaults for each loss in the space (KD: T=4, alpha=0.9;
    DIST: tau=1; DKD: T=4, beta=8; logit standardisation: T=2), clipped to the space's ranges, so the first trials
    are already sensible. Enqueued through Optuna (`points_to_evaluate`)."""
    space: Space = Space()
    """The hyperparameters searched."""

    @model_validator(mode="after")
    def _consistent(self) -> "SearchConfig":
        if self.mode is not None and self.mode != METRIC_MODES[self.metric]:
            raise ValueError(f"mode {self.mode} contradicts metric {self.metric} (better is {METRIC_MODES[self.metric]})")
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period {self.grace_period} exceeds max_epochs {self.max_epochs}")
        return self

    @property
    def resolved_mode(self) -> str:
        return METRIC_MODES[self.metric]


class TrackingConfig(_Model):
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI. A local sqlite file needs no server and is what `mlflow ui` opens."""


class OutputConfig(_Model):
    dir: Path | None = None
    """Ray results, the teacher and its cache, exports and reports; unset = runs/<name>."""


class SubmitConfig(_Model):
    """An evaluation server that scores exported students (a course's or a competition's)."""

    url: str = Field(pattern=r"^https?://")
    """The server's base URL; the `course` protocol posts to {url}/submit and polls {url}/submission-status/{token}."""
    token_env: str = Field("KDSEARCH_SUBMIT_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding your token. The token itself never goes in a config, a log or the store."""
    protocol: str = "course"
    """course (built in), or `package.module:Class` for another server's protocol."""
    format: Literal["torchscript", "state_dict"] = "torchscript"
    """What is uploaded: the exported TorchScript student (loads without kdsearch) or its state_dict."""
    min_interval_s: float = Field(900.0, ge=0)
    """The server's rate limit between submissions (the course allows one per 15 minutes)."""
    poll_interval_s: float = Field(30.0, gt=0)
    """Seconds between status checks while a submission is scored."""
    timeout_s: float = Field(1800.0, gt=0)
    """Stop waiting for a verdict after this long; `kdsearch submissions --sync` picks it up later."""
    retries: int = Field(4, ge=0, le=10)
    """Retries after a 5xx answer or a dropped connection, with exponential backoff (1, 2, 4, ... s)."""
    leaderboard_url: str | None = Field(None, pattern=r"^https?://")
    """The server's leaderboard page (an HTML table), for `kdsearch leaderboard`."""


class Config(_Model):
    """A kdsearch experiment."""

    name: str = Field("kdsearch", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Experiment name: the MLflow experiment and the Ray run name."""
    seed: int = 0
    """Seeds the split, the augmented views, Optuna and every trial."""
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TrainTeacher()
    student: StudentConfig = StudentConfig()
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    output: OutputConfig = OutputConfig()
    submit: SubmitConfig | None = None
    """Optional: the evaluation server `kdsearch submit` and `run --submit` upload the best student to."""

    @field_validator("teacher", mode="before")
    @classmethod
    def _default_source(cls, v: Any) -> Any:
        return _default_source(v)

    @model_validator(mode="after")
    def _weights_match_members(self) -> "Config":
        tw = self.search.space.teacher_weights
        if tw is not None:
            if not isinstance(self.teacher, EnsembleTeacher):
                raise ValueError("search.space.teacher_weights needs teacher.source: ensemble")
            if len(tw) != len(self.teacher.members):
                raise ValueError(f"search.space.teacher_weights has {len(tw)} entries for "
                                 f"{len(self.teacher.members)} teacher.members; give one per member")
        return self

    @property
    def output_dir(self) -> Path:
        return self.output.dir if self.output.dir is not None else Path("runs") / self.name


# --------------------------------------------------------------------------- loading


ENV_OVERRIDES = {"MLFLOW_TRACKING_URI": "tracking.uri", "KDSEARCH_OUTPUT_DIR": "output.dir"}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML, apply environment then `--set KEY=VALUE` overrides, validate.

    Precedence: --set > environment > YAML > defaults. Raises KdsearchError naming
    the file and key on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise KdsearchError(f"{path}: config file not found; pass the path of a YAML config (see search_spaces/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KdsearchError(f"{path}: YAML syntax error{where}: {problem}; fix the YAML") from None
    if not isinstance(raw, dict):
        raise KdsearchError(f"{path}: expected a mapping of keys (name:, data:, ...) at the top, got {type(raw).__name__}")
    for env, key in ENV_OVERRIDES.items():
        if os.environ.get(env):
            _set_dotted(raw, key, os.environ[env])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KdsearchError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.num_samples=4")
        try:
            _set_dotted(raw, key.strip(), yaml.safe_load(value) if value else None)
        except yaml.YAMLError:
            _set_dotted(raw, key.strip(), value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise KdsearchError(f"{path}: {format_validation_error(e)}") from None


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise KdsearchError(f"--set {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


# Tags of discriminated unions appear in pydantic's error locations; they are not keys.
_UNION_TAGS: dict[str, Any] = {"dist": Dist, "fixed": None, "train": TrainTeacher, "checkpoint": CheckpointTeacher,
                               "torchscript": TorchscriptTeacher, "huggingface": HuggingFaceTeacher,
                               "ensemble": EnsembleTeacher}


def format_validation_error(e: ValidationError) -> str:
    """The first error as `key: problem; fix`, with the closest valid key for typos."""
    errors = e.errors()
    err = errors[0]
    loc = [str(p) for p in err["loc"]]
    key_parts = [p for p in loc if p not in _UNION_TAGS]
    key = ".".join(key_parts)
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{key}: unknown key; {hint}valid keys here: {', '.join(valid)}{more}"
    if err["type"] == "union_tag_invalid":
        return f"{key}: {msg}{more}"
    if err["type"] == "missing":
        return f"{key}: required key is missing; add it{more}"
    return f"{key}: {msg}{more}" if key else f"{msg}{more}"  # model-level checks name their keys themselves


def _fields_at(loc: list[str]) -> list[str]:
    """Field names of the model that `loc` points into (for 'did you mean')."""
    model: Any = Config
    for part in loc:
        if part.isdigit():  # a list index: the element's tag (or model) follows
            continue
        if part in _UNION_TAGS:
            model = _UNION_TAGS[part]
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        ann = field.annotation
        members = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = members[0] if members else None  # None: a union resolved by the tag that follows
    return [f.alias or name for name, f in model.model_fields.items()] if model is not None else []

"""The config's sections as pydantic models (data, teacher, student, search, tracking, output, submit) and
`Config`, the whole file. Loading, overrides and error messages are in config.py, which re-exports these.

Each field's docstring is its meaning and the reason for its default; they also become the descriptions in the
JSON Schema (`kdsearch validate --schema`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from ..core.results import METRIC_MODES
from ..models.input_spec import InputSpec
from .space import ConfigModel, Dist, Scalar, Space, check_student_name


class DataConfig(ConfigModel):
    """Where the images come from and how they are shaped."""

    source: Literal["image_folder", "csv", "npz", "idx", "cifar10", "digits"] = "digits"
    """digits needs nothing on disk (scikit-learn ships it), so it is the default."""
    root: Path | None = None
    """Folder holding the data (image_folder: one subfolder per class). Relative paths are from the working
    directory."""
    manifest: str | None = None
    """csv only: a file with columns path,label; paths relative to root."""
    class_names: list[str] | None = None
    """Integer labels (npz, idx, cifar10, a csv of numbers): one name per label id, in id order. Text labels (a
    csv of names, an image folder's subfolders): the class order, naming exactly the labels present. Unset:
    integer labels keep their numbers (class i = label i); text labels sort as text."""
    label_map: dict[str, str] | None = None
    """csv only: labels as the manifest writes them -> the label to use ({"Melanoma": melanoma, MEL: melanoma}),
    applied after surrounding spaces are stripped. Labels that differ only by case or inner spacing exit 2 unless
    mapped here, since they would otherwise become two classes of one diagnosis."""
    remap_labels: bool = False
    """Integer label ids that are not 0..K-1 (a gap, or starting at 1) exit 2 unless this is true: they then map
    to consecutive class indices in numeric order (the mapping is shown and exported in labels.json)."""
    image_size: int = Field(224, ge=8, le=1024)
    """Student input size; images are square-resized once and cached. 224 is what ImageNet-style students expect."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the training images held out for validation (stratified, seeded) when the source has no val split."""
    augment: Literal["none", "standard", "strong"] = "standard"
    """none | standard (shift + flip) | strong (standard + colour jitter + erasing). Standard is a safe default for
    natural and medical images."""
    label_budget: int | None = Field(None, ge=1)
    """Labeled training images per class the student gets (seeded, stratified); the rest of the train split become
    transfer images (teacher outputs, no label). null = every label. A teacher trained here still sees every label."""
    unlabeled: "UnlabeledConfig | None" = None
    """Extra images without labels, used as transfer images: the teacher labels them softly for the student."""
    max_image_pixels: int | None = Field(89_478_485, ge=1)
    """An image file declaring more pixels than this is skipped and named, like an unreadable one: a
    decompression bomb (a few KB that claim 60,000 x 60,000 pixels) would otherwise take the machine's memory.
    The default is Pillow's own limit; raise it (or null: no limit) for genuinely huge slides."""

    @model_validator(mode="after")
    def _needs_root(self) -> "DataConfig":
        if self.class_names is not None:
            repeated = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            if repeated:  # two classes of one name would show (and log) one's figures as the other's
                raise ValueError(f"data.class_names names {', '.join(map(repr, repeated))} more than once; give each "
                                 "class its own name")
        if self.label_map is not None and self.source != "csv":
            raise ValueError("data.label_map maps a csv manifest's labels; it needs data.source csv")
        if self.source != "digits" and self.root is None:
            raise ValueError(f"data.source {self.source} needs data.root: the folder that holds the data")
        if self.source == "csv" and not self.manifest:
            raise ValueError("data.source csv needs data.manifest: a CSV with columns path,label")
        return self


class UnlabeledConfig(ConfigModel):
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


class TeacherResources(ConfigModel):
    """Ray resources of the task that does the teacher's once-per-search work."""

    gpu: float = Field(1.0, ge=0)
    """GPUs the task holds; 1 = a whole GPU for the teacher."""
    cpu: float = Field(1.0, gt=0)
    """CPUs the task holds."""


_DTYPE_DOC = """Precision of the teacher's forward passes (a `train` teacher still trains in float32); float16/bfloat16
    halve memory and roughly halve the time of a big teacher on a GPU. Outputs are cached per dtype."""
_RESOURCES_DOC = """Run the teacher's once-per-search work (training a `train` teacher, computing its cached outputs)
    as a Ray task holding these resources, e.g. {gpu: 1, cpu: 4}: on a cluster whose head has no GPU, a GPU node
    does it.
    Unset = on a GPU worker ({gpu: 1}) when this machine has no GPU but the Ray cluster has one, else here."""


_PROBE_LIVE = ("a linear_probe teacher needs cache: true: the images its probe is fitted on get out-of-fold outputs "
               "(cross-fitted), which only the cached outputs carry; a live probe would teach over-confident "
               "in-sample targets")


class _TeacherBase(ConfigModel):
    allow_class_mismatch: bool = False
    """A teacher not trained here whose outputs match the data's classes far better in another order (see
    teachers.step.check_class_order) exits 2 before any student trains; true uses it as it is."""
    cache: bool = True
    """Compute the teacher's outputs once and reuse them; false = the teacher runs live on every batch."""
    cache_views: int = Field(1, ge=1, le=64)
    """Seeded augmented views cached per training image; the student trains on exactly these. 1 keeps the cache as
    small as the data."""
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

    @model_validator(mode="after")
    def _probe_cached(self) -> "HuggingFaceTeacher":
        if self.mode == "linear_probe" and not self.cache:
            raise ValueError(_PROBE_LIVE)
        return self

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


class EnsembleTeacher(ConfigModel):
    """Several teachers distilled into one student: the target is their weighted mean probability at T."""

    source: Literal["ensemble"]
    allow_class_mismatch: bool = False
    """As a single teacher's, for every member."""
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
        if not self.cache and any(getattr(m, "mode", None) == "linear_probe" for m in self.members):
            raise ValueError(_PROBE_LIVE)
        return self

    @property
    def resolved_weights(self) -> tuple[float, ...]:
        w = self.weights or [1.0] * len(self.members)
        return tuple(x / sum(w) for x in w)


# One builder per source, registered in kdsearch/teachers/ (teachers.SOURCES).
TeacherConfig = Annotated[Union[TrainTeacher, CheckpointTeacher, TorchscriptTeacher, HuggingFaceTeacher,
                                EnsembleTeacher], Field(discriminator="source")]


class StudentConfig(ConfigModel):
    """The student zoo the search draws from, and the size limit."""

    candidates: list[str] = Field(
        ["shufflenet_v2_x1_0", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet8"], min_length=1
    )
    """Architectures the search may pick; those over max_size_mb are dropped before any training."""
    max_size_mb: float = Field(25.0, gt=0)
    """Limit on the exported weights file, in MB = 1,000,000 bytes. 25 MB fits typical edge and mobile budgets."""
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    """Format the student ships in, and its size is counted in, unless search.space.precision searches it: fp16
    halves the file, int8 (static quantization; ResNet, ShuffleNetV2 and MobileNetV3 only) quarters it."""

    @field_validator("candidates", mode="after")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            check_student_name(name)
        return v


class Resources(ConfigModel):
    """Ray resources one trial holds."""

    cpu: float = Field(1.0, gt=0)
    """CPUs per trial; 1 lets trials run side by side on a laptop."""
    gpu: float = Field(0.0, ge=0)
    """GPUs per trial; fractions (0.25) pack several small students on one GPU."""


class TpeSettings(ConfigModel):
    """Optuna's TPESampler as kdsearch runs it (search.algorithm: tpe). Measured against Optuna's defaults by
    benchmarks/search_quality.py (docs/measured.md)."""

    startup_trials: int | None = Field(None, ge=1)
    """Finished trials (stopped ones count, the start points included) before TPE models the results; until then
    it samples at random. null = the start points plus one round of parallel trials (search.max_concurrent), at
    least 4: TPE starts learning as soon as every start point and one blind round have reported, not after
    Optuna's default 10, which in a 20-trial search is half the budget."""
    multivariate: bool = True
    """Model the hyperparameters jointly (Optuna's multivariate TPE; its default for one objective) rather than
    each on its own."""
    constant_liar: bool = True
    """Treat trials still running as bad results while sampling, so parallel trials are not drawn at the same
    point (Optuna's default since 5.0)."""


class SearchConfig(ConfigModel):
    """Ray Tune + Optuna (TPE) + ASHA settings."""

    num_samples: int = Field(32, ge=1)
    """Trials to run. 32 gives TPE room to learn after its random start-up trials."""
    algorithm: Literal["tpe", "random"] = "tpe"
    """tpe: Optuna's TPE, start points first (see start_points); random: Ray Tune's random sampling of the space
    (no start points), still with ASHA: the baseline a search is measured against (benchmarks/search_quality.py)."""
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
    max_failures: int = Field(2, ge=0)
    """Times a failed trial is restarted from its last checkpoint before it counts as errored."""
    rung_val_size: int | None = Field(2000, ge=1)
    """Val images that score the epochs before a trial's last (ASHA's rung decisions, a trained teacher's early
    stopping): a fixed, seeded, class-stratified subset, the same for every trial. Every trial's last epoch, the
    best trial, export, report and MLflow's val_* metrics use the whole val split. 2,000 images estimate an
    accuracy of 0.85 with a standard error of 0.008: enough to rank trials, at a fraction of a large split's
    cost; null = the whole split every epoch (exact rung decisions, slower)."""
    tpe: TpeSettings = TpeSettings()
    """TPE's settings (search.algorithm: tpe)."""
    objectives: list[Literal["val_macro_f1", "val_accuracy", "val_loss", "size_mb", "latency_ms"]] | None = \
        Field(None, min_length=2)
    """Optimise several objectives at once (Optuna's multi-objective TPE), each in its own direction (F1 and accuracy
    up; loss, the shipped file's size_mb and CPU latency_ms down), e.g. [val_macro_f1, latency_ms]. The metric
    must be one of them: ASHA keeps stopping trials on it. null = the metric alone."""
    start_points: bool = True
    """Before TPE's random start-up, try the literature's defaults for each loss in the space (KD: T=4, alpha=0.9;
    DIST: tau=1; DKD: T=4, beta=8; logit standardisation: T=2), clipped to the space's ranges, so the first trials
    are already sensible. Enqueued through Optuna (`points_to_evaluate`)."""
    warm_start: Path | None = None
    """An earlier search's output.dir (PATH#STUDY where its optuna.db holds several studies) to start from. When
    its teacher and data fingerprints match (and its metric, objectives and max_epochs), its trials join this
    search's study as they ended and the start points are skipped; otherwise its best configurations are tried
    first. Trials outside this search's space are not used (search/study.py)."""
    space: Space = Space()
    """The hyperparameters searched."""

    @model_validator(mode="after")
    def _consistent(self) -> "SearchConfig":
        if self.mode is not None and self.mode != METRIC_MODES[self.metric]:
            raise ValueError(f"mode {self.mode} contradicts metric {self.metric} (better is "
                             f"{METRIC_MODES[self.metric]})")
        if self.objectives is not None and self.metric not in self.objectives:
            raise ValueError(f"objectives {self.objectives} leave out the metric {self.metric}, which ASHA stops "
                             "trials on; list it among them")
        if self.objectives is not None and len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives {self.objectives} name an objective twice")
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period {self.grace_period} exceeds max_epochs {self.max_epochs}")
        return self

    @property
    def resolved_mode(self) -> str:
        return METRIC_MODES[self.metric]


class TrackingConfig(ConfigModel):
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI. A local sqlite file needs no server and is what `mlflow ui` opens."""

    @property
    def remote(self) -> bool:
        """An MLflow server already running (http/https), rather than a store this machine opens itself."""
        return self.uri.startswith(("http://", "https://"))


class OutputConfig(ConfigModel):
    dir: Path | None = None
    """Ray results, the teacher and its cache, exports and reports; unset = runs/<name>."""


class SubmitConfig(ConfigModel):
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


class Config(ConfigModel):
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

    @model_validator(mode="after")
    def _qat_needs_int8(self) -> "Config":
        space = self.search.space
        qat = space.int8_qat_epochs
        formats = space.precision.choice if isinstance(space.precision, Dist) else [space.precision or
                                                                                    self.student.precision]
        if (isinstance(qat, Dist) or qat) and "int8" not in (formats or []):
            raise ValueError(f"search.space.int8_qat_epochs is {qat if not isinstance(qat, Dist) else 'searched'} "
                             f"but no trial ships int8 (formats: {', '.join(map(str, formats))}): it would change "
                             "nothing; drop it, or offer int8 (student.precision: int8 or search.space.precision)")
        return self

    @property
    def output_dir(self) -> Path:
        return self.output.dir if self.output.dir is not None else Path("runs") / self.name

"""Hugging Face teachers: `from_pretrained` models used as a classifier, zero-shot, or through a linear probe.

Every mode ends in one `nn.Linear` head, so the teacher's features (the head's
input) are there for feature distillation and a linear probe is a head fitted
after the features are known (teachers/cache.py calls `fit_head`).

Authentication is huggingface_hub's own: `HF_TOKEN` from the environment or
the login cache. kdsearch never reads, prints or stores the token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, HuggingFaceTeacher, InputSpec
from ..core.errors import KdsearchError
from ..core.io import fingerprint
from ..core.registry import Registry
from ..data.dataset import Dataset
from ..losses import class_weights
from ..models.students import final_linear, student_spec
from .base import CrossFit, Teacher

log = logging.getLogger("kdsearch")

MODES: Registry[Callable] = Registry("teacher.mode")
"""teacher.mode -> builder(teacher config, config, data, spec) -> (model, head, fit_head)."""

PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse regularisation strengths tried by the linear probe


def build_huggingface(t: HuggingFaceTeacher, cfg: Config, data: Dataset, device) -> Teacher:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load bars would interleave with kdsearch's own output
    spec = t.input or processor_spec(t) or student_spec(cfg)
    if spec.size is None:
        spec = spec.model_copy(update={"size": cfg.data.image_size})
    build = MODES[t.mode]
    model, head, fit_head = build(t, cfg, data, spec)
    settings = t.model_dump(mode="json", exclude={"cache", "cache_views", "batch_size", "input", "model", "resources"})
    fp = fingerprint({"weights": _weights_identity(t), "settings": settings, "spec": spec.model_dump(mode="json"),
                      "classes": data.class_names, **({"data": data.fingerprint} if fit_head else {})})
    identity = {"source": "huggingface", "model": t.model, "mode": t.mode, "revision": _commit(t) or t.revision,
                "fingerprint": fp}
    return Teacher(model.to(device).eval(), spec, fp, identity, head=head, fit_head=fit_head, batch_size=t.batch_size)


# --------------------------------------------------------------------------- loading


def pretrained(cls: Any, t: HuggingFaceTeacher) -> Any:
    """`cls.from_pretrained(t.model)` with the hub's failures turned into one line naming the model and HF_TOKEN."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    kwargs: dict[str, Any] = {"revision": t.revision} if t.revision else {}
    if t.dtype != "float32" and cls.__name__ != "AutoTokenizer" and cls.__name__ != "AutoImageProcessor":
        kwargs["dtype"] = getattr(torch, t.dtype)
    try:
        return cls.from_pretrained(t.model, **kwargs)
    except GatedRepoError:
        raise KdsearchError(f"teacher.model {t.model}: gated on the Hugging Face hub; accept its terms at "
                            f"https://huggingface.co/{t.model} and set HF_TOKEN (or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise KdsearchError(f"teacher.model {t.model}: no such local folder or hub model (private and gated models "
                            "also need HF_TOKEN); check the id or path") from None
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        gated = " gated:" if "gated" in str(e).lower() else ""
        raise KdsearchError(f"teacher.model {t.model}:{gated} cannot load {cls.__name__} ({first[:200]}); give a local "
                            "folder written by save_pretrained, or a hub id with network access and HF_TOKEN set "
                            "for gated models") from None


def processor_spec(t: HuggingFaceTeacher) -> InputSpec | None:
    """Size and normalisation from the model's image processor; None when it has none."""
    from transformers import AutoImageProcessor

    try:
        proc = pretrained(AutoImageProcessor, t)
    except KdsearchError:
        return None
    size = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    size = size or getattr(proc, "size", None)
    side = None
    for key in ("height", "shortest_edge", "width"):
        value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
        if value:
            side = int(value)
            break
    normalize = getattr(proc, "do_normalize", True)
    mean = tuple(proc.image_mean) if normalize and getattr(proc, "image_mean", None) is not None else (0.0,)
    std = tuple(proc.image_std) if normalize and getattr(proc, "image_std", None) is not None else (1.0,)
    return InputSpec(size=side, channels=3, mean=mean, std=std)


def _weights_identity(t: HuggingFaceTeacher) -> Any:
    """A local folder by its files (name, size, mtime); a hub model by the commit it resolved to."""
    folder = Path(t.model)
    if folder.is_dir():
        return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in folder.rglob("*") if p.is_file())
    return {"id": t.model, "commit": _commit(t) or t.revision}


def _commit(t: HuggingFaceTeacher) -> str | None:
    """The hub commit the model was loaded from, read from the local hub cache (snapshots/<commit>/...)."""
    if Path(t.model).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(t.model, "config.json", revision=t.revision)
    return Path(path).parent.name if isinstance(path, str) else None


class _Logits(nn.Module):
    """An image classifier as pixel_values -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x.to(self.model.dtype)).logits


class ImageEmbedder(nn.Module):
    """pixel_values -> pooled image embedding (L2-normalised for zero-shot, as the model compares them)."""

    def __init__(self, model: nn.Module, normalize: bool):
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.model.dtype)
        if hasattr(self.model, "get_image_features"):  # CLIP / SigLIP: the embedding the model compares with text
            out = self.model.get_image_features(pixel_values=x)
        else:  # a vision backbone (ViTModel, Dinov2Model, ...)
            out = self.model(pixel_values=x)
        if isinstance(out, torch.Tensor):
            emb = out
        elif getattr(out, "pooler_output", None) is not None:
            emb = out.pooler_output
        else:
            emb = out.last_hidden_state.mean(dim=1)
        emb = emb.float()
        return F.normalize(emb, dim=-1) if self.normalize else emb


# --------------------------------------------------------------------------- modes


@MODES.register("classifier")
def _classifier(t: HuggingFaceTeacher, cfg: Config, data: Dataset, spec: InputSpec):
    """The model's own head, its rows reordered (and cut) to the dataset's classes."""
    from transformers import AutoModelForImageClassification

    model = pretrained(AutoModelForImageClassification, t)
    rows = match_labels(t, dict(model.config.id2label), data.class_names)
    old = final_linear(model)
    name = next(n for n, m in model.named_modules() if m is old)
    head = nn.Linear(old.in_features, len(rows), bias=old.bias is not None, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(old.weight[rows])
        if old.bias is not None:
            head.bias.copy_(old.bias[rows])
    model.set_submodule(name, head)
    return _Logits(model), head, None


def _normalise(name: Any) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def match_labels(t: HuggingFaceTeacher, id2label: dict[int, str], class_names: list[str]) -> list[int]:
    """For each dataset class, the teacher's output index: names compared case- and _/- insensitively,
    after `teacher.label_map` renames teacher labels."""
    label_map = t.label_map or {}
    unknown = sorted(set(label_map) - set(id2label.values()))
    if unknown:
        raise KdsearchError(f"teacher.label_map: {', '.join(map(repr, unknown))} not among the labels of {t.model} "
                            f"({_preview(id2label.values())}); use the model's own label names as keys")
    index = {}
    for i, label in sorted(id2label.items(), key=lambda kv: int(kv[0])):
        index.setdefault(_normalise(label_map.get(label, label)), int(i))
    missing = [c for c in class_names if _normalise(c) not in index]
    if missing:
        raise KdsearchError(f"teacher.model {t.model}: has no label for class {', '.join(map(repr, missing))} "
                            f"(its labels: {_preview(id2label.values())}); map them with teacher.label_map: "
                            "{teacher label: class name}")
    return [index[_normalise(c)] for c in class_names]


def _preview(labels, n: int = 8) -> str:
    labels = list(labels)
    return ", ".join(map(repr, labels[:n])) + (f", ... ({len(labels)} in all)" if len(labels) > n else "")


def class_prompts(t: HuggingFaceTeacher, class_names: list[str]) -> list[list[str]]:
    """Per class, its prompt(s): teacher.prompts where given, else teacher.prompt with {label} filled in."""
    prompts = t.prompts or {}
    unknown = sorted(set(prompts) - set(class_names))
    if unknown:
        raise KdsearchError(f"teacher.prompts: {', '.join(map(repr, unknown))} not a class of the data "
                            f"({_preview(class_names)}); key prompts by class name")
    out = []
    for c in class_names:
        p = prompts.get(c, t.prompt.format(label=" ".join(c.replace("_", " ").replace("-", " ").split())))
        out.append([p] if isinstance(p, str) else list(p))
    return out


@MODES.register("zero_shot")
def _zero_shot(t: HuggingFaceTeacher, cfg: Config, data: Dataset, spec: InputSpec):
    """CLIP/SigLIP: logits = scale * cos(image, class text) + bias, as the model scores image-text pairs."""
    from transformers import AutoModel, AutoTokenizer

    model = pretrained(AutoModel, t)
    if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
        raise KdsearchError(f"teacher.mode zero_shot: {t.model} is a {type(model).__name__}, not an image-text model "
                            "(SigLIP, CLIP); use mode linear_probe or classifier")
    tokenizer = pretrained(AutoTokenizer, t)
    max_len = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", 64)
    text = []
    with torch.no_grad():
        for prompts in class_prompts(t, data.class_names):
            enc = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
            # SigLIP was trained on max_length padding without a mask; pass what the tokenizer gives, as its card does
            out = model.get_text_features(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")})
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            text.append(F.normalize(F.normalize(emb.float(), dim=-1).mean(0), dim=-1))  # prompt ensembling
        weight = torch.stack(text) * model.logit_scale.float().exp()
        bias = getattr(model, "logit_bias", None)
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias.float().expand(weight.shape[0]) if bias is not None else torch.zeros(weight.shape[0]))
    _drop_text_tower(model)
    return nn.Sequential(ImageEmbedder(model, normalize=True), head), head, None


@MODES.register("linear_probe")
def _linear_probe(t: HuggingFaceTeacher, cfg: Config, data: Dataset, spec: InputSpec):
    """Frozen image embeddings -> a head fitted later by logistic regression (`fit_probe`)."""
    from transformers import AutoModel

    model = pretrained(AutoModel, t)
    _drop_text_tower(model)
    embedder = ImageEmbedder(model, normalize=False).eval()
    with torch.no_grad():
        dim = embedder(torch.zeros(1, spec.channels, spec.size, spec.size)).shape[1]
    head = nn.Linear(dim, data.num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)

    def fit_head(feats: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Any], CrossFit]:
        return fit_probe(head, feats, y, data.num_classes, t.class_weight_power, cfg.seed)

    return nn.Sequential(embedder, head), head, fit_head


def _drop_text_tower(model: nn.Module) -> None:
    """Image-only use needs no text encoder; freeing it saves about half a SigLIP's memory."""
    if hasattr(model, "text_model") and hasattr(model, "vision_model"):
        model.text_model = None


PROBE_FOLDS = 5  # cross-fitting folds: each fitted image's outputs come from a probe fitted on the other 4/5


def fit_probe(head: nn.Linear, feats: torch.Tensor, y: torch.Tensor, num_classes: int, power: float,
              seed: int) -> tuple[dict[str, Any], CrossFit]:
    """Standardise; pick C by macro-F1 of scikit-learn's LogisticRegression on a held-out 20% of train (class
    weights (1/n_c)^power, scaled so the mean *sample* weight is 1 and C means what it says); refit on all of train
    and write it into `head` so head(feats) = its decision function. Also fits one probe per fold of a stratified
    k-fold split of train: the out-of-fold outputs (`CrossFit`) are what the probe's own training images get as
    teacher targets, since its in-sample outputs are over-confident (cross-fitting)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
    from sklearn.preprocessing import StandardScaler

    x, labels = feats.double().numpy(), y.numpy()
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    counts = torch.bincount(y, minlength=num_classes)
    w = class_weights(counts, power).double()
    w = w / float((w * counts).sum() / counts.sum())  # mean sample weight 1: scikit-learn's C scales with it
    cw = {c: float(w[c]) for c in range(num_classes)}
    smallest = int(counts[counts > 0].min())
    stratify = labels if smallest >= 2 else None
    x_fit, x_hold, y_fit, y_hold = train_test_split(xs, labels, test_size=0.2, stratify=stratify, random_state=seed)

    def probe(c: float, xx, yy) -> LogisticRegression:
        return LogisticRegression(C=c, class_weight=cw, max_iter=2000, random_state=seed).fit(xx, yy)

    scores = {c: float(f1_score(y_hold, probe(c, x_fit, y_fit).predict(x_hold), average="macro")) for c in PROBE_CS}
    best = max(PROBE_CS, key=lambda c: scores[c])  # ties: the first, i.e. the strongest regularisation
    weight, bias = _as_head(probe(best, xs, labels), scaler, num_classes, x.shape[1])
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_(bias.to(head.bias.dtype))
    n_folds = min(PROBE_FOLDS, smallest) if smallest >= 2 else PROBE_FOLDS
    splitter = (StratifiedKFold(n_folds, shuffle=True, random_state=seed) if smallest >= 2
                else KFold(n_folds, shuffle=True, random_state=seed))
    fold = torch.zeros(len(labels), dtype=torch.int64)
    heads = []
    for f, (fit_idx, held_idx) in enumerate(splitter.split(xs, labels)):
        fold[held_idx] = f
        heads.append(_as_head(probe(best, xs[fit_idx], labels[fit_idx]), scaler, num_classes, x.shape[1]))
    cross = CrossFit(fold, torch.stack([h[0] for h in heads]).float(), torch.stack([h[1] for h in heads]).float())
    return {"probe_C": best, "probe_holdout_macro_f1": scores[best], "probe_folds": n_folds}, cross


def _as_head(clf, scaler, num_classes: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fitted LogisticRegression on standardised features as (weight [K, D], bias [K]) on the raw features."""
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: one score s; logits [0, s] give softmax = the regression's sigmoid
        coef = torch.cat([torch.zeros_like(torch.from_numpy(coef)), torch.from_numpy(coef)]).numpy()
        intercept = [0.0, float(intercept[0])]
    weight = torch.zeros((num_classes, dim), dtype=torch.float64)
    bias = torch.full((num_classes,), -1e4, dtype=torch.float64)  # a class absent from train is never predicted
    rows = torch.as_tensor(clf.classes_)
    weight[rows] = torch.from_numpy(coef) / torch.from_numpy(scaler.scale_)
    bias[rows] = torch.as_tensor(intercept, dtype=torch.float64) - weight[rows] @ torch.from_numpy(scaler.mean_)
    return weight, bias

"""The config: the contract's YAML read, overridden (environment, `--set`) and validated once, here.

The models live in sections.py (the sections) and space.py (the space language); this module
re-exports them. Below it, code receives typed objects, never dicts. Each field's
docstring is its meaning and the reason for its default; they also become the
descriptions in the JSON Schema (`kdsearch validate --schema`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from ..core.errors import KdsearchError
from ..core.results import METRIC_MODES  # noqa: F401
from ..models.input_spec import InputSpec  # noqa: F401
from .sections import (  # noqa: F401  (the config's types, re-exported: import them from here)
    CheckpointTeacher,
    Config,
    DataConfig,
    EnsembleTeacher,
    HuggingFaceTeacher,
    OutputConfig,
    Resources,
    SearchConfig,
    StudentConfig,
    SubmitConfig,
    TeacherConfig,
    TeacherResources,
    TorchscriptTeacher,
    TrackingConfig,
    TrainTeacher,
    UnlabeledConfig,
)
from .space import Dist, Param, Scalar, Space  # noqa: F401

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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise KdsearchError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at {e.start}); save the config "
                            "as UTF-8") from None
    except OSError as e:
        raise KdsearchError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    if not text.strip():
        raise KdsearchError(f"{path}: empty config; start from one in search_spaces/ (e.g. search_spaces/digits.yaml)")
    try:
        raw = yaml.safe_load(text)
        raw = {} if raw is None else raw  # only comments: every default
    except (ValueError, RecursionError) as e:  # a value YAML parses but cannot build (a 13th month), deep nesting
        raise KdsearchError(f"{path}: YAML value not understood ({type(e).__name__}: {str(e)[:200]}); fix the YAML"
                            ) from None
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KdsearchError(f"{path}: YAML syntax error{where}: {problem}; fix the YAML") from None
    if not isinstance(raw, dict):
        raise KdsearchError(f"{path}: expected a mapping of keys (name:, data:, ...) at the top, got "
                            f"{type(raw).__name__}")
    for env, key in ENV_OVERRIDES.items():
        if os.environ.get(env):
            _set_dotted(raw, key, os.environ[env])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KdsearchError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.num_samples=4")
        try:
            parsed = yaml.safe_load(value) if value else None
        except (yaml.YAMLError, ValueError, RecursionError):  # not YAML: the text itself
            parsed = value
        _set_dotted(raw, key.strip(), parsed)
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

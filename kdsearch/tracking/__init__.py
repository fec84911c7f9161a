"""The one place that talks to MLflow. It logs from the driver process only.

Secrets never reach the store: only the resolved config and hyperparameters
are logged, never the environment.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..config import Config
from ..core.errors import KdsearchError
from ..core.results import on_full_split
from ..runtime import interrupts
from ..runtime.experiment import read_search_state
from ..runtime.locks import store_lock

TRIAL_TAG = "kdsearch.trial_id"
KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3 reads this tag to open an experiment in its model-training view, not the GenAI overview."""
SEARCH_TAG = "kdsearch.search_id"


def _client(cfg: Config):
    # An explicit client, never mlflow.set_tracking_uri: that exports MLFLOW_TRACKING_URI into os.environ,
    # where it would override the next config's tracking.uri in the same process (a notebook, a test).
    from mlflow.tracking import MlflowClient

    # Two runs creating one new sqlite store (a SLURM array, two terminals) would run MLflow's schema migration
    # twice at once, which fails; the lock makes the second wait for the first.
    # Ctrl-C in the middle of that migration would leave a store MLflow cannot open again: it waits.
    with store_lock(cfg.tracking.uri), interrupts.deferred():
        try:
            client = MlflowClient(cfg.tracking.uri)
            exp = client.get_experiment_by_name(cfg.name)
            if exp is None:
                exp_id = client.create_experiment(cfg.name, tags={KIND_TAG: EXPERIMENT_KIND})
            else:
                exp_id = exp.experiment_id
                if KIND_TAG not in exp.tags:  # an experiment made before, or by hand; a kind the user set stays
                    client.set_experiment_tag(exp_id, KIND_TAG, EXPERIMENT_KIND)
        except Exception as e:
            raise KdsearchError(f"tracking.uri {cfg.tracking.uri}: MLflow store not usable (MLflow raised "
                                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); set "
                                "tracking.uri or MLFLOW_TRACKING_URI to a reachable store, e.g. sqlite:///mlflow.db"
                                ) from None
    return client, exp_id


def check_store(cfg: Config) -> None:
    """Fail before any work when the tracking store cannot be opened (exit 2 naming tracking.uri)."""
    _client(cfg)


def metric_key(name: str) -> str:
    """MLflow allows letters, digits, _ - . / and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def class_metric_keys(class_names: list[str]) -> list[str]:
    """Each class's per-class metric suffix: its name made MLflow-safe, and unique. Two names that sanitise alike
    ("a+b", "a_b") get their class index appended ("a_b.0", "a_b.1") rather than overwrite each other; the
    mapping back to the names is logged as class_keys.json."""
    safe = [metric_key(n) for n in class_names]
    keys = [s if safe.count(s) == 1 else f"{s}.{i}" for i, s in enumerate(safe)]
    return keys if len(set(keys)) == len(keys) else [f"{i}.{s}" for i, s in enumerate(safe)]  # index-led: unique


def class_keys_mapping(class_names: list[str]) -> dict[str, dict]:
    """class_keys.json: metric key -> the class index and name it stands for."""
    return {f"val_f1.{k}": {"index": i, "class": n} for i, (k, n) in enumerate(zip(class_metric_keys(class_names),
                                                                                   class_names))}


def _scalar_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v,
                                                                                                bool) and k != "epoch"}


def epoch_metrics(history: list[dict[str, Any]], class_names: list[str]):
    """MLflow Metric objects: every scalar per epoch (step=epoch) plus per-class F1.

    An epoch scored on the rung subset of val logs its scores as rung_val_*: MLflow's val_* are always the whole
    split's, so a run's last val_macro_f1 is comparable across runs."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for m in history:
        if not on_full_split(m):
            m = {("rung_" + k if k.startswith("val_") else k): v for k, v in m.items()}
        step = int(m["epoch"])
        out += [Metric(k, v, now, step) for k, v in _scalar_metrics(m).items()]
        for key, f1 in zip(class_metric_keys(class_names), m.get("val_per_class_f1", [])):
            if f1 is not None and math.isfinite(f1):  # a class with no val image has no F1: not logged
                out.append(Metric(f"val_f1.{key}", float(f1), now, step))
    return out


def log_train_run(cfg: Config, params: dict[str, Any], tags: dict[str, str], history: list[dict[str, Any]],
                  summary: dict[str, float], class_names: list[str], artifacts: Path) -> str:
    """One MLflow run for `kdsearch train`: params, per-epoch metrics, summary metrics, the output folder."""
    from mlflow.entities import Metric, Param, RunTag

    client, exp_id = _client(cfg)
    run = client.create_run(exp_id, run_name=f"train-{params.get('student', 'student')}",
                            tags={"kdsearch.kind": "train", **tags})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = epoch_metrics(history, class_names) + [Metric(k, v, now, 0) for k, v in _scalar_metrics(summary).items()]
    for i in range(0, max(len(metrics), 1), 1000):  # log_batch takes at most 1000 metrics a call
        client.log_batch(run_id, metrics=metrics[i:i + 1000],
                         params=[Param(k, str(v)) for k, v in params.items()] if i == 0 else [],
                         tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
    client.log_artifacts(run_id, str(artifacts))
    client.log_dict(run_id, class_keys_mapping(class_names), "class_keys.json")
    client.set_terminated(run_id)
    return run_id


def log_report(cfg: Config, folder: Path, figures: dict[str, float]) -> str:
    """The report's files (under `report/`) and figures (as `report.*` metrics) on the search's parent run,
    or on a run of its own when the config has no search yet."""
    from mlflow.entities import Metric

    client, exp_id = _client(cfg)
    run_id = _search_parent(cfg)
    if run_id is not None:
        try:
            client.get_run(run_id)
        except Exception:  # the search's store was moved or deleted: the report gets a run of its own
            run_id = None
    own = run_id is None
    if own:
        run_id = client.create_run(exp_id, run_name="report", tags={"kdsearch.kind": "report"}).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"report.{k}", float(v), now, 0) for k, v in figures.items()])
    client.log_artifacts(run_id, str(folder), artifact_path="report")
    if own:
        client.set_terminated(run_id)
    return run_id


# --------------------------------------------------------------------------- searches


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model) pointed at `uri`, leaving the process's URI and environment as they were."""
    import mlflow

    env, previous = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def register_student(cfg: Config, model, example, export_dir: Path, parent_run_id: str | None,
                     tags: dict[str, str] | None = None) -> str:
    """Log the exported student (and its folder) to MLflow and register it as `<name>-student`, the version tagged
    with its trial's provenance (`tags`; a trial that did not finish says so in the version's description too);
    returns 'name/version'."""
    import mlflow
    import torch
    from mlflow.exceptions import MlflowException

    client, exp_id = _client(cfg)
    name = f"{cfg.name}-student"
    run_id = parent_run_id or client.create_run(exp_id, run_name=f"export-{cfg.name}",
                                                tags={"kdsearch.kind": "export"}).info.run_id
    with _fluent_uri(cfg.tracking.uri):  # the registry resolves models:/ sources through the global tracking URI
        with mlflow.start_run(run_id=run_id):
            # the shipped TorchScript file (any format): MLflow saves a ScriptModule with torch.jit.save under its
            # "pickle" serialization format (its default, pt2, is for eager models)
            with warnings.catch_warnings():  # MLflow loads the file back to check the example: TorchScript's notices
                warnings.simplefilter("ignore", FutureWarning)
                info = mlflow.pytorch.log_model(model, name="student", input_example=example.numpy(),
                                                serialization_format="pickle",
                                                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            mlflow.log_artifacts(str(export_dir), artifact_path="best")
        # Registered through the client, not log_model's registered_model_name: the fluent path prints its
        # "Successfully registered model" / "Created version" lines to stderr with no switch to turn them off.
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = tags or {}
        stopped = tags.get("kdsearch.trial_finished") == "false"
        version = client.create_model_version(
            name, source=info.model_uri, run_id=run_id, model_id=info.model_id, tags=tags,
            description=(f"NOT a finished trial: {tags.get('kdsearch.trial_figure')}" if stopped
                         else tags.get("kdsearch.trial_figure")))
    return f"{name}/{version.version}"


# --------------------------------------------------------------------------- submissions to an evaluation server


SUBMISSION_PREFIX = "submission."
NEXT_ALLOWED_TAG = "kdsearch.submit.next_allowed_at"  # an experiment tag: every process sees the server's rate limit


def _search_parent(cfg: Config) -> str | None:
    """The MLflow parent run of the config's search, from the search's saved state; None without a search."""
    return read_search_state(cfg).get("parent_run_id")


def start_submission(cfg: Config, tags: dict[str, str]) -> str:
    """A run for one submission, nested under the search's parent run when there is one; returns its id."""
    client, exp_id = _client(cfg)
    parent = _search_parent(cfg)
    base = {"kdsearch.kind": "submission", **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(exp_id, run_name=f"submission-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={**base, **{SUBMISSION_PREFIX + k: v for k, v in tags.items()}})
    return run.info.run_id


def update_submission(cfg: Config, run_id: str, tags: dict[str, str], metrics: dict[str, float] | None = None,
                      finished: bool = False) -> None:
    from mlflow.entities import Metric, RunTag

    client, _ = _client(cfg)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(SUBMISSION_PREFIX + k, float(v), now, 0) for k,
                                      v in (metrics or {}).items()],
                     tags=[RunTag(SUBMISSION_PREFIX + k, str(v)) for k, v in tags.items()])
    if finished:
        client.set_terminated(run_id)


def log_submission_text(cfg: Config, run_id: str, name: str, text: str) -> None:
    client, _ = _client(cfg)
    client.log_text(run_id, text, f"submission/{name}")


def delete_submission(cfg: Config, run_id: str) -> None:
    _client(cfg)[0].delete_run(run_id)


def submissions(cfg: Config) -> list[dict[str, Any]]:
    """Every submission of the experiment, oldest first: run_id, start time, tags and metrics without the prefix."""
    client, exp_id = _client(cfg)
    runs = client.search_runs([exp_id], "tags.`kdsearch.kind` = 'submission'", order_by=["attributes.start_time ASC"])
    out = []
    for r in runs:
        strip = lambda d: {k[len(SUBMISSION_PREFIX):]: v for k, v in d.items() if k.startswith(SUBMISSION_PREFIX)}  # noqa: E731
        out.append({"run_id": r.info.run_id, "start_time": r.info.start_time / 1000, **strip(r.data.tags),
                    **strip(r.data.metrics)})
    return out


def next_allowed_at(cfg: Config) -> float:
    """When the server accepts the next submission (epoch seconds; 0 = now)."""
    client, exp_id = _client(cfg)
    return float(client.get_experiment(exp_id).tags.get(NEXT_ALLOWED_TAG, 0.0))


def set_next_allowed_at(cfg: Config, when: float) -> None:
    client, exp_id = _client(cfg)
    client.set_experiment_tag(exp_id, NEXT_ALLOWED_TAG, f"{when:.3f}")

"""The one place that talks to MLflow. It logs from the driver process only.

Secrets never reach the store: only the resolved config and hyperparameters
are logged, never the environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from ray import tune

from .config import Config
from .errors import KdsearchError
from .results import ended, on_full_split


def _client(cfg: Config):
    # An explicit client, never mlflow.set_tracking_uri: that exports MLFLOW_TRACKING_URI into os.environ,
    # where it would override the next config's tracking.uri in the same process (a notebook, a test).
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(cfg.tracking.uri)
        exp = client.get_experiment_by_name(cfg.name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.name)
    except Exception as e:
        raise KdsearchError(f"tracking.uri {cfg.tracking.uri}: MLflow store not usable ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); set tracking.uri or MLFLOW_TRACKING_URI to a reachable "
                            "store, e.g. sqlite:///mlflow.db") from None
    return client, exp_id


def check_store(cfg: Config) -> None:
    """Fail before any work when the tracking store cannot be opened (exit 2 naming tracking.uri)."""
    _client(cfg)


def metric_key(name: str) -> str:
    """MLflow allows letters, digits, _ - . / and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def _scalar_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


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
        for name, f1 in zip(class_names, m.get("val_per_class_f1", [])):
            out.append(Metric(metric_key(f"val_f1.{name}"), float(f1), now, step))
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


TRIAL_TAG = "kdsearch.trial_id"
SEARCH_TAG = "kdsearch.search_id"


class SearchTracker(tune.Callback):
    """A Tune callback on the driver: one MLflow parent run per search, one nested child run per trial.

    Child runs are created when a trial starts and get each epoch's metrics as
    it is reported (step = epoch), so the MLflow UI shows a search while it runs.
    Only the driver writes, so parallel trials never contend for a sqlite store.
    On resume the callback is unpickled by Tune; it finds its runs again by tag
    and skips epochs already logged, so MLflow holds no duplicates.
    """

    def __init__(self, cfg: Config, search_id: str, sizes_mb: dict[str, float], class_names: list[str]):
        self.cfg, self.search_id, self.sizes_mb, self.class_names = cfg, search_id, sizes_mb, class_names
        self.parent_run_id: str | None = None
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    # -- runs

    def start(self) -> str:
        """Create (or find again) the parent run; returns its id."""
        client, exp_id = _client(self.cfg)
        self._client = client
        found = client.search_runs([exp_id], f"tags.`{SEARCH_TAG}` = '{self.search_id}' and "
                                   "tags.`kdsearch.kind` = 'search'")
        if found:
            self.parent_run_id = found[0].info.run_id
            client.update_run(self.parent_run_id, "RUNNING")
        else:
            run = client.create_run(exp_id, run_name=f"search-{self.cfg.name}",
                                    tags={"kdsearch.kind": "search", SEARCH_TAG: self.search_id})
            self.parent_run_id = run.info.run_id
            client.log_dict(self.parent_run_id, self.cfg.model_dump(mode="json", by_alias=True), "config.yaml")
        return self.parent_run_id

    def setup(self, **info) -> None:
        if self._client is None or self.parent_run_id is None:
            self.start()
        self._exp_id = self._client.get_run(self.parent_run_id).info.experiment_id
        self._children: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        for run in self._client.search_runs([self._exp_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"):
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id:
                self._children[trial_id] = run.info.run_id
                history = self._client.get_metric_history(run.info.run_id, "train_loss")
                self._last_step[trial_id] = max((m.step for m in history), default=0)

    def _child(self, trial) -> str:
        if trial.trial_id not in self._children:
            student = str(trial.config.get("student"))
            run = self._client.create_run(
                self._exp_id, run_name=f"trial-{trial.trial_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id, "kdsearch.kind": "trial",
                      "student": student, "size_mb": f"{self.sizes_mb.get(student, float('nan')):.3f}",
                      "kdsearch.ended": "running"})
            from mlflow.entities import Param

            self._client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(trial.config.items())])
            self._children[trial.trial_id] = run.info.run_id
            self._last_step[trial.trial_id] = 0
        return self._children[trial.trial_id]

    # -- Tune hooks (driver side)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._child(trial)
        step = int(result["training_iteration"])
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # already logged before an interruption: no duplicates on resume
        if "node_id" in result and self._last_step.get(trial.trial_id, 0) == 0:
            self._client.set_tag(run_id, "kdsearch.node_id", str(result["node_id"]))  # where it ran
        metrics = epoch_metrics([{**result, "epoch": step}], self.class_names)
        self._client.log_batch(run_id, metrics=[m for m in metrics if m.key in LOGGED or m.key.startswith("val_f1.")])
        self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, ended(trial.last_result or {}, self.cfg.search.max_epochs), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "errored", "FAILED")

    def _end(self, trial, ended: str, status: str) -> None:
        run_id = self._child(trial)
        self._client.set_tag(run_id, "kdsearch.ended", ended)
        self._client.set_terminated(run_id, status)

    def on_experiment_end(self, trials, **info) -> None:
        """A trial that started just before an interruption but never reached Tune's saved state is
        suggested again under a new id on resume; its child run is an orphan and is deleted, so every
        trial appears exactly once."""
        known = {t.trial_id for t in trials}
        for trial_id, run_id in self._children.items():
            if trial_id not in known:
                self._client.delete_run(run_id)

    def finish(self, summary: dict[str, float], status: str = "FINISHED") -> None:
        """Search-level metrics on the parent run, then close it."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
        self._client.set_terminated(self.parent_run_id, status)


# Per-epoch scalars a trial's child run gets.
LOGGED = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "rung_val_loss", "rung_val_accuracy",
          "rung_val_macro_f1", "epoch_seconds", "eval_seconds", "size_mb", "teacher_forward_passes")


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


def register_student(cfg: Config, model, example, export_dir: Path, parent_run_id: str | None) -> str:
    """Log the exported student (and its folder) to MLflow and register it as `<name>-student`; returns 'name/version'."""
    import mlflow
    import torch

    client, exp_id = _client(cfg)
    name = f"{cfg.name}-student"
    run_id = parent_run_id or client.create_run(exp_id, run_name=f"export-{cfg.name}",
                                                tags={"kdsearch.kind": "export"}).info.run_id
    with _fluent_uri(cfg.tracking.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(model, name="student", registered_model_name=name,
                                        input_example=example.numpy(),
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        mlflow.log_artifacts(str(export_dir), artifact_path="best")
    return f"{name}/{info.registered_model_version}"


# --------------------------------------------------------------------------- submissions to an evaluation server


SUBMISSION_PREFIX = "submission."
NEXT_ALLOWED_TAG = "kdsearch.submit.next_allowed_at"  # an experiment tag: every process sees the server's rate limit


def _search_parent(cfg: Config) -> str | None:
    """The MLflow parent run of the config's search, from the search's saved state; None without a search."""
    import json

    from .tuner import STATE_FILE, experiment_path

    state = experiment_path(cfg) / STATE_FILE
    return json.loads(state.read_text()).get("parent_run_id") if state.is_file() else None


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
    client.log_batch(run_id, metrics=[Metric(SUBMISSION_PREFIX + k, float(v), now, 0) for k, v in (metrics or {}).items()],
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

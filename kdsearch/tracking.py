"""The one place that talks to MLflow. It logs from the driver process only.

Secrets never reach the store: only the resolved config and hyperparameters
are logged, never the environment.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from .config import Config
from .errors import KdsearchError


def _client(cfg: Config):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking.uri)
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
    """MLflow Metric objects: every scalar per epoch (step=epoch) plus per-class F1."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for m in history:
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

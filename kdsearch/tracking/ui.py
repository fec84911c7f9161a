"""`kdsearch ui`: MLflow's own UI on the config's store, opened on the comparison of the latest search's trials.

MLflow 3 opens an experiment on its GenAI overview unless told otherwise: the experiment URL carries
`workflowType=machine_learning` (and experiments carry the `mlflow.experimentKind` tag), and the comparison page
(`#/compare-runs?runs=[...]&experiments=[...]`: parallel coordinates, scatter, contour, a row per trial) is
linked directly, best trials first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass

from ..config import Config
from ..core.errors import KdsearchError
from ..core.results import ranked
from . import TRIAL_TAG, _client, _search_parent

COMPARE_LIMIT = 100
"""Trials in the comparison link, best first (a URL of run ids; MLflow's page gets slow beyond this)."""
START_TIMEOUT_S = 60.0


@dataclass
class Links:
    experiment: str
    """The experiment in MLflow's model-training view."""
    compare: str | None
    """The latest search's trials side by side; None before any search."""
    trials: int


def links(cfg: Config, base: str) -> Links:
    """The URLs on an MLflow UI at `base` (http://host:port) for the config's experiment and latest search."""
    client, exp_id = _client(cfg)
    base = base.rstrip("/")
    experiment = f"{base}/#/experiments/{exp_id}?workflowType=machine_learning"
    parent = _search_parent(cfg) or _latest_search(client, exp_id)
    if parent is None:
        return Links(experiment, None, 0)
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`kdsearch.kind` = 'trial'",
                              max_results=5000)
    # Best first. A run's val_* are whole-split scores (rung epochs log rung_val_*), so a trial ASHA stopped on the
    # subset has none and comes after those that do.
    order = ranked(runs, lambda r: r.data.metrics, cfg.search.metric, cfg.search.resolved_mode)
    ids = [r.info.run_id for r in order if r.data.tags.get(TRIAL_TAG)][:COMPARE_LIMIT]
    query = urllib.parse.urlencode({"runs": json.dumps(ids, separators=(",", ":")),
                                    "experiments": json.dumps([exp_id], separators=(",", ":")),
                                    "workflowType": "machine_learning"},
                                   quote_via=urllib.parse.quote)
    return Links(experiment, f"{base}/#/compare-runs?{query}" if ids else None, len(ids))


def _latest_search(client, exp_id: str) -> str | None:
    runs = client.search_runs([exp_id], "tags.`kdsearch.kind` = 'search'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


def start_server(cfg: Config, port: int) -> subprocess.Popen:
    """`mlflow ui` on the config's store, bound to 127.0.0.1, once it answers; exit 2 if it cannot start."""
    url = f"http://127.0.0.1:{port}"
    if _answers(url):
        raise KdsearchError(f"--port {port}: something already answers at {url}; stop it or pick another --port")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", cfg.tracking.uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = (server.stderr.read() or "").strip().splitlines()
            raise KdsearchError(f"--port {port}: MLflow's UI did not start ({err[-1] if err else 'no output'}); "
                                "try another --port")
        if _answers(url):
            return server
        time.sleep(0.3)
    stop_server(server)
    raise KdsearchError(f"--port {port}: MLflow's UI did not answer within {START_TIMEOUT_S:g} s")


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/health", timeout=1).ok
    except requests.RequestException:
        return False


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()

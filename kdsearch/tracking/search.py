"""A search in MLflow, written from the driver: one parent run, one child run per trial.

`SearchTracker`'s hooks carry Ray Tune's callback names and take Tune's trial objects as they come (duck-typed), so
this module imports no Ray: `search.callback` makes it a Tune callback, and MLflow stays in `tracking/`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..config.space import split_pair
from ..core.results import LOGGED, ended, finished
from . import SEARCH_TAG, TRIAL_TAG, _client, class_keys_mapping, epoch_metrics


class SearchTracker:
    """Tune's callback hooks on the driver (see `search.callback`): one MLflow parent run per search, one nested
    child run per trial.

    Child runs are created when a trial starts and get each epoch's metrics as
    it is reported (step = epoch), so the MLflow UI shows a search while it runs.
    Only the driver writes, so parallel trials never contend for a sqlite store.
    On resume the callback is unpickled by Tune; it finds its runs again by tag
    and skips epochs already logged, so MLflow holds no duplicates.
    """

    def __init__(self, cfg: Config, search_id: str, sizes_mb: dict[str, float], class_names: list[str]):
        """`sizes_mb`: "student/format" -> the shipped file's size, as measured before training."""
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
            client.log_dict(self.parent_run_id, class_keys_mapping(self.class_names), "class_keys.json")
        return self.parent_run_id

    def setup(self, **info) -> None:
        if self._client is None or self.parent_run_id is None:
            self.start()
        self._exp_id = self._client.get_run(self.parent_run_id).info.experiment_id
        self._children: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._open: set[str] = set()  # trials whose run has no ending yet
        history = self._client.get_metric_history(self.parent_run_id, f"best_so_far_{self.cfg.search.metric}")
        pick = max if self.cfg.search.resolved_mode == "max" else min
        self._best_value = pick((m.value for m in history), default=None)  # on resume: the curve goes on
        for run in self._client.search_runs([self._exp_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"):
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id:
                self._children[trial_id] = run.info.run_id
                if run.data.tags.get("kdsearch.ended") == "running":
                    self._open.add(trial_id)
                history = self._client.get_metric_history(run.info.run_id, "train_loss")
                self._last_step[trial_id] = max((m.step for m in history), default=0)

    def _child(self, trial) -> str:
        if trial.trial_id not in self._children:
            point = split_pair(trial.config)
            student, fmt = str(point.get("student")), str(point.get("precision") or self.cfg.student.precision)
            run = self._client.create_run(
                self._exp_id, run_name=f"trial-{trial.trial_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id, "kdsearch.kind": "trial",
                      "student": student, "format": fmt,
                      "size_mb": f"{self.sizes_mb.get(f'{student}/{fmt}', float('nan')):.3f}",
                      "kdsearch.ended": "running"})
            from mlflow.entities import Param

            self._client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(trial.config.items())])
            self._children[trial.trial_id] = run.info.run_id
            self._last_step[trial.trial_id] = 0
            self._open.add(trial.trial_id)
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
        self._best_so_far(trial.last_result or {})

    def _best_so_far(self, result: dict) -> None:
        """The search's best finished score so far as `best_so_far_<metric>`, step = seconds since the search
        began (the parent run's start): MLflow draws it as the search's progress against wall time."""
        from mlflow.entities import Metric

        metric, mode = self.cfg.search.metric, self.cfg.search.resolved_mode
        if metric not in result or not finished(result, self.cfg.search.max_epochs):
            return  # a finished trial's shipped file on the whole split, or nothing
        value, previous = float(result[metric]), self._best_value
        if previous is not None and (value <= previous if mode == "max" else value >= previous):
            return
        self._best_value = value
        now = int(time.time() * 1000)
        started = self._client.get_run(self.parent_run_id).info.start_time
        self._client.log_batch(self.parent_run_id, metrics=[Metric(f"best_so_far_{metric}", value, now,
                                                                   max(0, (now - started) // 1000))])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "errored", "FAILED")

    def _end(self, trial, ended: str, status: str) -> None:
        run_id = self._child(trial)
        self._client.set_tag(run_id, "kdsearch.ended", ended)
        self._client.set_terminated(run_id, status)
        self._open.discard(trial.trial_id)

    def on_experiment_end(self, trials, **info) -> None:
        """Trials the search's time budget stopped get no on_trial_complete from Tune (it stops them as it ends):
        their runs end here, tagged budget_cut. A trial that started just before an interruption but never reached
        Tune's saved state is suggested again under a new id on resume; its child run is an orphan and is deleted,
        so every trial appears exactly once."""
        for t in trials:
            if t.status == "TERMINATED" and t.trial_id in self._open:
                self._end(t, ended(t.last_result or {}, self.cfg.search.max_epochs, cut=True), "FINISHED")
        known = {t.trial_id for t in trials}
        for trial_id, run_id in self._children.items():
            if trial_id not in known:
                self._client.delete_run(run_id)

    def log_whole_split(self, trial_id: str, metrics: dict) -> None:
        """A trial's whole-split figures, measured after the search (it was chosen on a rung-subset score), as its
        run's val_* metrics at its last epoch, tagged so the UI's reader knows where they came from."""
        client, exp_id = _client(self.cfg)
        runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                                  f"tags.`{TRIAL_TAG}` = '{trial_id}'")
        step = int(metrics.get("training_iteration", 0))
        whole = [m for m in epoch_metrics([{**metrics, "epoch": step}], self.class_names) if m.key.startswith("val_")]
        for run in runs:
            client.log_batch(run.info.run_id, metrics=whole)
            client.set_tag(run.info.run_id, "kdsearch.val_whole_split", "re-scored after the search")

    def budget_cut(self) -> set[str]:
        """Ids of this search's trials whose runs are tagged budget_cut (by this process or, before a resume, by
        another): MLflow is where the ending is kept."""
        client, exp_id = _client(self.cfg)
        runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                                  "tags.`kdsearch.ended` = 'budget_cut'")
        return {r.data.tags[TRIAL_TAG] for r in runs if TRIAL_TAG in r.data.tags}

    def log_front(self, rows: list[dict], plot: Path | None, importances: dict | None) -> None:
        """The Pareto front (a table artifact and its plot) and the importances (importance.<objective>.<evaluator>.
        <parameter>) on the parent run."""
        from mlflow.entities import Metric

        table = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
        self._client.log_table(self.parent_run_id, data=table, artifact_file="pareto_front.json")
        if plot is not None:
            self._client.log_artifact(self.parent_run_id, str(plot))
        now = int(time.time() * 1000)
        values = [Metric(f"importance.{o}.{e}.{p}", float(v), now, 0) for o, by in (importances or {}).items()
                  for e, ps in by.items() for p, v in ps.items()]
        if values:
            self._client.log_batch(self.parent_run_id, metrics=values)

    def finish(self, summary: dict[str, float], status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
        """Search-level metrics on the parent run (and `tags`: where its result figures come from), then close it."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self._client.log_batch(self.parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()],
                               tags=[RunTag(k, v[:5000]) for k, v in (tags or {}).items()])
        self._client.set_terminated(self.parent_run_id, status)

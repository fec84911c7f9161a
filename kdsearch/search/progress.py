"""A live terminal view of a search (trials, status, best so far), as a Tune callback on the driver."""

from __future__ import annotations

import time

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..config.space import split_pair
from ..core import figures, results
from ..core.figures import Figure


class SearchProgress(tune.Callback):
    def __init__(self, metric: str, mode: str, max_epochs: int):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.rows: dict[str, dict] = {}
        self._live: Live | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a terminal handle does not travel
        return {**self.__dict__, "_live": None}

    def setup(self, **info) -> None:
        self._start = time.monotonic()
        self._live = Live(self.render(), console=Console(stderr=True), refresh_per_second=2)
        self._live.start()

    def _update(self, trial, status: str | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"config": dict(trial.config), "epoch": 0, "value": None})
        result = trial.last_result or {}
        if self.metric in result:
            row["epoch"], row["value"] = int(result.get("training_iteration", 0)), float(result[self.metric])
            row["result"] = result
        row["status"] = status or trial.status
        if self._live is not None:
            self._live.update(self.render())

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._update(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._update(trial, "RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        ended = results.ended(trial.last_result or {}, self.max_epochs)
        self._update(trial, {"completed": "done", "stopped_early": "stopped (ASHA)", "diverged": "diverged"}[ended])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._update(trial, "errored")

    def on_experiment_end(self, trials, **info) -> None:
        for t in trials:  # stopped by the search's time budget: Tune sends no on_trial_complete for them
            row = self.rows.get(t.trial_id)
            if t.status == "TERMINATED" and row is not None and row["status"] == "RUNNING":
                ended = results.ended(t.last_result or {}, self.max_epochs, cut=True)
                self._update(t, {"completed": "done", "budget_cut": "cut (time budget)", "diverged": "diverged"}[ended])
        if self._live is not None:
            self._live.stop()

    def best(self) -> Figure | None:
        """The best finished trial so far (core.figures.best: all epochs, the shipped file, the whole split)."""
        return figures.best([Figure.of_result(r["result"], self.metric, self.max_epochs, trial=trial_id,
                                              config=r["config"]) for trial_id, r in self.rows.items()
                             if r.get("result")], self.mode)

    def render(self) -> Table:
        best = self.best()
        elapsed = time.monotonic() - getattr(self, "_start", time.monotonic())
        caption = (f"best so far: {best.trial} {best.text()}" if best else "no trial has finished yet") + \
            f"; {elapsed:.0f} s into the search"
        table = Table(title="kdsearch: trials", caption=caption)
        for col in ("trial", "student", "loss", "alpha", "T", "lr", "epoch", self.metric, "status"):
            table.add_column(col, justify="left" if col in ("trial", "student", "loss", "status") else "right")
        for trial_id, r in self.rows.items():
            c = split_pair(r["config"])
            student = f"{c.get('student')} {c['precision']}" if c.get("precision") not in (None, "fp32") else \
                str(c.get("student"))
            table.add_row(trial_id, student, str(c.get("loss", "kd")), _f(c.get("alpha")),
                          _f(c.get("temperature")), _f(c.get("lr")),
                          f"{r['epoch']}/{self.max_epochs}", _f(r["value"]), r["status"])
        return table


def _f(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

"""A finished (or stopped) search as Ray Tune saved it, for the commands that read one: export-best and report.

Ray Tune stays in `search/`: the deploy step asks here and gets Tune's `ExperimentAnalysis` back.
"""

from __future__ import annotations

from ..config import Config
from ..core.figures import Figure
from ..runtime.experiment import experiment_dir, read_search_state


def search_analysis(cfg: Config):
    """The config's search as Tune's ExperimentAnalysis (metric and mode from the config), or None when there is
    no search to read at its folder yet."""
    from ray import tune  # here, not at the top: `kdsearch report` on a config without a search never starts Ray

    path = experiment_dir(cfg)
    if not tune.Tuner.can_restore(str(path)):
        return None
    return tune.ExperimentAnalysis(str(path), default_metric=cfg.search.metric, default_mode=cfg.search.resolved_mode)


def budget_cut(cfg: Config) -> set[str]:
    """Ids of the search's trials its time budget cut, as the run recorded them in its state (tuner.run_search)."""
    return set(read_search_state(cfg).get("budget_cut", []))


def trial_figure(cfg: Config, trial, cut: bool = False, result: dict | None = None) -> Figure:
    """A Tune trial's last result (or `result`) as a Figure of the search's metric; `cut`: the time budget stopped
    it."""
    return Figure.of_result(result if result is not None else (trial.last_result or {}), cfg.search.metric,
                            cfg.search.max_epochs, trial=trial.trial_id, config=dict(trial.config),
                            precision=cfg.student.precision, cut=cut)


def file_sizes(trials) -> dict[str, float]:
    """trial id -> its shipped file's MB (a tie on the metric goes to the smaller file)."""
    return {t.trial_id: float(t.last_result["size_mb"]) for t in trials
            if isinstance((t.last_result or {}).get("size_mb"), (int, float))}

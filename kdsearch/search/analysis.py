"""A finished (or stopped) search as Ray Tune saved it, for the commands that read one: export-best and report.

Ray Tune stays in `search/`: the deploy step asks here and gets Tune's `ExperimentAnalysis` back.
"""

from __future__ import annotations

from ..config import Config
from ..runtime.experiment import experiment_dir


def search_analysis(cfg: Config):
    """The config's search as Tune's ExperimentAnalysis (metric and mode from the config), or None when there is
    no search to read at its folder yet."""
    from ray import tune  # here, not at the top: `kdsearch report` on a config without a search never starts Ray

    path = experiment_dir(cfg)
    if not tune.Tuner.can_restore(str(path)):
        return None
    return tune.ExperimentAnalysis(str(path), default_metric=cfg.search.metric, default_mode=cfg.search.resolved_mode)

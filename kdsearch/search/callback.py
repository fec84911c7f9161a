"""The search's MLflow record as Ray Tune calls it: `tracking.search.SearchTracker` (MLflow, no Ray) with Tune's
callback base, so that Tune stays in `search/` and MLflow in `tracking/`."""

from __future__ import annotations

from ray import tune

from ..tracking.search import SearchTracker


class SearchCallback(SearchTracker, tune.Callback):
    """Tune calls the tracker's hooks (setup, on_trial_start, on_trial_result, ...) on the driver."""

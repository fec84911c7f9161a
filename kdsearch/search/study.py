"""The Optuna study a search keeps, and warm starts from an earlier search's.

Each search's study lives in Optuna's RDB storage at `output.dir/optuna.db` (SQLite), one study per search named
after it (`name`), so `optuna-dashboard sqlite:///runs/NAME/optuna.db` opens it while the search runs and after,
and `kdsearch run --resume` continues it: Ray Tune's restored searcher holds the same storage. The study carries the
fingerprints of what its values depend on (teacher, data, metric and objectives, max_epochs) as user attributes.

`search.warm_start: PATH` names an earlier search's `output.dir` (`PATH#STUDY` where it holds several studies).
When its fingerprints match this search's, its trials are added to the new study as they ended (Optuna's
`add_trials`: COMPLETE with their values, PRUNED with their intermediate values, FAIL) and the start points are
skipped; otherwise its best finished configurations are enqueued first, before the start points. Either way only
trials whose parameters lie in this search's space are used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from ..config import Config
from ..core.errors import KdsearchError
from ..core.io import fingerprint

log = logging.getLogger("kdsearch")

STUDY_FILE = "optuna.db"
WARM_POINTS = 3
"""Best configurations of an earlier search enqueued when its fingerprints differ."""
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_url(folder: Path) -> str:
    return f"sqlite:///{(Path(folder) / STUDY_FILE).resolve()}"


def storage(cfg: Config) -> optuna.storages.RDBStorage:
    """This config's study storage (the folder is made: the search writes there anyway)."""
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(storage_url(cfg.output_dir))


def set_aside(store: optuna.storages.BaseStorage, name: str) -> str | None:
    """A fresh search whose name already has a study (its Ray experiment was moved away, the study left here):
    that study is copied to `NAME.old-K` and removed, so the new search starts empty and nothing is lost. Returns
    the new name, None when there was no such study."""
    names = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if name not in names:
        return None
    k = 1 + sum(n.startswith(f"{name}.old-") for n in names)
    optuna.copy_study(from_study_name=name, from_storage=store, to_storage=store, to_study_name=f"{name}.old-{k}")
    optuna.delete_study(study_name=name, storage=store)
    log.info("optuna study %r set aside as %r (a fresh search of that name starts)", name, f"{name}.old-{k}")
    return f"{name}.old-{k}"


def fingerprints(cfg: Config, teacher_prints: list[str], data) -> dict[str, Any]:
    """What a study's values depend on: a warm start adds an earlier study's trials only when all of these match.
    `teacher_prints`: the teacher members' fingerprints (they change whenever its outputs could); `data`: the
    search's Dataset (its training pool with the labels the student sees, and the split)."""
    return {"teacher": fingerprint(teacher_prints),
            "data": fingerprint({"pool": data.pool_fingerprint, "split": data.fingerprint,
                                 "labels": data.pool_labels().tolist()}),
            "metric": cfg.search.metric, "objectives": cfg.search.objectives or [cfg.search.metric],
            "max_epochs": cfg.search.max_epochs}


def warm_source(cfg: Config) -> tuple[str, str]:
    """(storage URL, study name) of search.warm_start; KdsearchError (exit 2) when there is none to read."""
    raw = str(cfg.search.warm_start)
    folder, _, name = raw.partition("#")
    db = Path(folder) / STUDY_FILE
    if not db.is_file():
        raise KdsearchError(f"search.warm_start {raw}: no {STUDY_FILE} there; give an earlier search's output.dir "
                            "(a search run with this kdsearch stores its study there)")
    url = storage_url(Path(folder))
    names = [s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)]
    if name and name not in names or not names:
        raise KdsearchError(f"search.warm_start {raw}: {db} holds no study {name or ''!r} (it holds: "
                            f"{', '.join(names) or 'none'}); give one of them as PATH#STUDY")
    if not name:
        if len(names) > 1 and cfg.name not in names:
            raise KdsearchError(f"search.warm_start {raw}: {db} holds several studies ({', '.join(names)}); say which "
                                f"as {folder}#STUDY")
        name = names[0] if len(names) == 1 else cfg.name
    return url, name


@dataclass
class WarmStart:
    """What an earlier search gives this one (see the module docstring)."""

    source: str
    """PATH#STUDY it came from."""
    matched: bool
    """Its fingerprints match: its trials join the study, the start points are skipped."""
    trials: list[FrozenTrial] = field(default_factory=list)
    """Its ended trials, remade on this search's distributions (matched)."""
    points: list[dict[str, Any]] = field(default_factory=list)
    """Its best finished configurations, to enqueue first (not matched)."""
    skipped: int = 0
    """Its ended trials outside this search's space."""
    differs: list[str] = field(default_factory=list)
    """Which fingerprints differ (not matched)."""

    def line(self) -> str:
        out = f"warm start from {self.source}: "
        if self.matched:
            states = {s: sum(t.state == s for t in self.trials) for s in ENDED}
            out += (f"{len(self.trials)} trials added ({states[TrialState.COMPLETE]} complete, "
                    f"{states[TrialState.PRUNED]} pruned, {states[TrialState.FAIL]} failed; teacher and data "
                    "match), start points skipped")
        else:
            out += (f"fingerprints differ ({', '.join(self.differs)}): its {len(self.points)} best configurations "
                    "enqueued first, then the start points")
        return out + (f"; {self.skipped} of its trials lie outside this space, not used" if self.skipped else "")


def read_warm_start(cfg: Config, prints: dict[str, Any], space: dict[str, BaseDistribution]) -> WarmStart:
    """search.warm_start read against this search's fingerprints and Optuna space (the study's directions follow
    from its metric and objectives, which the fingerprints hold)."""
    url, name = warm_source(cfg)
    earlier = optuna.load_study(study_name=name, storage=url)
    source = f"{str(cfg.search.warm_start).partition('#')[0]}#{name}"
    ended = [t for t in earlier.get_trials(deepcopy=False, states=ENDED)]
    usable = [t for t in ended if _inside(t.params, space)]
    theirs = earlier.user_attrs
    differs = [k for k in prints if theirs.get(k) != prints[k]]
    if not differs:
        trials = [optuna.trial.create_trial(state=t.state, values=t.values if t.state != TrialState.FAIL else None,
                                            params=t.params, distributions={k: space[k] for k in t.params},
                                            user_attrs={**t.user_attrs, "warm_start_from": f"{source}:{t.number}"},
                                            intermediate_values=t.intermediate_values) for t in usable]
        return WarmStart(source, True, trials=trials, skipped=len(ended) - len(usable))
    done = [t for t in usable if t.state == TrialState.COMPLETE]
    sign = 1.0 if earlier.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    best = sorted(done, key=lambda t: -sign * t.values[0])[:WARM_POINTS]
    return WarmStart(source, False, points=[dict(t.params) for t in best], skipped=len(ended) - len(usable),
                     differs=differs)


def _inside(params: dict[str, Any], space: dict[str, BaseDistribution]) -> bool:
    """The trial set exactly this space's keys, each to a value its distribution holds."""
    if set(params) != set(space):
        return False
    for k, v in params.items():
        d = space[k]
        if isinstance(d, CategoricalDistribution):
            if v not in d.choices:
                return False
        elif not d.low <= v <= d.high:  # Float and Int distributions
            return False
    return True

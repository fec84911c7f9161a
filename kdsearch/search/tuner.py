"""`kdsearch run`: Ray Tune + Optuna (TPE) + ASHA over the config's space, under the size limit.

The driver does the once-per-search work (data, size filter, teacher and its
outputs), ships it to trials through the object store (`tune.with_parameters`),
logs to MLflow through callbacks, and exports the best student at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Domain

from ..config import Config
from ..config.space import split_pair
from ..core import figures
from ..core.devices import resolve_device
from ..core.errors import KdsearchError
from ..core.figures import Figure, KdAdded
from ..core.results import ENDINGS, ended
from ..data.dataset import Dataset
from ..distill.distiller import Distiller, Hparams, Prepared, prepare
from ..models import deployed
from ..preflight import Plan, preflight
from ..runtime import interrupts, quiet
from ..runtime.experiment import RESCORED_FILE, TRIAL_STATE_FILE, experiment_dir, read_search_state, write_search_state
from ..teachers.worker import on_worker, worker_resources
from ..tracking import check_store
from ..tracking.search import SearchTracker
from .analysis import file_sizes, trial_figure
from .asha import PairedASHA
from .callback import SearchCallback
from .gpu_memory import preflight_gpu, release_cuda
from .progress import SearchProgress
from .searcher import HonestOptunaSearch
from .study import WarmStart, fingerprints, read_warm_start, set_aside, storage, warm_source
from .trainable import distill_trainable
from .tune_space import kd_pair, start_points, tune_space

log = logging.getLogger("kdsearch")

@dataclass
class SearchResult:
    experiment_path: Path
    trials: dict[str, int]
    """completed / stopped_early / budget_cut / diverged / errored counts."""
    best: dict[str, Any] | None
    """trial_id, config, metrics and `figure` (core.figures.Figure) of the search's pick: the best finished trial, or
    when none finished the best of those that ran the most epochs, re-scored as its shipped file on the whole val
    split (`rescored`, with `chosen_on`: the figure it was picked on)."""
    wall_seconds: float
    fit_seconds: float
    """Wall time of Tuner.fit alone (the trials), without the driver's preparation and export."""
    trial_seconds: float
    """Sum over trials of Tune's time_total_s: each trial's own running time."""
    trial_epochs: int
    """Epochs run, summed over trials."""
    teacher_forward_passes: int
    teacher_seconds: float
    """Seconds the teacher ran for this search: computing cached outputs, or live inside trials."""
    parent_run_id: str
    students: list[str]
    images: dict[str, int]
    """labeled / transfer / val / test image counts."""
    class_names: list[str]
    kd_added: KdAdded | None = None
    """The no-KD control against its matched KD trial (core.figures.kd_added); None without a control."""
    front: list[dict[str, Any]] = field(default_factory=list)
    """The Pareto front of the finished trials (finished_study): trial_id, student, format, the objectives."""
    importances: list[str] = field(default_factory=list)
    """What mattered, as lines (finished_study.importance_lines)."""
    warm_start: str | None = None
    """What search.warm_start gave the search, as a line (study.WarmStart.line); None without one."""
    data: Dataset | None = field(default=None, repr=False)
    """The search's data as the driver decoded it once: `export_best` takes it rather than loading it again."""


def init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    check_address(address or os.environ.get("RAY_ADDRESS"))
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=True)
        interrupts.reinstall()  # ray.init replaces the SIGTERM handler
    except ConnectionError as e:
        raise KdsearchError(f"--address {address}: cannot reach a Ray cluster ({e}); start one with `ray start --head` "
                            "or `ray up ray_cluster.yaml`, or drop --address to run locally") from None


CONNECT_TIMEOUT_S = 5.0  # a head node answers a TCP connect in milliseconds; a wrong address never does


def check_address(address: str | None) -> None:
    """A cluster address (host:port, ray://host:port) must accept a connection before Ray is asked to join it:
    Ray's own client retries an unreachable GCS for minutes (over 10 on Ray 2.5x) before it gives up."""
    if address in (None, "", "auto", "local"):
        return  # this machine's own Ray, or the one `ray start` recorded here
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")  # ray://, http:// (a job's address)
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        raise KdsearchError(f"--address {address}: cannot reach a Ray cluster there ({type(e).__name__}: {e}); start "
                            "one with `ray start --head` or `ray up ray_cluster.yaml` and give its host:port, or drop "
                            "--address (and RAY_ADDRESS) to run locally") from None


def run_search(cfg: Config, resume: bool = False, address: str | None = None, device: str = "auto",
               plan: Plan | None = None) -> SearchResult:
    """Run (or continue) the search and return its summary; raises KdsearchError on user errors. `plan`: the
    command's preflight, made here when not given."""
    path = experiment_dir(cfg)
    resume = check_resume(cfg, path, resume)
    # config, data paths, teacher files, size limit, output.dir, MLflow: before anything is written
    plan = plan or preflight(cfg)
    if cfg.search.warm_start is not None:
        warm_source(cfg)  # an earlier study there to read
    start = time.perf_counter()
    init_ray(address)  # before the teacher: its work may run as a Ray task on a GPU node (teachers/worker.py)
    early = (f"search {cfg.name!r} interrupted before its first trial; nothing exported. `kdsearch run CONFIG "
             "--resume` starts it, reusing what is cached (data, teacher)")
    interrupts.on_sigterm(early)
    try:
        prepared, shipped = prepare_driver(cfg, device, plan)
        tracker, state = start_tracking(cfg, prepared, resume)
        prints = fingerprints(cfg, [m.fingerprint for m in prepared.teacher.members], prepared.data)
        tuner, warm = make_tuner(cfg, path, shipped, tracker, resume, prints)
        if warm is not None:
            state["warm_start"] = warm.line()
            write_search_state(cfg, state)
    except interrupts.Interrupted as e:
        raise interrupts.Interrupted(e.signum, early) from None
    fit_start = time.perf_counter()

    def stopped(signum: int) -> str:
        return (f"search {cfg.name!r} stopped ({signal.Signals(signum).name}); nothing exported. Finished trials and "
                "the others' last checkpoints are kept: `kdsearch run CONFIG --resume` continues it")

    interrupts.on_sigterm(stopped(signal.SIGTERM))
    try:
        with interrupts.search() as stop:
            tuner.fit()
    except interrupts.Interrupted as e:
        raise interrupts.Interrupted(e.signum, stopped(e.signum)) from None
    fit_seconds = time.perf_counter() - fit_start
    wall = time.perf_counter() - start
    trials = tune.ExperimentAnalysis(str(path)).trials  # with their status: what ended and what was stopped
    cut = tracker.budget_cut()
    summary = summarize(trials, cfg, cut)
    teacher_passes, teacher_seconds = teacher_totals(prepared, trials)
    best = summary.pop("best")
    added = summary.pop("kd_added")
    metric = cfg.search.metric
    if best is not None and not best["figure"].finished:  # no trial ran all its epochs: re-scored as it would ship
        best = rescored(cfg, best, prepared)
        tracker.log_whole_split(best["trial_id"], best["metrics"])
    # Tune returns normally from a stop it was asked for: a signal, or trials left unfinished, mean interrupted
    unfinished = sum(t.status not in ("TERMINATED", "ERROR") for t in trials)
    stopped_by = stop.signum or (signal.SIGINT if unfinished else None)
    front, importances = ([], []) if stopped_by else tradeoffs(cfg, trials, tracker)  # a finished search's result
    tracker.finish({"wall_seconds": wall, "teacher_forward_passes": teacher_passes, "teacher_seconds": teacher_seconds,
                    **{f"teacher_{k}": v for k, v in prepared.teacher_metrics.items()},
                    **{f"trials_{k}": v for k, v in summary["trials"].items()},
                    **final_figures(metric, best, added)}, status="KILLED" if stopped_by else "FINISHED",
                   tags=figure_tags(best, added))
    write_search_state(cfg, {**state, "finished": stopped_by is None, "trials": summary["trials"],
                             "budget_cut": sorted(cut)})
    if stopped_by:
        done = sum(summary["trials"].values())
        raise interrupts.Interrupted(stopped_by, f"search {cfg.name!r} interrupted with {done} of "
                                     f"{cfg.search.num_samples} trials finished; nothing exported. Ray Tune saved "
                                     f"its state in {path}: `kdsearch run CONFIG --resume` continues it")
    return SearchResult(path, summary["trials"], best, wall, fit_seconds, summary["trial_seconds"],
                        summary["trial_epochs"], teacher_passes, teacher_seconds, state["parent_run_id"],
                        prepared.students, prepared.data.counts(), prepared.data.class_names, added, front,
                        importances, state.get("warm_start"), prepared.data)


def tradeoffs(cfg: Config, trials, tracker: SearchTracker) -> tuple[list[dict[str, Any]], list[str]]:
    """The finished trials' Pareto front (rows, best on the first objective first) and importance lines, logged on the
    parent run (finished_study)."""
    import tempfile

    from . import plots
    from .finished_study import objectives, rebuild

    done = [t for t in trials if t.status == "TERMINATED" and t.last_result]
    study = rebuild(done, cfg)
    names = objectives(cfg)
    by_id = {t.trial_id: t for t in done}

    def row(trial_id: str) -> dict[str, Any]:
        point = split_pair(by_id[trial_id].config)
        r, fmt = by_id[trial_id].last_result, point.get("precision") or cfg.student.precision
        return {"trial_id": trial_id, "student": point["student"], "format": fmt,
                **{n: float(r[n]) for n in dict.fromkeys([cfg.search.metric, *names])},
                **study.pairs[point["student"], fmt],  # size and latency: the pair's medians (finished_study)
                "trial_size_mb": float(r["size_mb"]), "trial_latency_ms": float(r["latency_ms"]),
                "val_macro_f1_float": r.get("val_macro_f1_float")}

    front = [row(i) for i in study.front]
    rows = [row(i) for i in study.ids.values()]
    lines = study.importance_lines()
    with tempfile.TemporaryDirectory() as folder:
        plot = plots.pareto_front(rows, set(study.front), cfg.search.metric, Path(folder) / "pareto_front.png") \
            if rows else None
        tracker.log_front(front, plot, study.importances())
    return front, lines


def check_resume(cfg: Config, path: Path, resume: bool) -> bool:
    """Whether there is a search to continue; a fresh run must not land on an existing one."""
    restorable = tune.Tuner.can_restore(str(path))
    if resume and not restorable:  # stopped before its first trial: the search starts, reusing what is cached
        log.info("--resume: no trial has run yet at %s; starting the search", path)
    if not resume and restorable:
        raise KdsearchError(f"a search named {cfg.name!r} already exists at {path}; continue it with --resume, "
                            f"or move it away (mv {path} {path}.old) or set another name (--set name=...)")
    return resume and restorable


def prepare_driver(cfg: Config, device: str, plan: Plan) -> tuple[Prepared, Prepared]:
    """The once-per-search work (data, students that fit, teacher and its outputs): what the driver keeps, and
    what trials get through the object store. With cached outputs trials get no teacher model at all (a MedSigLIP
    is gigabytes); a live teacher goes on the CPU and each trial moves it to its own device."""
    prepared = prepare(cfg, resolve_device(device), teach_fn=on_worker(worker_resources(cfg)), plan=plan)
    check_store(cfg)
    shipped = replace(prepared, teacher=prepared.teacher.without_models()) if prepared.targets is not None else prepared
    prepared.teacher.to("cpu")
    release_cuda()  # the teacher's CUDA memory goes back before trials share the GPU
    preflight_gpu(cfg, prepared)
    log.info("students that fit %g MB: %s", cfg.student.max_size_mb, ", ".join(f"{s} {f}" for s, f in prepared.pairs))
    return prepared, shipped


def start_tracking(cfg: Config, prepared: Prepared, resume: bool) -> tuple[SearchTracker, dict[str, Any]]:
    """The MLflow parent run (the same one on --resume) and the search state saved beside Ray's."""
    state = read_search_state(cfg) if resume else {}
    state.setdefault("search_id", uuid.uuid4().hex)
    sizes = {f"{s}/{f}": prepared.deployments.file_bytes[s, f] / 1e6 for s, f in prepared.pairs}
    tracker = SearchCallback(cfg, state["search_id"], sizes, prepared.data.class_names)
    state["parent_run_id"] = tracker.start()
    state["teacher"] = {**prepared.teacher.identity, **prepared.teacher_metrics}
    state["finished"] = False  # until Tune returns from a search nobody stopped
    write_search_state(cfg, state)
    return tracker, state


def tpe_sampler(cfg: Config, start_points: int) -> optuna.samplers.TPESampler:
    """Optuna's TPE with kdsearch's settings (config.sections.TpeSettings); `start_points`: the enqueued points."""
    tpe = cfg.search.tpe
    startup = tpe.startup_trials or max(4, start_points + cfg.search.max_concurrent)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup, multivariate=tpe.multivariate,
                                      constant_liar=tpe.constant_liar)


def make_tuner(cfg: Config, path: Path, shipped: Prepared, tracker: SearchTracker, resume: bool,
               prints: dict[str, Any]) -> tuple[tune.Tuner, WarmStart | None]:
    """Tuner + OptunaSearch (TPE, start points first, its study stored in output.dir's optuna.db) + ASHA, or the
    saved one restored on --resume; with the warm start it began from (search.warm_start). `prints`: the search's
    fingerprints (study.fingerprints)."""
    res = cfg.search.resources_per_trial
    trainable = tune.with_resources(tune.with_parameters(distill_trainable, cfg=cfg, prepared=shipped),
                                    {"cpu": res.cpu, "gpu": res.gpu})
    # Short epochs checkpoint often; Tune then snapshots its state often (cheap here) and warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True), None
    metric, mode = cfg.search.metric, cfg.search.resolved_mode
    space = tune_space(cfg.search.space, shipped.pairs)
    # Optuna needs something to sample; a fully fixed space just repeats that configuration (Tune's default).
    searchable = any(isinstance(v, Domain) for v in space.values())
    quiet.quiet_optuna()  # no "A new study created in RDB"
    points = start_points(cfg.search.space, shipped.pairs) if cfg.search.start_points else None
    warm = None
    if not searchable:
        search_alg = None
    elif cfg.search.algorithm == "random":  # Tune's own random sampling, seeded: the baseline to beat
        search_alg = BasicVariantGenerator(random_state=cfg.seed)
    else:
        search_alg, points, warm = optuna_search(cfg, space, points, prints)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode,
            search_alg=search_alg,
            # the no-KD control and its matched KD start point run to the end: their difference is "KD added"
            scheduler=PairedASHA(keep=kd_pair(points or []) if isinstance(search_alg, HonestOptunaSearch) else [],
                                 time_attr="training_iteration", max_t=cfg.search.max_epochs,
                                 grace_period=cfg.search.grace_period, reduction_factor=cfg.search.reduction_factor),
            num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent,
            time_budget_s=cfg.search.time_budget_s,
            # A fresh worker per trial re-imports torch and re-fetches the data (seconds each); reusing the
            # slots' workers keeps that to once per slot.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest epoch is all a resume needs
            callbacks=[tracker, SearchProgress(metric, mode, cfg.search.max_epochs)],
            verbose=0,
        ),
    ), warm


def optuna_search(cfg: Config, space: dict[str, Any], points: list[dict[str, Any]] | None,
                  prints: dict[str, Any]) -> tuple[HonestOptunaSearch, list[dict[str, Any]] | None, WarmStart | None]:
    """kdsearch's searcher on a fresh stored study (study.py), with the start points it enqueues (None: skipped) and
    the warm start it read: a matching one's trials replace the start points, another's best configurations are
    enqueued before them."""
    warm = None
    if cfg.search.warm_start is not None:
        warm = read_warm_start(cfg, prints, OptunaSearch.convert_search_space(space))
        points = None if warm.matched else points
    queued = [*warm.points, *(points or [])] if warm and not warm.matched else points
    queued = (queued or [])[:cfg.search.num_samples]  # more would wait in the stored study for trials never run
    store = storage(cfg)
    set_aside(store, cfg.name)
    search_alg = HonestOptunaSearch(sampler=tpe_sampler(cfg, len(queued or [])), points_to_evaluate=queued or None,
                                    max_epochs=cfg.search.max_epochs, objectives=cfg.search.objectives,
                                    storage=store, study_name=cfg.name, study_attrs=prints,
                                    warm_trials=warm.trials if warm else [])
    return search_alg, points, warm


def teacher_totals(prepared: Prepared, trials) -> tuple[int, float]:
    """Teacher forward passes and seconds for the whole search: the driver's (cached outputs) plus live teachers'
    inside trials (each trial's last report counts its whole run in its process)."""
    reported = [t.last_result for t in trials if t.last_result]
    passes = prepared.teacher.forward_passes + sum(int(m.get("teacher_forward_passes", 0)) for m in reported)
    seconds = prepared.teacher.seconds + sum(float(m.get("teacher_seconds", 0.0)) for m in reported)
    return passes, seconds


def summarize(trials, cfg: Config, cut: set[str] = frozenset()) -> dict[str, Any]:
    """Outcomes of the trials that ended (Tune's Trial objects; `cut`: the ids the time budget stopped) and the best
    of them (results.best: whole-split scores first); a trial still pending or running when the search was stopped
    counts in neither."""
    counts = {**dict.fromkeys(ENDINGS, 0), "errored": 0}
    trial_seconds, trial_epochs, finished = 0.0, 0, []
    for t in trials:
        m = t.last_result or {}
        trial_seconds += float(m.get("time_total_s", 0.0))
        trial_epochs += int(m.get("training_iteration", 0))
        if t.status == "ERROR":
            counts["errored"] += 1
        elif t.status == "TERMINATED" and cfg.search.metric in m:
            counts[ended(m, cfg.search.max_epochs, cut=t.trial_id in cut)] += 1
            finished.append(t)
    mode = cfg.search.resolved_mode
    shown = [trial_figure(cfg, t, cut=t.trial_id in cut) for t in finished]
    top = figures.chosen(shown, mode, file_sizes(finished))
    by_id = {t.trial_id: t for t in finished}
    pick = None if top is None else by_id[top.trial]
    summary = None if top is None else {"trial_id": top.trial, "config": dict(pick.config),
                                        "metrics": dict(pick.last_result), "figure": top,
                                        "checkpoint": pick.checkpoint.path if pick.checkpoint else None}
    return {"trials": counts, "best": summary, "kd_added": figures.kd_added(shown, mode),
            "trial_seconds": trial_seconds, "trial_epochs": trial_epochs}


def final_figures(metric: str, best: dict[str, Any] | None, added: KdAdded | None) -> dict[str, float]:
    """The parent run's result metrics: the pick's shipped-file whole-split figure (and, when it was re-scored, the
    figure it was picked on); KD added only from a matched finished pair."""
    out: dict[str, float] = {}
    if best is not None:
        out[f"best_{metric}"] = float(best["metrics"][metric])
        if "chosen_on" in best["metrics"]:  # re-scored: no trial finished
            out[f"best_{metric}_chosen_on"] = float(best["metrics"]["chosen_on"]["value"])
            if f"subset_{metric}" in best["metrics"]:
                out[f"best_{metric}_rung_subset"] = float(best["metrics"][f"subset_{metric}"])
    if added is not None and added.gain is not None:
        out[f"kd_added_{metric}"], out[f"no_kd_control_{metric}"] = added.gain, added.control.value
    return out


def figure_tags(best: dict[str, Any] | None, added: KdAdded | None) -> dict[str, str]:
    """Where the parent run's result metrics come from, in words (MLflow tags)."""
    tags = {}
    if best is not None:
        tags["kdsearch.best"] = f"trial {best['trial_id']}: {best['figure'].text()}"
    if added is not None:
        tags["kdsearch.kd_added"] = added.line()
    return tags


def rescored(cfg: Config, top: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    """The search's pick when no trial ran all its epochs (chosen on a float score after k of N epochs, on the
    rung subset or the whole split), made into its shipped file from its last checkpoint and scored on the whole val
    split, as a finished trial's last epoch is (Distiller.deploy): the files go into its checkpoint (export copies
    them); its `metrics` then hold the shipped file's whole-split figures, `chosen_on` the figure it was picked on
    (and subset_val_* when that was a subset score), and `figure` says it stopped after k of N epochs."""
    hp = Hparams.from_mapping(top["config"])
    folder = Path(top["checkpoint"])
    distiller = Distiller(cfg, hp, prepared, "cpu")
    distiller.load_state_dict(torch.load(folder / TRIAL_STATE_FILE, weights_only=True, map_location="cpu"))
    whole = distiller.deploy()
    (folder / deployed.FILE).write_bytes(distiller.shipped)
    torch.save(distiller.weights, folder / deployed.WEIGHTS_FILE)
    before = top["metrics"]
    subset = {f"subset_{k}": before[k] for k in ("val_loss", "val_accuracy", "val_macro_f1", "val_images")
              if k in before}
    if before.get("val_full", True):
        subset = {}  # picked on a whole-split float score: no subset figure to keep
    chosen_on = top["figure"].as_dict()
    metrics = {**before, **subset, **whole, "rescored": True, "chosen_on": chosen_on}
    (folder / RESCORED_FILE).write_text(json.dumps({k: v for k, v in metrics.items() if k in whole or k in subset
                                                    or k in ("rescored", "chosen_on")}
                                                   | {"val_confusion": None}))  # no subset confusion left over
    figure = Figure.of_result(metrics, cfg.search.metric, cfg.search.max_epochs, trial=top["trial_id"],
                              config=top["config"], precision=cfg.student.precision,
                              cut=top["figure"].ending == "budget_cut")  # as export reads it back (rescored.json)
    return {**top, "metrics": metrics, "figure": figure}

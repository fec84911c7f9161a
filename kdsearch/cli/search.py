"""The search family: `run`, `bench`, `train`, `train-teacher`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..core.errors import KdsearchError
from .common import (
    AddressOpt,
    ConfigArg,
    DeviceOpt,
    SetOpt,
    classes_line,
    console,
    counts_line,
    err_console,
    fmt_value,
    load_locked,
)
from .deploy import print_export, print_front, submit_and_report


def run(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted search of this config")] = False,
    address: AddressOpt = None,
    device: DeviceOpt = "auto",
    submit_: Annotated[bool, typer.Option("--submit", help="then upload the best student to the config's "
                                          "evaluation server and wait for its score")] = False,
) -> None:
    """The search: Ray Tune + Optuna (TPE) + ASHA over the config's space; logs to MLflow; exports the best."""
    from ..deploy.export import export_best
    from ..search.study import STUDY_FILE, storage_url
    from ..search.tuner import run_search

    cfg = load_locked(config, set_, "run")
    if submit_:
        from ..deploy.submit import connect

        connect(cfg)  # the submit section and the token, checked before an hour of search
    result = run_search(cfg, resume=resume, address=address, device=device)
    t = result.trials
    console.print(counts_line(result.images))
    console.print(classes_line(result.class_names))
    console.print(f"trials: {t['completed']} completed, {t['stopped_early']} stopped early by ASHA, "
                  + (f"{t['budget_cut']} cut by search.time_budget_s, " if t["budget_cut"] else "")
                  + (f"{t['diverged']} diverged, " if t["diverged"] else "") +
                  f"{t['errored']} errored; wall time {result.wall_seconds:.1f} s; teacher forward passes "
                  f"{result.teacher_forward_passes} ({result.teacher_seconds:.1f} s)")
    console.print(f"Ray Tune's results and checkpoints: {result.experiment_path}")
    if (cfg.output_dir / STUDY_FILE).is_file():
        console.print(f"Optuna's study {cfg.name!r}: {storage_url(cfg.output_dir)} (optuna-dashboard opens it)")
    if result.warm_start:
        console.print(result.warm_start)
    if result.best is not None:
        console.print(best_line(result.best))
    if result.kd_added is not None:
        console.print(result.kd_added.line())
    print_front(cfg, result.front)
    for line in result.importances:
        console.print(line)
    if result.best is None:
        raise KdsearchError(f"{result.experiment_path}: no trial finished, nothing to export; "
                            "continue with `kdsearch run CONFIG --resume`")
    exported = export_best(cfg, data=result.data)
    print_export(cfg, exported, config)
    if submit_:
        submit_and_report(cfg, None, wait=True)


def best_line(best: dict) -> str:
    """The summary's line on the search's pick: its figure, and what it was picked on when no trial finished."""
    line = f"best trial {best['trial_id']}: {best['figure'].text()}"
    chosen = best["metrics"].get("chosen_on")  # set when the search re-scored its pick (tuner.rescored)
    if chosen:
        from ..core.figures import Figure

        line += f"; no trial ran all its epochs: chosen on {Figure.from_dict(chosen).text()}, re-scored as it ships"
    return line


def bench(
    config: ConfigArg,
    set_: SetOpt = None,
    out: Annotated[Optional[Path],
                   typer.Option(help="JSON file to write (default output.dir/bench/bench.json)")] = None,
    epochs: Annotated[int, typer.Option(help="epochs timed for the KD/CE epoch ratio")] = 5,
    device: DeviceOpt = "auto",
) -> None:
    """Measure teacher passes, KD vs CE epoch time, search efficiency and per-trial overhead (writes JSON)."""
    from ..core.devices import resolve_device
    from ..search.bench import run_bench

    cfg = load_locked(config, set_, "bench")
    figures = run_bench(cfg, str(resolve_device(device)), epochs)
    path = out or cfg.output_dir / "bench" / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
    console.print_json(json.dumps(figures))
    console.print(f"written: {path}")


def train(config: ConfigArg, set_: SetOpt = None, device: DeviceOpt = "auto") -> None:
    """One distillation run with fixed hyperparameters, no Ray (debugging and baselines)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..core.devices import resolve_device
    from ..distill.train import run_train

    cfg = load_locked(config, set_, "train")
    progress = Progress(TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=err_console)
    task = progress.add_task("", total=cfg.search.max_epochs)

    def on_start(hp, prepared):
        t, b = prepared.teacher_metrics, prepared.baseline_metrics
        err_console.print(counts_line(prepared.data.counts()))
        err_console.print(classes_line(prepared.data.class_names))
        err_console.print(f"teacher val accuracy {t['val_accuracy']:.4f}, macro-F1 {t['val_macro_f1']:.4f} "
                          f"(majority-class baseline: accuracy {b['val_accuracy']:.4f}, macro-F1 "
                          f"{b['val_macro_f1']:.4f})")
        err_console.print("hyperparameters: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in hp.as_dict().items()))
        progress.start()

    def on_epoch(m):
        progress.update(task, advance=1, description=f"train_loss {m['train_loss']:.4f}  val_accuracy "
                        f"{m['val_accuracy']:.4f}  val_macro_f1 {m['val_macro_f1']:.4f}")

    try:
        result = run_train(cfg, resolve_device(device), on_start=on_start, on_epoch=on_epoch)
    finally:
        progress.stop()
    final = result.history[-1]
    if final["diverged"]:
        err_console.print(f"the student diverged at epoch {final['epoch']} (train_loss {final['train_loss']}); "
                          f"training stopped there. Lower search.space.lr (now {result.hparams.lr:g}) or use "
                          "optimizer adamw")
    table = Table(title=f"kdsearch train: {cfg.name}")
    table.add_column("")
    table.add_column("val accuracy", justify="right")
    table.add_column("val macro-F1", justify="right")
    table.add_row("teacher", f"{result.teacher_metrics['val_accuracy']:.4f}",
                  f"{result.teacher_metrics['val_macro_f1']:.4f}")
    table.add_row(f"student {result.hparams.student} (alpha={result.hparams.alpha:g})",
                  f"{final['val_accuracy']:.4f}", f"{final['val_macro_f1']:.4f}")
    console.print(table)
    from ..core.figures import Figure

    shown = Figure.of_result(final, cfg.search.metric, cfg.search.max_epochs, precision=final["format"])
    console.print(f"student: {shown.text()}")
    console.print(f"student size {final['size_mb']:.2f} MB ({final['format']} TorchScript file); wall time "
                  f"{result.seconds:.1f} s; written to {result.out_dir}; MLflow run {result.run_id} at "
                  f"{cfg.tracking.uri}")


def train_teacher(config: ConfigArg, set_: SetOpt = None, device: DeviceOpt = "auto",
                  address: AddressOpt = None) -> None:
    """Train or load the config's teacher, cache it and its outputs under output.dir."""
    from ..core.devices import resolve_device
    from ..data.dataset import load_dataset
    from ..preflight import preflight
    from ..teachers.step import teach

    cfg = load_locked(config, set_, "train-teacher")
    plan = preflight(cfg, search=False, tracked=False)  # the data's files listed once, handed to the decode
    data = load_dataset(cfg, plan.sources)
    if address is not None or cfg.teacher.resources is not None:
        from ..search.tuner import init_ray
        from ..teachers.worker import teach_on_worker, worker_resources

        init_ray(address)
        worker = worker_resources(cfg)
    else:
        worker = None
    if worker is not None:
        teacher, targets, scores, _ = teach_on_worker(cfg, data, resources=worker)
    else:
        teacher, targets, scores, _ = teach(cfg, data, resolve_device(device))
    passes = f"{targets.forward_passes} forward passes ({targets.seconds:.1f} s)" if targets else "no outputs cached"
    console.print(f"teacher {teacher.name}: val accuracy {scores['val_accuracy']:.4f}, macro-F1 "
                  f"{scores['val_macro_f1']:.4f}; {passes} this run; cached under {cfg.output_dir / 'teacher'}")

"""The `kdsearch` command line. Thin: parse, call, print.

User errors (KdsearchError, a full disk, Click's usage errors) print one line on stderr and exit 2; Ctrl-C exits
130 and SIGTERM 143; anything else is a bug: one line naming a crash log that holds the traceback, exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ..config import Config, load_config
from ..core.errors import KdsearchError
from ..runtime import interrupts, quiet

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Hyperparameter search for knowledge distillation (Ray Tune + Optuna + ASHA, MLflow).")
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

SECRET_NAMES = r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY"
"""Environment variables whose values a crash log never shows."""

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. search_spaces/digits.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE override, dotted into the YAML "
                                                     "(--set search.num_samples=4); repeatable")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Ray cluster address (or RAY_ADDRESS); default: local")]


@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        "-v", "--verbose", help="also show every library's own informational lines (MLflow, Ray, Optuna, torch)")]
        = False) -> None:
    quiet.configure(verbose)


@app.command()
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
    from ..core import results
    from ..deploy.export import export_best
    from ..search.tuner import run_search

    cfg = _load(config, set_, "run")
    if submit_:
        from ..deploy.submit import connect

        connect(cfg)  # the submit section and the token, checked before an hour of search
    result = run_search(cfg, resume=resume, address=address, device=device)
    t = result.trials
    console.print(_counts_line(result.images))
    console.print(_classes_line(result.class_names))
    console.print(f"trials: {t['completed']} completed, {t['stopped_early']} stopped early by ASHA, "
                  + (f"{t['budget_cut']} cut by search.time_budget_s, " if t["budget_cut"] else "")
                  + (f"{t['diverged']} diverged, " if t["diverged"] else "") +
                  f"{t['errored']} errored; wall time {result.wall_seconds:.1f} s; teacher forward passes "
                  f"{result.teacher_forward_passes} ({result.teacher_seconds:.1f} s)")
    console.print(f"Ray Tune's results and checkpoints: {result.experiment_path}")
    if result.best is not None:
        m, metric = result.best["metrics"], cfg.search.metric
        console.print(f"best trial {result.best['trial_id']}: {metric} {m[metric]:.4f} on the whole val split "
                      f"({result.images['val']} images)"
                      + (f"; chosen on {m[f'subset_{metric}']:.4f} on {int(m['subset_val_images'])} of "
                         f"{result.images['val']} val images (the rung subset: no trial ran all its epochs)"
                         if m.get("rescored") else ""))
    if result.kd_added is not None:
        console.print(results.kd_added_line(result.kd_added, cfg.search.metric, cfg.search.max_epochs))
    _print_front(cfg, result.front)
    for line in result.importances:
        console.print(line)
    if result.best is None:
        raise KdsearchError(f"{result.experiment_path}: no trial finished, nothing to export; "
                            "continue with `kdsearch run CONFIG --resume`")
    exported = export_best(cfg)
    _print_export(cfg, exported, config)
    if submit_:
        _submit_and_report(cfg, None, wait=True)


_held = contextlib.ExitStack()
"""Locks a command holds until it ends (main() closes it on every exit path)."""


def _load(config: Path, set_: Optional[list[str]], command: str, shared: bool = False) -> Config:
    """The config, with its output.dir locked for this command (shared for commands that only read it)."""
    from ..runtime.locks import output_lock

    cfg = load_config(config, set_ or [])
    _held.enter_context(output_lock(cfg.output_dir, command, shared))
    return cfg


def _submit_and_report(cfg: Config, file: Optional[Path], wait: bool) -> None:
    from ..deploy.submit import submit

    sub = submit(cfg, file=file, wait=wait, say=lambda m: err_console.print(m))
    local = f"{sub.local_val_macro_f1:.4f}" if sub.local_val_macro_f1 is not None else "-"
    score = f"{sub.score:.4f}" if sub.score is not None else "-"
    console.print(f"submission attempt {sub.attempt if sub.attempt is not None else '?'}: {sub.status}; "
                  f"server score {score}; local val_macro_f1 {local}; MLflow run {sub.run_id}")
    if sub.status == "failed":
        console.print(f"the server failed it: {sub.entry.get('reason') or sub.entry.get('error') or sub.entry}")
    elif sub.status not in ("successful", "failed") and wait:
        console.print(f"still {sub.status} after submit.timeout_s {cfg.submit.timeout_s:g} s; "
                      f"`kdsearch submissions CONFIG --sync` records the verdict later")


@app.command("submit")
def submit_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    file: Annotated[Optional[Path],
                    typer.Option(help="file to upload (default: the export in output.dir/best)")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="upload and record, do not wait for the score; "
                                          "exit 2 if the server's rate limit does not allow a submission now")] = False,
) -> None:
    """Upload the exported student to the config's evaluation server, wait for its score, record it in MLflow."""
    cfg = _load(config, set_, "submit")
    _submit_and_report(cfg, file, wait=not no_wait)


@app.command()
def submissions(
    config: ConfigArg,
    set_: SetOpt = None,
    sync: Annotated[bool, typer.Option("--sync", help="ask the server about submissions not yet scored")] = False,
) -> None:
    """Every submission of this experiment: local val metric vs the server's status and score."""
    from ..deploy import submit as submitting
    from ..tracking import submissions as recorded

    cfg = _load(config, set_, "submissions", shared=not sync)
    if sync:
        err_console.print(f"synced {submitting.sync(cfg)} submission(s) not yet scored")
    table = Table(title=f"{cfg.name}: submissions")
    for col in ("when", "trial", "local val_macro_f1", "attempt", "status", "score", "size"):
        table.add_column(col, justify="left" if col in ("when", "trial", "status") else "right")
    for r in recorded(cfg):
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["start_time"])), r.get("trial_id", "-"),
                      r.get("local_val_macro_f1", "-"), r.get("attempt", "-"), r.get("status", "-"),
                      _fmt(r["score"]) if "score" in r else "-",
                      _fmt(r["model_size"]) if "model_size" in r else "-")
    console.print(table)


@app.command()
def leaderboard(config: ConfigArg, set_: SetOpt = None) -> None:
    """The evaluation server's leaderboard (submit.leaderboard_url)."""
    from ..deploy.submit import leaderboard as fetch

    cfg = load_config(config, set_ or [])
    rows = fetch(cfg)
    table = Table(title=f"leaderboard: {cfg.submit.leaderboard_url}")
    columns = list(rows[0]) if rows else []
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(row.get(c, "") for c in columns))
    console.print(table)


@app.command("export-best")
def export_best_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="folder to write (default output.dir/best)")] = None,
    partial: Annotated[bool, typer.Option("--partial", help="export from a search that was stopped before it "
                                          "finished (its model card says so)")] = False,
    trial: Annotated[Optional[str], typer.Option("--trial", help="export this finished trial instead of the "
                                                 "best")] = None,
    pareto: Annotated[bool, typer.Option("--pareto", help="also export every member of the Pareto front into "
                                         "OUT/pareto/<trial>/")] = False,
) -> None:
    """Write the best finished trial of the config's search (or --trial ID) as a deployable student."""
    from ..config.space import split_pair
    from ..deploy.export import export_best, export_pareto

    cfg = _load(config, set_, "export-best")
    _print_export(cfg, export_best(cfg, out=out, partial=partial, trial_id=trial), config)
    if pareto:
        for e in export_pareto(cfg, out=out, partial=partial):
            console.print(f"Pareto front: {e.trial.trial_id} {split_pair(e.trial.config)['student']} {e.format}: "
                          f"{cfg.search.metric} {e.trial.metrics[cfg.search.metric]:.4f}, "
                          f"{e.files['student.torchscript.pt'] / 1e6:.2f} MB -> {e.out_dir}")


def _print_front(cfg: Config, front: list[dict]) -> None:
    """The Pareto front of the finished trials: each one's shipped file, scored on the whole val split."""
    from ..search.finished_study import objectives

    if not front:
        console.print("Pareto front: no trial ran all its epochs")
        return
    metric = cfg.search.metric
    table = Table(title=f"Pareto front over {', '.join(objectives(cfg))}: finished trials, each its shipped file "
                        "(whole val split; latency: batch 1, one CPU thread, median of the student and format's "
                        "trials)")
    for col in ("trial", "student", "format", metric, f"{metric} float", "file MB", "latency ms"):
        table.add_column(col, justify="left" if col in ("trial", "student", "format") else "right")
    for r in front:
        table.add_row(r["trial_id"], r["student"], r["format"], f"{r[metric]:.4f}", _fmt(r.get(f"{metric}_float")),
                      f"{r['size_mb']:.2f}", f"{r['latency_ms']:.2f}")
    console.print(table)


def _print_export(cfg: Config, e, config_path: Path | None = None) -> None:
    from ..core.results import metric_value, on_full_split, scored_on

    metric = cfg.search.metric
    table = Table(title=f"{'best student' if e.out_dir.name == 'best' else 'student'} of {cfg.name}: trial "
                        f"{e.trial.trial_id}")
    table.add_column("")
    table.add_column("value")
    for k, v in e.trial.config.items():
        table.add_row(k, _fmt(v))
    table.add_row(metric, f"{metric_value(e.metrics, metric):.4f} (the exported file on the whole val split, "
                  f"{e.val_images} images)")
    m = e.trial.metrics
    if m.get("rescored"):  # chosen on a rung-subset score, its shipped file re-scored on the whole split after
        table.add_row(f"trial's last {metric}", f"{m[f'subset_{metric}']:.4f} (rung subset: "
                      f"{int(m['subset_val_images'])} of {e.val_images} val images, what it was chosen on: no trial "
                      f"ran all its epochs); its shipped file on the whole val split after the search: "
                      f"{m[metric]:.4f}")
    else:
        table.add_row(f"trial's last {metric}", f"{m[metric]:.4f} ({scored_on(m, e.val_images)}"
                      + (", what it was chosen on: no trial ran all its epochs)" if not on_full_split(m) else ")"))
    table.add_row("student.torchscript.pt", f"{e.files['student.torchscript.pt'] / 1e6:.2f} MB ({e.format}, limit "
                  f"{cfg.student.max_size_mb:g} MB); student.pt {e.files['student.pt'] / 1e6:.2f} MB")
    table.add_row("exported to", str(e.out_dir))
    if e.registered:
        table.add_row("MLflow model", e.registered)
    console.print(table)
    from ..tracking.ui import links

    if cfg.tracking.remote:
        found = links(cfg, cfg.tracking.uri)
        console.print(f"compare the trials: {found.compare or found.experiment}")
    else:
        console.print(f"compare the trials in MLflow's UI: kdsearch ui {config_path or 'CONFIG'}")


@app.command()
def ui(
    config: ConfigArg,
    set_: SetOpt = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
    open_: Annotated[bool, typer.Option("--open", help="also open the comparison in a browser")] = False,
) -> None:
    """MLflow's UI on the config's store, bound to 127.0.0.1; prints the URL of the latest search's trial comparison."""
    from ..tracking.ui import links, start_server, stop_server

    cfg = load_config(config, set_ or [])
    remote = cfg.tracking.remote
    if remote:  # a server that is down would keep MLflow's client retrying for minutes
        from ..preflight import check_store_reachable

        check_store_reachable(cfg.tracking)
    server = None if remote else start_server(cfg, port)
    try:
        found = links(cfg, cfg.tracking.uri if remote else f"http://127.0.0.1:{port}")
        console.print(f"experiment {cfg.name}: {found.experiment}")
        if found.compare:
            console.print(f"compare its {found.trials} trials (best first): {found.compare}")
        else:
            console.print("no search yet: `kdsearch run CONFIG` fills the comparison")
        if open_:
            import webbrowser

            webbrowser.open(found.compare or found.experiment)
        if server is not None:
            err_console.print("MLflow UI running; Ctrl-C stops it")
            server.wait()
    except interrupts.Interrupted:
        err_console.print("MLflow UI stopped")
    finally:
        if server is not None:
            stop_server(server)


@app.command()
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

    cfg = _load(config, set_, "bench")
    figures = run_bench(cfg, str(resolve_device(device)), epochs)
    path = out or cfg.output_dir / "bench" / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
    console.print_json(json.dumps(figures))
    console.print(f"written: {path}")


@app.command()
def train(config: ConfigArg, set_: SetOpt = None, device: DeviceOpt = "auto") -> None:
    """One distillation run with fixed hyperparameters, no Ray (debugging and baselines)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..core.devices import resolve_device
    from ..distill.train import run_train

    cfg = _load(config, set_, "train")
    progress = Progress(TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=err_console)
    task = progress.add_task("", total=cfg.search.max_epochs)

    def on_start(hp, prepared):
        t, b = prepared.teacher_metrics, prepared.baseline_metrics
        err_console.print(_counts_line(prepared.data.counts()))
        err_console.print(_classes_line(prepared.data.class_names))
        err_console.print(f"teacher val accuracy {t['val_accuracy']:.4f}, macro-F1 {t['val_macro_f1']:.4f} "
                          f"(majority-class baseline: accuracy {b['val_accuracy']:.4f}, macro-F1 "
                          f"{b['val_macro_f1']:.4f})")
        err_console.print("hyperparameters: " + ", ".join(f"{k}={_fmt(v)}" for k, v in hp.as_dict().items()))
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
    console.print(f"student size {final['size_mb']:.2f} MB ({final['format']} TorchScript file); wall time "
                  f"{result.seconds:.1f} s; written to {result.out_dir}; MLflow run {result.run_id} at "
                  f"{cfg.tracking.uri}")


@app.command()
def report(
    config: ConfigArg,
    set_: SetOpt = None,
    seeds: Annotated[int, typer.Option(help="training seeds per arm; N > 1 gives mean and standard deviation")] = 1,
    device: DeviceOpt = "auto",
) -> None:
    """Teacher vs student without KD vs student with KD on the best config, plus the search's plots."""
    from ..core.devices import resolve_device
    from ..deploy.report import run_report

    if seeds < 1:
        raise KdsearchError(f"--seeds {seeds}: give 1 or more")
    cfg = _load(config, set_, "report")
    rep = run_report(cfg, seeds=seeds, device=resolve_device(device))
    family = "vit" if "vit" in rep else "cnn"
    f = rep[family]
    table = Table(title=f"{cfg.name}: {rep['best_config']['student']} (loss {rep['loss']}) from "
                        f"{rep['best_config_from']}, "
                        f"{len(rep['seeds'])} seed(s)")
    for col in ("", "val accuracy", "val macro-F1"):
        table.add_column(col, justify="left" if not col else "right")

    def cell(key: str) -> str:
        std = f" ± {f[key + '_std']:.4f}" if key + "_std" in f else ""
        return f"{f[key]:.4f}{std}"

    arms = rep["arms"]

    def trained(kind: str) -> str:
        a = arms[kind]
        return f"{a['epochs']} epochs x {a['images_per_epoch']} images, {a['optimizer_steps']} steps"

    table.add_row("teacher", cell("teacher_accuracy"), cell("teacher_macro_f1"))
    table.add_row(f"student without KD ({trained('without_kd')})", cell("student_accuracy_without_kd"),
                  cell("student_macro_f1_without_kd"))
    table.add_row(f"student with KD ({rep['loss']}; {trained('with_kd')})", cell("student_accuracy_with_kd"),
                  cell("student_macro_f1_with_kd"))
    console.print(table)
    if "teacher_accuracy_test" in f:
        test = Table(title="test split")
        for col in ("", "test accuracy", "test macro-F1"):
            test.add_column(col, justify="left" if not col else "right")
        test.add_row("teacher", cell("teacher_accuracy_test"), cell("teacher_macro_f1_test"))
        test.add_row("student without KD", cell("student_accuracy_without_kd_test"),
                     cell("student_macro_f1_without_kd_test"))
        test.add_row(f"student with KD ({rep['loss']})", cell("student_accuracy_with_kd_test"),
                     cell("student_macro_f1_with_kd_test"))
        console.print(test)
    if rep["kd_added_in_search"] is not None:
        from ..core.results import kd_added_line

        console.print("In the search: " + kd_added_line(rep["kd_added_in_search"], cfg.search.metric,
                                                       cfg.search.max_epochs))
    for line in rep["importance_lines"]:
        console.print(line)
    console.print(f"report: {cfg.output_dir / 'report' / 'report.json'}; plots: {', '.join(rep['plots'])}; "
                  f"logged to MLflow run {rep['mlflow_run_id']}")


@app.command("train-teacher")
def train_teacher(config: ConfigArg, set_: SetOpt = None, device: DeviceOpt = "auto",
                  address: AddressOpt = None) -> None:
    """Train or load the config's teacher, cache it and its outputs under output.dir."""
    from ..core.devices import resolve_device
    from ..data.dataset import load_dataset
    from ..teachers.step import teach

    cfg = _load(config, set_, "train-teacher")
    data = load_dataset(cfg)
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


@app.command()
def validate(
    configs: Annotated[Optional[list[Path]], typer.Argument(help="config files to check")] = None,
    set_: SetOpt = None,
    schema: Annotated[bool, typer.Option("--schema",
                                         help="print the config's JSON Schema (for editors) and exit")] = False,
) -> None:
    """Check configs without running anything: schema, data paths, teacher files, size limit."""
    if schema:
        console.print_json(json.dumps(Config.model_json_schema(by_alias=True)))
        return
    if not configs:
        raise KdsearchError("validate: name at least one config file (or pass --schema)")
    from ..preflight import preflight

    for path in configs:
        cfg = load_config(path, set_ or [])
        try:
            fit, over, disk, classes, not_int8 = preflight(cfg)
        except KdsearchError as e:
            raise KdsearchError(f"{path}: {e}") from None
        dropped = f"; over the limit: {', '.join(f'{n} {f} {b / 1e6:.1f} MB' for n, f, b in over)}" if over else ""
        console.print(f"{path}: ok ({len(fit)} student(s) fit {cfg.student.max_size_mb:g} MB{dropped})")
        for name, reason in not_int8.items():
            console.print(f"  {name}: searched without int8 ({reason})")
        console.print("  " + _classes_line(classes.names))
        console.print(f"  disk: a run writes about {sum(disk.values()) / 1e6:,.0f} MB under {cfg.output_dir} ("
                      + ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in disk.items() if v) + ")")
        if cfg.data.label_budget is not None:
            console.print(f"  data.label_budget: {cfg.data.label_budget} labeled images per class for the student; "
                          "the rest of the train split are transfer images")
        if cfg.data.unlabeled is not None:
            from ..data.sources import unlabeled_image_count

            n = unlabeled_image_count(cfg.data.unlabeled)
            console.print(f"  data.unlabeled: {n if n else 'its'} transfer images from {cfg.data.unlabeled.root}"
                          + ("" if n else " (counted when decoded)"))


@app.command("inspect-data")
def inspect_data_cmd(config: ConfigArg, set_: SetOpt = None) -> None:
    """Class counts, imbalance, image sizes, unreadable files, suggested class weights, a sample grid."""
    from ..data.inspect import inspect_data

    cfg = _load(config, set_, "inspect-data")
    summary, out = inspect_data(cfg)
    table = Table(title=f"{cfg.name}: {cfg.data.source} data")
    for col in ("index", "class", "label id", "labeled", "val", "weight (power 1)"):
        table.add_column(col, justify="left" if col == "class" else "right")
    weights = summary["suggested_class_weights"]["power_1.0"]
    for row in summary["class_table"]:
        name = row["class"]
        table.add_row(str(row["index"]), name, str(row.get("label_id", "-")), str(summary["train_counts"][name]),
                      str(summary["val_counts"][name]), f"{weights[name]:.3f}")
    console.print(table)
    console.print(_counts_line(summary["images"]))
    console.print(f"imbalance ratio (largest/smallest class): {summary['imbalance_ratio']:.2f}")
    if "original_sizes" in summary:
        w, h = summary["original_sizes"]["width"], summary["original_sizes"]["height"]
        console.print(f"original sizes: width {w['min']}-{w['max']} (median {w['median']}), "
                      f"height {h['min']}-{h['max']} (median {h['median']})")
    console.print(f"unreadable files: {len(summary['unreadable'])}")
    for name in summary["unreadable"]:
        console.print(f"  {name}")
    console.print(f"written: {out / 'data.json'}, {out / 'samples.png'}")


@app.command("list-models")
def list_models(
    config: Annotated[Optional[Path],
                      typer.Argument(help="take classes, image size and limit from this config")] = None,
    max_size_mb: Annotated[float, typer.Option(help="size limit in MB (1,000,000 bytes)")] = 25.0,
    num_classes: Annotated[int, typer.Option(help="classifier outputs")] = 10,
    image_size: Annotated[int, typer.Option(help="input side in pixels")] = 224,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list instead of the table")] = False,
) -> None:
    """The student zoo: parameters, the shipped file's size in fp32/fp16/int8, whether each fits the size limit."""
    from ..config.space import FORMATS
    from ..models.quantize import why_not_int8
    from ..models.sizes import file_bytes, fits, student_size
    from ..models.students import list_students

    if config is not None:
        from ..data.sources import num_classes_hint

        cfg = load_config(config)
        max_size_mb, image_size = cfg.student.max_size_mb, cfg.data.image_size
        num_classes = num_classes_hint(cfg.data)
    sizes = {name: student_size(name, num_classes, image_size) for name in list_students()}
    files = {(name, f): file_bytes(name, num_classes, image_size, f) for name in sizes for f in FORMATS}
    if as_json:
        print(json.dumps([{"student": name, "params": s.params, "fp32_bytes": s.fp32_bytes, "fp16_bytes": s.fp16_bytes,
                           # fits_fp32 / fits_fp16: the keys before int8 existed, kept for scripts that read them
                           "fits_fp32": fits(name, num_classes, image_size, "fp32", max_size_mb),
                           "fits_fp16": fits(name, num_classes, image_size, "fp16", max_size_mb),
                           "files": {f: files[name, f] for f in FORMATS},
                           "fits": {f: fits(name, num_classes, image_size, f, max_size_mb) for f in FORMATS},
                           "int8": why_not_int8(name) or "yes"}
                          for name, s in sizes.items()], indent=2))
        return
    table = Table(title=f"students at {image_size}px, {num_classes} classes: the shipped TorchScript file in MB "
                        f"(over: above the {max_size_mb:g} MB limit; -: cannot be int8)")
    for col in ("student", "params", "fp32", "fp16", "int8"):
        table.add_column(col, justify="left" if col == "student" else "right", no_wrap=col == "student")
    for name, s in sizes.items():
        table.add_row(name, f"{s.params:,}", *(
            "-" if files[name, f] is None else
            f"{files[name, f] / 1e6:.2f}" + ("" if fits(name, num_classes, image_size, f, max_size_mb) else " over")
            for f in FORMATS))
    console.print(table)


def _classes_line(names: list[str]) -> str:
    """Class index -> name, as run, train and validate show it (labels.json in the export holds the same)."""
    return "classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))


def _counts_line(c: dict[str, int]) -> str:
    """labeled / transfer / val / test image counts, as `inspect-data`, `validate`, `train` and `run` show them."""
    where = []
    if c["transfer_from_label_budget"]:
        where.append(f"{c['transfer_from_label_budget']} from data.label_budget")
    if c["transfer_from_unlabeled"]:
        where.append(f"{c['transfer_from_unlabeled']} from data.unlabeled")
    source = f" ({', '.join(where)})" if where else ""
    return (f"images: {c['labeled']} labeled, {c['transfer']} transfer{source}, {c['val']} val, "
            f"{c['test']} test")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err_console,
                        show_time=False, show_path=False)])
    interrupts.install()
    try:
        # Standalone mode: Click itself prints usage errors (`Usage: ... Error: No such option`, exit 2) whatever
        # copy of Click the installed Typer uses; everything else that escapes is handled below.
        with _held:
            app()
    except KdsearchError as e:
        print(f"kdsearch: error: {e}", file=sys.stderr)
        sys.exit(2)
    except interrupts.Interrupted as e:
        print(f"kdsearch: {e}", file=sys.stderr)
        if e.signum == signal.SIGTERM:
            # Ray's processes got the SIGTERM too (a process group's stop); its exit hooks would wait on them and
            # end the process with their own error. Nothing is left to write: leave now, with the signal's code.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.exit_code)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        print("kdsearch: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            _crash(e)
        print(f"kdsearch: error: {e.filename or 'a file'}: no space left on the device; free space there (or "
              "point output.dir elsewhere) and run again", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        _crash(e)


def _crash(e: BaseException) -> None:
    """A bug: one line naming the crash log (the traceback, command and versions, secrets redacted), exit 1."""
    import traceback

    from ..core.versions import versions

    secrets = sorted((v for k, v in os.environ.items() if len(v) >= 4 and re.search(SECRET_NAMES, k, re.IGNORECASE)),
                     key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    from ..core.io import user_cache_dir

    folder = user_cache_dir() / "crashes"
    text = redact("".join(traceback.format_exception(e)) + f"\ncommand: {sys.argv}\nversions: {versions()}\n")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log_path.write_text(text)
        where = f"details in {log_path}"
    except OSError:
        where = "the crash log could not be written:\n" + text
    summary = redact(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    print(f"kdsearch: internal error ({summary}); {where}; please report it", file=sys.stderr)
    sys.exit(1)

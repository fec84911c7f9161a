"""The deploy family: `export-best`, `submit`, `submissions`, `leaderboard`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import Config, load_config
from .common import (
    ConfigArg,
    SetOpt,
    console,
    err_console,
    fmt_value,
    load_locked,
)


def submit_and_report(cfg: Config, file: Optional[Path], wait: bool) -> None:
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


def submit_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    file: Annotated[Optional[Path],
                    typer.Option(help="file to upload (default: the export in output.dir/best)")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="upload and record, do not wait for the score; "
                                          "exit 2 if the server's rate limit does not allow a submission now")] = False,
) -> None:
    """Upload the exported student to the config's evaluation server, wait for its score, record it in MLflow."""
    cfg = load_locked(config, set_, "submit")
    submit_and_report(cfg, file, wait=not no_wait)


def submissions(
    config: ConfigArg,
    set_: SetOpt = None,
    sync: Annotated[bool, typer.Option("--sync", help="ask the server about submissions not yet scored")] = False,
) -> None:
    """Every submission of this experiment: local val metric vs the server's status and score."""
    from ..deploy import submit as submitting
    from ..tracking import submissions as recorded

    cfg = load_locked(config, set_, "submissions", shared=not sync)
    if sync:
        err_console.print(f"synced {submitting.sync(cfg)} submission(s) not yet scored")
    table = Table(title=f"{cfg.name}: submissions")
    for col in ("when", "trial", "local val_macro_f1", "attempt", "status", "score", "size"):
        table.add_column(col, justify="left" if col in ("when", "trial", "status") else "right")
    for r in recorded(cfg):
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["start_time"])), r.get("trial_id", "-"),
                      r.get("local_val_macro_f1", "-"), r.get("attempt", "-"), r.get("status", "-"),
                      fmt_value(r["score"]) if "score" in r else "-",
                      fmt_value(r["model_size"]) if "model_size" in r else "-")
    console.print(table)


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

    cfg = load_locked(config, set_, "export-best")
    print_export(cfg, export_best(cfg, out=out, partial=partial, trial_id=trial), config)
    if pareto:
        for e in export_pareto(cfg, out=out, partial=partial):
            console.print(f"Pareto front: {e.trial.trial_id} {split_pair(e.trial.config)['student']} {e.format}: "
                          f"{cfg.search.metric} {e.trial.metrics[cfg.search.metric]:.4f}, "
                          f"{e.files['student.torchscript.pt'] / 1e6:.2f} MB -> {e.out_dir}")


def print_front(cfg: Config, front: list[dict]) -> None:
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
        table.add_row(r["trial_id"], r["student"], r["format"], f"{r[metric]:.4f}", fmt_value(r.get(f"{metric}_float")),
                      f"{r['size_mb']:.2f}", f"{r['latency_ms']:.2f}")
    console.print(table)


def print_export(cfg: Config, e, config_path: Path | None = None) -> None:
    from ..core.figures import Figure
    from ..core.results import metric_value

    metric = cfg.search.metric
    table = Table(title=f"{'best student' if e.out_dir.name == 'best' else 'student'} of {cfg.name}: trial "
                        f"{e.trial.trial_id}")
    table.add_column("")
    table.add_column("value")
    for k, v in e.trial.config.items():
        table.add_row(k, fmt_value(v))
    table.add_row(metric, f"{metric_value(e.metrics, metric):.4f} (the exported file on the whole val split, "
                  f"{e.val_images} images)")
    m, f = e.trial.metrics, e.trial.figure
    table.add_row(f"trial's last {metric}", f.text()
                  + (f"; chosen on {Figure.from_dict(m['chosen_on']).text()}: no trial ran all its epochs"
                     if m.get("chosen_on") else ""))
    table.add_row("trial", "finished" if f.finished else f"NOT finished: {f.where()}")
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

"""The results family: `report` and `ui`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..config import load_config
from ..core.errors import KdsearchError
from ..runtime import interrupts
from .common import (
    ConfigArg,
    DeviceOpt,
    SetOpt,
    console,
    err_console,
    load_locked,
)


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
    cfg = load_locked(config, set_, "report")
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

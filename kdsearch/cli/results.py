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
    fmt = rep["format"]
    table = Table(title=f"{cfg.name}: {rep['best_config']['student']} {fmt} (loss {rep['loss']}) from "
                        f"{rep['best_config_from']}, {len(rep['seeds'])} seed(s); students scored as their {fmt} "
                        "files" + ("" if fmt == "fp32" else ", the float model in brackets"))

    def cell(key: str) -> str:
        std = f" ± {f[key + '_std']:.4f}" if key + "_std" in f else ""
        beside = f" ({f[key + '_float']:.4f} float)" if key + "_float" in f else ""
        return f"{f[key]:.4f}{std}{beside}"

    arms = rep["arms"]

    def trained(kind: str) -> str:
        a = arms[kind]
        return f"{a['epochs']} epochs x {a['images_per_epoch']} images, {a['optimizer_steps']} steps"

    for split, sfx in (("val", ""), ("test", "_test")):
        if f"teacher_accuracy{sfx}" not in f:
            continue
        t = table if split == "val" else Table(title=f"test split; students as their {fmt} files")
        for col in ("", f"{split} accuracy", f"{split} macro-F1"):
            t.add_column(col, justify="left" if not col else "right")
        t.add_row("teacher", cell(f"teacher_accuracy{sfx}"), cell(f"teacher_macro_f1{sfx}"))
        t.add_row(f"student without KD ({trained('without_kd')})", cell(f"student_accuracy_without_kd{sfx}"),
                  cell(f"student_macro_f1_without_kd{sfx}"))
        t.add_row(f"student with KD ({rep['loss']}; {trained('with_kd')})", cell(f"student_accuracy_with_kd{sfx}"),
                  cell(f"student_macro_f1_with_kd{sfx}"))
        t.add_row(f"KD gain ({fmt} files)", cell(f"kd_gain_accuracy{sfx}"), cell(f"kd_gain_macro_f1{sfx}"))
        console.print(t)
    if rep["kd_added_in_search"] is not None:
        console.print("In the search: " + rep["kd_added_in_search"]["line"])
    for line in rep["importance_lines"]:
        console.print(line)
    console.print(f"report: {cfg.output_dir / 'report' / 'report.json'}; plots: {', '.join(rep['plots'])}; "
                  f"logged to MLflow run {rep['mlflow_run_id']}")

"""The data family: `validate`, `inspect-data`, `list-models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import Config, load_config
from ..core.errors import KdsearchError
from .common import (
    ConfigArg,
    SetOpt,
    classes_line,
    console,
    counts_line,
    load_locked,
)


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
            plan = preflight(cfg)
        except KdsearchError as e:
            raise KdsearchError(f"{path}: {e}") from None
        found, disk = plan.deployments, plan.disk
        over = found.over
        dropped = f"; over the limit: {', '.join(f'{n} {f} {b / 1e6:.1f} MB' for n, f, b in over)}" if over else ""
        console.print(f"{path}: ok ({len(found.students)} student(s) fit {cfg.student.max_size_mb:g} MB{dropped})")
        for name, reason in found.not_int8.items():
            console.print(f"  {name}: searched without int8 ({reason})")
        console.print("  " + classes_line(plan.sources.classes.names))
        console.print(f"  disk: a run writes about {sum(disk.values()) / 1e6:,.0f} MB under {cfg.output_dir} ("
                      + ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in disk.items() if v) + ")")
        if cfg.data.label_budget is not None:
            console.print(f"  data.label_budget: {cfg.data.label_budget} labeled images per class for the student; "
                          "the rest of the train split are transfer images")
        if plan.sources.unlabeled is not None:
            n = plan.sources.unlabeled.images
            console.print(f"  data.unlabeled: {n if n else 'its'} transfer images from {cfg.data.unlabeled.root}"
                          + ("" if n else " (counted when decoded)"))


def inspect_data_cmd(config: ConfigArg, set_: SetOpt = None) -> None:
    """Class counts, imbalance, image sizes, unreadable files, suggested class weights, a sample grid."""
    from ..data.inspect import inspect_data

    cfg = load_locked(config, set_, "inspect-data")
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
    console.print(counts_line(summary["images"]))
    console.print(f"imbalance ratio (largest/smallest class): {summary['imbalance_ratio']:.2f}")
    if "original_sizes" in summary:
        w, h = summary["original_sizes"]["width"], summary["original_sizes"]["height"]
        console.print(f"original sizes: width {w['min']}-{w['max']} (median {w['median']}), "
                      f"height {h['min']}-{h['max']} (median {h['median']})")
    console.print(f"unreadable files: {len(summary['unreadable'])}")
    for name in summary["unreadable"]:
        console.print(f"  {name}")
    console.print(f"written: {out / 'data.json'}, {out / 'samples.png'}")


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
    from ..models.sizes import fits, shipped_file_bytes, student_size
    from ..models.students import list_students

    if config is not None:
        from ..data.sources import class_table_hint

        cfg = load_config(config)
        max_size_mb, image_size = cfg.student.max_size_mb, cfg.data.image_size
        num_classes = len(class_table_hint(cfg.data).names)
    sizes = {name: student_size(name, num_classes, image_size) for name in list_students()}
    files = {(name, f): n for name in sizes  # one build per student for its three files
             for f, n in shipped_file_bytes(name, num_classes, image_size, FORMATS).items()}
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

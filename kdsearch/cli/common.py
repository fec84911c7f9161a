"""What every family of commands shares: the Typer app, the consoles, the common options and `load_locked` (the
config, with its output.dir locked for the command)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..config import Config, load_config

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Hyperparameter search for knowledge distillation (Ray Tune + Optuna + ASHA, MLflow).")
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. search_spaces/digits.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE override, dotted into the YAML "
                                                     "(--set search.num_samples=4); repeatable")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Ray cluster address (or RAY_ADDRESS); default: local")]

held_locks = contextlib.ExitStack()
"""Locks a command holds until it ends (main() closes it on every exit path)."""


def load_locked(config: Path, set_: Optional[list[str]], command: str, shared: bool = False) -> Config:
    """The config, with its output.dir locked for this command (shared for commands that only read it)."""
    from ..runtime.locks import output_lock

    cfg = load_config(config, set_ or [])
    held_locks.enter_context(output_lock(cfg.output_dir, command, shared))
    return cfg


def classes_line(names: list[str]) -> str:
    """Class index -> name, as run, train and validate show it (labels.json in the export holds the same)."""
    return "classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))


def counts_line(c: dict[str, int]) -> str:
    """labeled / transfer / val / test image counts, as `inspect-data`, `validate`, `train` and `run` show them."""
    where = []
    if c["transfer_from_label_budget"]:
        where.append(f"{c['transfer_from_label_budget']} from data.label_budget")
    if c["transfer_from_unlabeled"]:
        where.append(f"{c['transfer_from_unlabeled']} from data.unlabeled")
    source = f" ({', '.join(where)})" if where else ""
    return (f"images: {c['labeled']} labeled, {c['transfer']} transfer{source}, {c['val']} val, "
            f"{c['test']} test")


def fmt_value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

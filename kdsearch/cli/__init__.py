"""The `kdsearch` command line. Thin: parse, call, print.

User errors (KdsearchError, a full disk, Click's usage errors) print one line on stderr and exit 2; Ctrl-C exits
130 and SIGTERM 143; anything else is a bug: one line naming a crash log that holds the traceback, exit 1.

One module per family of commands (`search`, `data`, `deploy`, `results`); the order below is the order
`kdsearch --help` lists them in.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
import time
from typing import Annotated

import typer
from rich.logging import RichHandler

from ..core.errors import KdsearchError
from ..runtime import interrupts, quiet
from . import data, deploy, results, search
from .common import app, err_console, held_locks

SECRET_NAMES = r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY"
"""Environment variables whose values a crash log never shows."""


@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        "-v", "--verbose", help="also show every library's own informational lines (MLflow, Ray, Optuna, torch)")]
        = False) -> None:
    quiet.configure(verbose)


app.command()(search.run)
app.command("submit")(deploy.submit_cmd)
app.command()(deploy.submissions)
app.command()(deploy.leaderboard)
app.command("export-best")(deploy.export_best_cmd)
app.command()(results.ui)
app.command()(search.bench)
app.command()(search.train)
app.command()(results.report)
app.command("train-teacher")(search.train_teacher)
app.command()(data.validate)
app.command("inspect-data")(data.inspect_data_cmd)
app.command("list-models")(data.list_models)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err_console,
                        show_time=False, show_path=False)])
    interrupts.install()
    try:
        # Standalone mode: Click itself prints usage errors (`Usage: ... Error: No such option`, exit 2) whatever
        # copy of Click the installed Typer uses; everything else that escapes is handled below.
        with held_locks:
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

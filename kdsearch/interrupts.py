"""Ctrl-C (SIGINT) and SIGTERM: a search stops the way Ray Tune stops one (its state saved for `--resume`); any
other phase stops where it is. Either way the command exits 130 or 143 and nothing is presented as finished.

Ray Tune stops a search gracefully on SIGINT or SIGUSR1, with a handler it installs while `Tuner.fit` runs. The
CLI routes both SIGINT and SIGTERM there (SIGTERM would otherwise kill the driver before Tune saves anything), and
remembers which signal came, so the caller can tell an interrupted search from a finished one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Iterator

log = logging.getLogger("kdsearch")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The user stopped the command. A BaseException, like KeyboardInterrupt: no `except Exception` swallows it.

    The CLI prints the message as one line and exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted ({signal.Signals(signum).name})")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []
_installed = False
_in_search = False


def install() -> None:
    """Handle SIGINT and SIGTERM as described above (the CLI calls this; `ray.init` replaces SIGTERM's handler,
    so `init_ray` calls `reinstall`)."""
    global _installed
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT reaches Tune through our handler, as SIGUSR1
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    _installed = True


def reinstall() -> None:
    """Put the handlers back after a library replaced them; nothing when `install` was never called (API use)."""
    if _installed:
        install()


def received() -> int | None:
    """The first signal received since `install`, or None."""
    return _received[0] if _received else None


@contextlib.contextmanager
def search() -> Iterator[None]:
    """While `Tuner.fit` runs: the first signal asks Ray Tune to stop and save its state; a second stops at once."""
    global _in_search
    _in_search = True
    try:
        yield
    finally:
        _in_search = False


def _handle(signum: int, frame) -> None:
    first = not _received
    _received.append(signum)
    tune_stop = signal.getsignal(signal.SIGUSR1)  # Ray Tune's graceful stop, installed while fit runs
    if first and _in_search and callable(tune_stop):
        log.warning("%s: stopping the search; Ray Tune saves its state (send it again to stop at once)",
                    signal.Signals(signum).name)
        tune_stop(signal.SIGUSR1, frame)
        return
    raise Interrupted(signum)

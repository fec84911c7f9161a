"""Ctrl-C (SIGINT) and SIGTERM: a search stops the way Ray Tune stops one (its state saved for `--resume`); any
other phase stops where it is. Either way the command exits 130 or 143 and nothing is presented as finished.

Ray Tune stops a search gracefully on SIGINT or SIGUSR1, with a handler it installs while `Tuner.fit` runs. The
CLI routes Ctrl-C there, stops at once on SIGTERM (see `_act`), and each search remembers which signal stopped it
(`SearchStop`), so its caller can tell an interrupted search from a finished one. That record is the search's own:
a library caller that runs two searches in one process sees a signal only in the search it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

log = logging.getLogger("kdsearch")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The user stopped the command. A BaseException, like KeyboardInterrupt: no `except Exception` swallows it.

    The CLI prints the message as one line and exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted ({signal.Signals(signum).name}); what was finished is kept, "
                         "nothing half-written")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class SearchStop:
    """One search's signals: those received while its `Tuner.fit` ran (`search()`)."""

    signals: list[int] = field(default_factory=list)

    @property
    def signum(self) -> int | None:
        """The signal that stopped this search, or None when nothing did."""
        return self.signals[0] if self.signals else None


_received: list[int] = []  # every signal since `install` (a deferred step acts on those that came inside it)
_installed = False
_searches: list[SearchStop] = []  # the searches running now, innermost last
_deferred = 0


def install() -> None:
    """Handle SIGINT and SIGTERM as described above (the CLI calls this; `ray.init` replaces SIGTERM's handler,
    so `init_ray` calls `reinstall`)."""
    global _installed
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT reaches Tune through our handler, as SIGUSR1
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    if not _installed:
        _watch_sigterm()
    _installed = True


TERM_GRACE_S = 3.0
"""How long SIGTERM waits for the main thread to stop cleanly before the watcher ends the process."""
_last_words = ["interrupted (SIGTERM)"]


def on_sigterm(message: str) -> None:
    """What the watcher prints if it has to end the process itself (see `_watch_sigterm`)."""
    _last_words[0] = message


def _watch_sigterm() -> None:
    """Python runs signal handlers in the main thread between bytecodes; a main thread blocked in Ray's C++ (its
    head processes killed by the same group SIGTERM) would only wake when Ray gives up, a minute later, and exit
    with Ray's error. A thread woken through the signal wakeup fd gives the main thread TERM_GRACE_S to stop
    cleanly, then prints the one line and exits 143 itself."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: the handlers alone
        os.close(r)
        os.close(w)
        return

    def watch() -> None:
        while True:
            if signal.SIGTERM in os.read(r, 64):
                time.sleep(TERM_GRACE_S)
                print(f"kdsearch: {_last_words[0]}", file=sys.stderr, flush=True)
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="kdsearch-sigterm", daemon=True).start()


def reinstall() -> None:
    """Put the handlers back after a library replaced them; nothing when `install` was never called (API use)."""
    if _installed:
        install()


@contextlib.contextmanager
def search() -> Iterator[SearchStop]:
    """While `Tuner.fit` runs: the search's first signal asks Ray Tune to stop and save its state; a second stops at
    once. Yields the search's own `SearchStop`."""
    stop = SearchStop()
    _searches.append(stop)
    try:
        yield stop
    finally:
        _searches.remove(stop)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A step that must not be cut in half (MLflow creating its schema): a signal that arrives inside waits until
    the step is done, then stops the command."""
    global _deferred
    _deferred += 1
    seen = len(_received)
    earlier = len(_searches[-1].signals) if _searches else seen  # what "first" means: per search while one runs
    try:
        yield
    finally:
        _deferred -= 1
    if _deferred == 0 and len(_received) > seen:
        _act(_received[seen], None, first=earlier == 0)


def _handle(signum: int, frame) -> None:
    _received.append(signum)
    if _searches:
        _searches[-1].signals.append(signum)
    if not _deferred:
        _act(signum, frame, first=len(_searches[-1].signals if _searches else _received) == 1)


def _act(signum: int, frame, first: bool) -> None:
    tune_stop = signal.getsignal(signal.SIGUSR1)  # Ray Tune's graceful stop, installed while fit runs
    # SIGTERM usually comes to the whole process group (SLURM, systemd, a container stop): Ray's own processes
    # get it too and are gone, so Tune could not save anything more; stop at once and resume from what Tune and
    # the trials' checkpoints saved last. Ray's processes ignore SIGINT, so Ctrl-C gets Tune's graceful stop.
    if first and _searches and signum == signal.SIGINT and callable(tune_stop):
        log.warning("%s: stopping the search; Ray Tune saves its state (send it again to stop at once)",
                    signal.Signals(signum).name)
        tune_stop(signal.SIGUSR1, frame)
        return
    raise Interrupted(signum)

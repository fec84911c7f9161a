"""Ctrl-C's record is per search (runtime.interrupts.SearchStop): a library caller running two searches in one
process sees a signal only in the search it stopped, and each search's first Ctrl-C is the graceful one.

Run in a fresh interpreter: installing the handlers changes the process's signal handling."""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = r'''
import signal
from kdsearch.runtime import interrupts

interrupts.install()
graceful = []
signal.signal(signal.SIGUSR1, lambda s, f: graceful.append(s))  # stands for Ray Tune's graceful stop in Tuner.fit

with interrupts.search() as first:
    signal.raise_signal(signal.SIGINT)  # Ctrl-C during the first search: Tune is asked to stop gracefully
with interrupts.search() as second:
    pass  # the second search runs to its end
with interrupts.search() as third:
    signal.raise_signal(signal.SIGINT)  # its own first Ctrl-C: graceful again, not the "second signal" of the process
try:
    with interrupts.search() as fourth:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a second Ctrl-C in one search stops at once
    outcome = "not stopped"
except interrupts.Interrupted as e:
    outcome = f"stopped {e.exit_code}"
print("|".join(map(str, [first.signum, second.signum, third.signum, len(fourth.signals), len(graceful), outcome])))
'''


def test_each_search_keeps_its_own_signals():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second, third, fourth, graceful, outcome = proc.stdout.strip().split("|")
    sigint = str(int(signal.SIGINT))
    assert (first, second, third) == (sigint, "None", sigint)  # the second search was not interrupted
    assert graceful == "3"  # first, third, and the fourth's first Ctrl-C went to Tune's graceful stop
    assert (fourth, outcome) == ("2", "stopped 130")

"""What the installed `kdsearch` prints when something goes wrong, as users run it: usage mistakes get Click's
usage line and exit 2, a user error one line and exit 2, a bug one line naming a crash log (exit 1) whose
traceback has every secret redacted."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import textwrap

import pytest

from conftest import KDSEARCH, tiny_config, write_config

pytestmark = pytest.mark.e2e  # subprocess runs of the console script


@pytest.mark.parametrize(("args", "says"), [
    (["iu", "x.yaml"], "No such command 'iu'"),
    (["run"], "Missing argument 'config'"),
    (["run", "x.yaml", "--bogus"], "No such option: --bogus"),
])
def test_usage_mistakes_exit_2_with_the_usage_line(tmp_path, args, says):
    done = subprocess.run([KDSEARCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Usage: kdsearch") and says in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bug_prints_one_line_and_writes_a_redacted_crash_log(tmp_path):
    secret = "hf_supersecret123456"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # a bug, planted where a real one would surface: inside a command, after the config loaded
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import kdsearch.preflight as p
        def broken(*a, **k):
            raise RuntimeError("something internal broke near {secret}")
        p.preflight = broken
    """))
    env = {**os.environ, "PYTHONPATH": str(hooks), "HF_TOKEN": secret, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    path = write_config(tmp_path, tiny_config(tmp_path))
    done = subprocess.run([KDSEARCH, "validate", str(path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and secret not in done.stderr
    log = re.search(r"details in (\S+); please report it", lines[0])
    assert log and lines[0].startswith("kdsearch: internal error (RuntimeError: something internal broke near ***")
    text = open(log.group(1)).read()
    assert "Traceback (most recent call last)" in text and "versions:" in text and "validate" in text
    assert secret not in text and "***" in text


def test_ui_on_a_remote_server_that_is_down_says_so_at_once(tmp_path):
    """A remote tracking.uri nobody answers: one line naming tracking.uri, exit 2, and no local server started
    (MLflow's client alone would retry for minutes)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, tiny_config(tmp_path, tracking={"uri": f"http://127.0.0.1:{port}"}))
    done = subprocess.run([KDSEARCH, "ui", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"kdsearch: error: tracking.uri http://127.0.0.1:{port}: no MLflow server answers")
    assert len(done.stderr.strip().splitlines()) == 1 and "Ctrl-C" not in done.stderr

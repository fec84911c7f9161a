"""Two runs at once: one output folder takes one writer (a second gets exit 2 naming the first, and a SIGKILLed
holder blocks nobody), and processes creating one new sqlite MLflow store all get a working store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import KDSEARCH, tiny_config, write_config

pytestmark = pytest.mark.e2e  # real subprocess runs


def _wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, "the first run ended before the second started"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_second_run_on_one_output_dir_exits_2_and_a_killed_holder_blocks_nobody(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path, search={"max_epochs": 30}))
    first = subprocess.Popen([KDSEARCH, "train", str(path), "--device", "cpu"], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "out" / ".kdsearch-lock.json", first)
    second = subprocess.run([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith(f"kdsearch: error: output.dir {tmp_path / 'out'}: another kdsearch train "
                                    f"(pid {first.pid}, started ")
    assert "set another output.dir" in second.stderr and "Traceback" not in second.stderr
    reader = subprocess.run([KDSEARCH, "submissions", str(path)], cwd=tmp_path, capture_output=True, text=True)
    assert reader.returncode == 2 and "another kdsearch train" in reader.stderr  # a writer excludes readers too

    os.killpg(first.pid, signal.SIGKILL)  # the lock dies with its holder
    first.wait()
    third = subprocess.run([KDSEARCH, "train", str(path), "--device", "cpu", "--set", "search.max_epochs=1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert not (tmp_path / "out" / ".kdsearch-lock.json").exists()  # released with the command


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kdsearch.config import Config
    from kdsearch.tracking import check_store
    cfg = Config.model_validate({"name": sys.argv[2], "tracking": {"uri": sys.argv[1]}, "output": {"dir": sys.argv[3]}})
    go = Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.01)
    check_store(cfg)  # opens (and here creates) the store, then its experiment
""")


def test_processes_creating_one_new_sqlite_store_at_once_all_get_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, uri, f"exp-{i}", str(tmp_path / f"out{i}"), str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    time.sleep(8)  # every racer has imported MLflow and waits for the go
    go.touch()
    for r in racers:
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, err[-2000:]
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"exp-0", "exp-1", "exp-2"} <= names

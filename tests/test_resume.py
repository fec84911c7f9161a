"""A search stopped by the user resumes with --resume: every trial exactly once, no MLflow duplicates. SIGKILL,
Ctrl-C (SIGINT) and SIGTERM are sent to the whole process group of a real `kdsearch run`, as a terminal, SLURM or
a container stop sends them."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import tiny_config, write_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier

KDSEARCH = str(Path(sys.executable).with_name("kdsearch"))
EPOCHS = 4


def _epochs_done(out: Path, name: str = "resume") -> list[int]:
    """Each trial's last reported epoch, from Ray's result.json (a trial not yet reporting counts 0).

    Ray appends to result.json through a buffered file: a SIGKILL can drop the last line or two of a trial whose
    epoch was checkpointed, so line counts undercount; the last line's training_iteration does not. Exactly-once
    epochs are checked in MLflow, which commits each one."""
    done = []
    for f in glob.glob(str(out / "ray" / name / "*" / "result.json")):
        last = 0
        for line in open(f).read().splitlines():
            try:  # a line cut off by the kill is not a result
                last = max(last, int(json.loads(line)["training_iteration"]))
            except (ValueError, KeyError):
                pass
        done.append(last)
    return done


def _search_config(tmp_path: Path, name: str, **teacher) -> dict:
    return tiny_config(tmp_path, name=name, student={"candidates": ["shufflenet_v2_x0_5", "mobilenet_v3_small"]},
                       **({"teacher": {**tiny_config(tmp_path)["teacher"], **teacher}} if teacher else {}),
                       search={"num_samples": 6, "max_concurrent": 2, "max_epochs": EPOCHS, "grace_period": EPOCHS,
                               "space": {"lr": 3.0e-3, "batch_size": 16, "class_weight_power": 0.0}})


def _stop_when_trials_are_part_way(run: subprocess.Popen, out: Path, name: str, sig: int) -> None:
    """Send `sig` to the run's process group once a trial has finished and another is part-way."""
    deadline = time.time() + 300
    while time.time() < deadline:
        done = _epochs_done(out, name)
        if EPOCHS in done and any(0 < d < EPOCHS for d in done):
            break
        assert run.poll() is None, "the search ended before it could be interrupted"
        time.sleep(0.2)
    os.killpg(run.pid, sig)


def _check_resumed(resumed: subprocess.CompletedProcess, cfg: dict, out: Path) -> None:
    """The resumed search finished every trial Tune knows exactly once, each epoch once in MLflow, and exported."""
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = _epochs_done(out, cfg["name"])
    # A suggestion made in the instant before a kill may be missing from Tune's saved state; it had done no
    # work and is not rerun, so at most max_concurrent (2) of the 6 can be lost.
    # result.json may miss the last line of a trial that finished at the instant of a SIGKILL (see _epochs_done):
    # such a trial is done and not rerun, so its file can end one epoch short; MLflow below checks every epoch
    assert 4 <= len(done) <= 6 and all(d >= EPOCHS - 1 for d in done), done
    assert re.search(rf"trials: {len(done)} completed, 0 stopped early by ASHA, 0 errored", resumed.stdout)
    assert (out / "best" / "student.pt").is_file()
    # the stored study went on with the search: each finished trial once, with every epoch; nothing left running
    study = optuna.load_study(study_name=cfg["name"], storage=f"sqlite:///{out / 'optuna.db'}")
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] == len(done) and states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    assert len(study.trials) - len(done) <= 2, states  # a suggestion lost in the kill is failed, not rerun
    assert all(sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) for t in study.trials
               if t.state == TrialState.COMPLETE)
    client = MlflowClient(cfg["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name(cfg["name"]).experiment_id])
    assert Counter(r.data.tags.get("kdsearch.kind") for r in runs) == {"search": 1, "trial": len(done)}
    for r in runs:
        if r.data.tags.get("kdsearch.kind") == "trial":
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_macro_f1")]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), steps
            assert r.data.tags["kdsearch.ended"] == "completed" and r.info.status == "FINISHED"


def _resume(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([KDSEARCH, "run", str(path), "--resume", "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)


def test_sigkill_then_resume(tmp_path):
    cfg = _search_config(tmp_path, "resume")
    path = write_config(tmp_path, cfg)
    out = tmp_path / "out"
    run = subprocess.Popen([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _stop_when_trials_are_part_way(run, out, "resume", signal.SIGKILL)
    run.wait()
    assert not (out / "best").exists()
    resumed = _resume(path, tmp_path)
    assert "teacher forward passes 0" in resumed.stdout  # the teacher cache from the first run was reused
    _check_resumed(resumed, cfg, out)


def test_ctrl_c_stops_the_search_cleanly_exports_nothing_and_resume_finishes_it(tmp_path):
    cfg = _search_config(tmp_path, "ctrl-c")
    path = write_config(tmp_path, cfg)
    out = tmp_path / "out"
    run = subprocess.Popen([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _stop_when_trials_are_part_way(run, out, "ctrl-c", signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    # (the live table's last frame may share the line when stderr is a pipe: the message ends it)
    finished = re.search(r"kdsearch: search 'ctrl-c' interrupted with (\d) of 6 trials finished; nothing exported\. "
                         r"Ray Tune saved its state in .*: `kdsearch run CONFIG --resume` continues it$", last)
    assert finished and 1 <= int(finished.group(1)) < 6, last
    assert "Traceback" not in err
    assert not (out / "best").exists()
    client = MlflowClient(cfg["tracking"]["uri"])
    assert client.search_registered_models() == []  # nothing registered
    parent = [r for r in client.search_runs([client.get_experiment_by_name("ctrl-c").experiment_id])
              if r.data.tags.get("kdsearch.kind") == "search"]
    assert [r.info.status for r in parent] == ["KILLED"]

    refused = subprocess.run([KDSEARCH, "export-best", str(path)], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 2 and "stopped before it finished" in refused.stderr and "--partial" in refused.stderr
    assert not (out / "best").exists()

    _check_resumed(_resume(path, tmp_path), cfg, out)


def test_sigterm_during_the_teacher_step_then_resume_starts_the_search(tmp_path):
    cfg = _search_config(tmp_path, "term", epochs=3)
    path = write_config(tmp_path, cfg)
    out = tmp_path / "out"
    run = subprocess.Popen([KDSEARCH, "run", str(path), "--device", "cpu"], cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in run.stderr:  # the teacher's first epoch is logged: it is training now
        lines.append(line)
        if "teacher epoch 1" in line:
            os.killpg(run.pid, signal.SIGTERM)
            break
    err = "".join(lines) + run.stderr.read()
    run.wait(timeout=60)
    assert run.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("kdsearch: search 'term' interrupted before its first trial")
    assert "Traceback" not in err
    assert not (out / "best").exists() and not list(out.glob("teacher/*.tmp*"))

    resumed = _resume(path, tmp_path)  # nothing searched yet: --resume starts the search
    assert "no trial has run yet" in resumed.stderr
    _check_resumed(resumed, cfg, out)

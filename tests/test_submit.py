"""Submitting to an evaluation server, as users run it: the installed `kdsearch` against a real local HTTP server
speaking the course protocol, a real sqlite MLflow store, and a token that must never appear anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import course_server
from conftest import KDSEARCH, tiny_config, write_config

pytestmark = pytest.mark.e2e  # a real Ray search, server or subprocess run: not in the fast tier
TOKEN = course_server.Behaviour().token


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server whose behaviour each test sets, and one search exported and submitted with `run --submit`."""
    tmp = tmp_path_factory.mktemp("submit")
    behaviour = course_server.Behaviour()
    server, url = course_server.start(behaviour)
    cfg = tiny_config(tmp, name="graded", search={"num_samples": 2, "max_concurrent": 2},
                      submit={"url": url, "min_interval_s": 0, "poll_interval_s": 0.2, "timeout_s": 60,
                              "leaderboard_url": f"{url}/leaderboard"})
    path = write_config(tmp, cfg)
    run = kd(tmp, "run", path, "--device", "cpu", "--submit")
    yield {"tmp": tmp, "b": behaviour, "url": url, "path": path, "cfg": cfg, "run": run}
    server.shutdown()


def kd(cwd: Path, *args, token: str | None = TOKEN, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KDSEARCH_SUBMIT_TOKEN"}
    if token is not None:
        env["KDSEARCH_SUBMIT_TOKEN"] = token
    proc = subprocess.run([KDSEARCH, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert TOKEN not in proc.stdout + proc.stderr  # never printed, whatever happened
    return proc


def reset(b: course_server.Behaviour, **changes) -> None:
    fresh = course_server.Behaviour()
    for name in ("pending_polls", "score", "fail_reason", "hold", "min_interval_s", "retry_after", "submit_errors",
                 "garbage_status", "max_bytes", "delay_s"):
        setattr(b, name, changes.get(name, getattr(fresh, name)))
    b.requests.clear()
    b.last_upload = 0.0


def records(tmp: Path, name: str) -> list:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`kdsearch.kind` = 'submission'",
                              order_by=["attributes.start_time ASC"])


def test_run_submit_is_the_whole_workflow_in_one_command(world):
    run, tmp = world["run"], world["tmp"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "submission attempt 1: successful; server score 0.8125" in run.stdout
    card = json.loads((tmp / "out" / "best" / "model_card.json").read_text())
    assert f"local val_macro_f1 {card['metrics']['val_macro_f1']:.4f}" in run.stdout
    [rec] = records(tmp, "graded")
    tags, metrics = rec.data.tags, rec.data.metrics
    assert tags["submission.status"] == "successful" and metrics["submission.score"] == 0.8125
    assert tags["submission.attempt"] == "1" and tags["submission.trial_id"] == card["trial_id"]
    uploaded = (tmp / "out" / "best" / "student.torchscript.pt").read_bytes()
    assert tags["submission.sha256"] == hashlib.sha256(uploaded).hexdigest()
    assert metrics["submission.model_size"] == round(len(uploaded) / 1e6, 3)
    assert json.loads(tags["submission.entry"])["submitted"] == "2026-11-24T10:00:00"  # extra fields kept
    parent = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").search_runs(
        [rec.info.experiment_id], "tags.`kdsearch.kind` = 'search'")[0]
    assert tags["mlflow.parentRunId"] == parent.info.run_id  # next to the search it came from

    listed = kd(tmp, "submissions", world["path"])
    assert listed.returncode == 0 and "successful" in listed.stdout and "0.8125" in listed.stdout


def test_a_failed_verdict_is_recorded_with_its_reason(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, fail_reason="output shape (1, 10) but the test set has 7 classes", pending_polls=0)
    proc = kd(tmp, "submit", world["path"], "--set", "name=failing")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed" in proc.stdout and "7 classes" in proc.stdout
    [rec] = records(tmp, "failing")
    assert rec.data.tags["submission.status"] == "failed" and "7 classes" in rec.data.tags["submission.reason"]
    assert "submission.score" not in rec.data.metrics


def test_rate_limit_is_respected_across_processes(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, pending_polls=0)
    limited = ["--set", "name=limited", "--set", "submit.min_interval_s=120"]
    first = kd(tmp, "submit", world["path"], *limited, "--no-wait")
    assert first.returncode == 0, first.stderr[-2000:]
    second = kd(tmp, "submit", world["path"], *limited, "--no-wait")  # another process, same store
    assert second.returncode == 2 and "accepts the next submission at" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert [r for r in b.requests if r[0] == "POST"] == [("POST", "/submit", ["file", "token"])]  # one upload only
    assert len(records(tmp, "limited")) == 1


@pytest.mark.parametrize("retry_after,expect", [("120", 120), (None, 300)])
def test_a_429_sets_the_next_allowed_time(world, retry_after, expect):
    tmp, b = world["tmp"], world["b"]
    name = f"told-{expect}"
    reset(b, pending_polls=0, min_interval_s=1000, retry_after=retry_after)
    b.last_upload = time.time()  # the server saw an upload a moment ago (another team member, another machine)
    proc = kd(tmp, "submit", world["path"], "--set", f"name={name}", "--set", "submit.min_interval_s=300", "--no-wait")
    assert proc.returncode == 2 and "accepts the next submission at" in proc.stderr, proc.stderr
    wait = float(proc.stderr.split("(in ")[1].split(" s)")[0])
    assert expect - 5 <= wait <= expect  # Retry-After when the server gives one, else submit.min_interval_s
    assert records(tmp, name) == []  # refused: nothing was submitted, nothing recorded


def test_server_errors_are_retried_with_backoff(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, submit_errors=2, pending_polls=1)
    proc = kd(tmp, "submit", world["path"], "--set", "name=flaky")
    assert proc.returncode == 0 and "successful" in proc.stdout, proc.stderr[-2000:]
    assert sum(1 for r in b.requests if r[0] == "POST") == 3  # 500, 500, accepted
    [rec] = records(tmp, "flaky")
    assert rec.data.tags["submission.status"] == "successful"


def test_slow_answers_are_waited_for(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, delay_s=0.7, pending_polls=1)
    proc = kd(tmp, "submit", world["path"], "--set", "name=sluggish")
    assert proc.returncode == 0 and "successful" in proc.stdout, proc.stderr[-2000:]
    assert sum(1 for r in b.requests if r[0] == "POST") == 1  # a slow answer is not a failure to retry


def test_a_server_that_stays_down_leaves_an_unknown_record(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, submit_errors=100)
    proc = kd(tmp, "submit", world["path"], "--set", "name=down", "--set", "submit.retries=1")
    assert proc.returncode == 2 and "recorded as unknown" in proc.stderr and "--sync" in proc.stderr
    assert sum(1 for r in b.requests if r[0] == "POST") == 2
    [rec] = records(tmp, "down")
    assert rec.data.tags["submission.status"] == "unknown"


def test_an_unexpected_answer_is_named_and_kept_without_the_token(world):
    tmp, b = world["tmp"], world["b"]
    reset(b)
    proc = kd(tmp, "submit", world["path"], "--set", "name=garbled", "--no-wait")
    assert proc.returncode == 0 and "pending" in proc.stdout, proc.stderr
    b.garbage_status = True  # the server changes its answers while the submission is scored
    proc = kd(tmp, "submissions", world["path"], "--set", "name=garbled", "--sync")
    assert proc.returncode == 2 and "0.attempt" in proc.stderr, proc.stderr
    reset(b)
    b.garbage_status = True
    proc = kd(tmp, "submit", world["path"], "--set", "name=garbled2")
    assert proc.returncode == 2 and "0.attempt" in proc.stderr  # before the upload: nothing recorded
    assert records(tmp, "garbled2") == []


def test_a_garbled_verdict_keeps_the_raw_answer(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, hold=True)

    proc = subprocess.Popen([KDSEARCH, "submit", str(world["path"]), "--set", "name=raw"], cwd=tmp,
                            env={**os.environ, "KDSEARCH_SUBMIT_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(r[0] == "POST" for r in b.requests) and time.time() < deadline:
        time.sleep(0.1)
    b.garbage_status = True  # the verdict arrives garbled
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "0.attempt" in err and "response.txt" in err
    assert TOKEN not in out + err
    [rec] = records(tmp, "raw")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    body = Path(client.download_artifacts(rec.info.run_id, "submission/response.txt", str(tmp / "dl"))).read_text()
    assert '"attempt": "first"' in body and TOKEN not in body and "***" in body
    assert rec.data.tags["submission.status"] == "pending"  # the server has it: `--sync` can still finish it


def test_a_wrong_token_stops_at_once(world):
    tmp, b = world["tmp"], world["b"]
    reset(b)
    proc = kd(tmp, "submit", world["path"], "--set", "name=wrong", token="not-the-token")
    assert proc.returncode == 2 and "submit.token_env KDSEARCH_SUBMIT_TOKEN" in proc.stderr and "401" in proc.stderr
    assert len(b.requests) == 1  # refused, not retried
    missing = kd(tmp, "submit", world["path"], "--set", "name=wrong", token=None)
    assert missing.returncode == 2 and "KDSEARCH_SUBMIT_TOKEN is not set" in missing.stderr
    assert len(b.requests) == 1 and records(tmp, "wrong") == []


def test_a_file_over_the_size_limit_is_refused_before_upload(world):
    tmp, b = world["tmp"], world["b"]
    reset(b)
    proc = kd(tmp, "submit", world["path"], "--set", "name=big", "--set", "student.max_size_mb=0.01")
    assert proc.returncode == 2 and "over student.max_size_mb 0.01" in proc.stderr and "not uploaded" in proc.stderr
    assert b.requests == [] and records(tmp, "big") == []


def test_sync_finishes_a_submission_whose_process_was_killed(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, hold=True)
    proc = subprocess.Popen([KDSEARCH, "submit", str(world["path"]), "--set", "name=killed"], cwd=tmp,
                            env={**os.environ, "KDSEARCH_SUBMIT_TOKEN": TOKEN}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it while it waits for the verdict
        recs = records(tmp, "killed")
        if recs and recs[0].data.tags.get("submission.status") == "pending" and len(b.polls) and \
                sum(1 for r in b.requests if r[0] == "GET") >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert records(tmp, "killed")[0].data.tags["submission.status"] == "pending"
    reset(b, pending_polls=0)
    synced = kd(tmp, "submissions", world["path"], "--set", "name=killed", "--sync")
    assert synced.returncode == 0, synced.stderr
    assert "successful" in synced.stdout and "0.8125" in synced.stdout
    [rec] = records(tmp, "killed")
    assert rec.data.tags["submission.status"] == "successful" and rec.data.metrics["submission.score"] == 0.8125


def test_waiting_past_the_timeout_says_how_to_sync(world):
    tmp, b = world["tmp"], world["b"]
    reset(b, hold=True)
    proc = kd(tmp, "submit", world["path"], "--set", "name=slow", "--set", "submit.timeout_s=1.5")
    assert proc.returncode == 0 and "still pending" in proc.stdout and "--sync" in proc.stdout
    assert records(tmp, "slow")[0].data.tags["submission.status"] == "pending"


MY_PROTOCOL = '''
import json
from pathlib import Path
from kdsearch.deploy.protocols import Protocol, Status

BOOK = Path(__file__).with_name("book.json")

class FileServer(Protocol):
    """A server that scores at once: an upload's size in MB is its score."""
    def submit(self, path):
        book = json.loads(BOOK.read_text()) if BOOK.exists() else []
        size = path.stat().st_size / 1e6
        book.append({"attempt": len(book) + 1, "status": "successful", "score": size, "model_size": size})
        BOOK.write_text(json.dumps(book))
        return {"attempt": len(book)}

    def statuses(self):
        return [Status(**e) for e in json.loads(BOOK.read_text())] if BOOK.exists() else []
'''


def test_a_protocol_of_your_own(world, tmp_path):
    tmp = world["tmp"]
    (tmp_path / "myservers.py").write_text(MY_PROTOCOL)
    env = {**os.environ, "KDSEARCH_SUBMIT_TOKEN": TOKEN, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([KDSEARCH, "submit", str(world["path"]), "--set", "name=own", "--set",
                           "submit.protocol=myservers:FileServer"], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "attempt 1: successful" in proc.stdout, proc.stderr[-2000:]
    size = (tmp / "out" / "best" / "student.torchscript.pt").stat().st_size / 1e6
    assert records(tmp, "own")[0].data.metrics["submission.score"] == pytest.approx(size)
    unknown = kd(tmp, "submit", world["path"], "--set", "name=own", "--set", "submit.protocol=kaggle")
    assert unknown.returncode == 2 and "submit.protocol 'kaggle': unknown" in unknown.stderr


def test_leaderboard(world):
    reset(world["b"])
    proc = kd(world["tmp"], "leaderboard", world["path"])
    assert proc.returncode == 0 and "team 1" in proc.stdout and "0.89" in proc.stdout


def test_the_token_is_nowhere_on_disk(world):
    """Last in this file: every byte the tests above made kdsearch write (store, artifacts, outputs)."""
    leaked = [p for p in world["tmp"].rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []

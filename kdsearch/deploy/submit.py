"""`kdsearch submit`, `submissions --sync`, `leaderboard`: the exported student to an evaluation server and back.

A submission is recorded in MLflow the moment it is uploaded (a run nested
under the search's parent run), then updated as the server scores it, so a
process killed while waiting loses nothing: `kdsearch submissions --sync`
finishes the record. The server's rate limit is an experiment tag in the same
store, so a second process (or a second machine on the same store) respects it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import tracking
from ..config import Config, SubmitConfig
from ..core.errors import KdsearchError
from .protocols import (
    TERMINAL,
    BadResponse,
    Protocol,
    RateLimited,
    Status,
    SubmitError,
    Unauthorized,
    Unavailable,
    create_protocol,
)

log = logging.getLogger("kdsearch")

OPEN = ("uploading", "pending", "unknown")  # statuses `--sync` asks the server about again


def settings(cfg: Config) -> SubmitConfig:
    if cfg.submit is None:
        raise KdsearchError("submit: the config has no submit section; add one with at least "
                            "submit.url (see README, 'Submitting to an evaluation server')")
    return cfg.submit


def token(cfg: Config) -> str:
    """The token from submit.token_env; exit 2 naming the variable when it is unset. Never printed."""
    name = settings(cfg).token_env
    value = os.environ.get(name, "").strip()
    if not value:
        raise KdsearchError(f"submit.token_env: the environment variable {name} is not set; "
                            f"export {name}=<your token> (it is never logged or stored)")
    return value


def connect(cfg: Config) -> Protocol:
    return create_protocol(settings(cfg), token(cfg))


def submission_file(cfg: Config, file: Path | None) -> Path:
    """The file to upload (default: the export's TorchScript or state_dict), checked: it exists, fits the size
    limit, and loads with plain torch."""
    import torch

    fmt = settings(cfg).format
    path = file or cfg.output_dir / "best" / ("student.torchscript.pt" if fmt == "torchscript" else "student.pt")
    if not path.is_file():
        raise KdsearchError(f"{path}: no exported student; run `kdsearch export-best CONFIG` (or pass --file)")
    limit = cfg.student.max_size_mb
    if path.stat().st_size > limit * 1e6:
        raise KdsearchError(f"{path}: {path.stat().st_size / 1e6:.2f} MB is over student.max_size_mb {limit:g}; "
                            "not uploaded. Export a smaller student, or search its format (search.space.precision: "
                            "{choice: [fp32, fp16, int8]})")
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated; the course server wants it
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.load(str(path), map_location="cpu")
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise KdsearchError(f"{path}: does not load as submit.format {fmt} ({type(e).__name__}); "
                            "not uploaded") from None
    return path


@dataclass
class Submission:
    run_id: str
    attempt: int | None
    status: str
    score: float | None
    model_size: float | None
    local_val_macro_f1: float | None
    entry: dict[str, Any]


def _local(path: Path) -> dict[str, str]:
    """What the export's model card says about the student: its trial and local val macro-F1."""
    card = path.parent / "model_card.json"
    if not card.is_file():
        return {}
    c = json.loads(card.read_text())
    out = {"trial_id": str(c.get("trial_id", "")), "student": str(c.get("student", ""))}
    f1 = c.get("metrics", {}).get("val_macro_f1")
    return {**out, **({"local_val_macro_f1": f"{f1:.6f}"} if f1 is not None else {})}


def _wait_for_slot(cfg: Config, wait: bool, say: Callable[[str], None]) -> None:
    allowed = tracking.next_allowed_at(cfg)
    delay = allowed - time.time()
    if delay <= 0:
        return
    when = time.strftime("%H:%M:%S", time.localtime(allowed))
    if not wait:
        raise KdsearchError(f"submit.min_interval_s: the server accepts the next submission at {when} (in "
                            f"{delay:.0f} s); try again then, or drop --no-wait to wait for it")
    say(f"the server accepts the next submission at {when}; waiting {delay:.0f} s")
    time.sleep(delay)


def submit(cfg: Config, file: Path | None = None, wait: bool = True,
           say: Callable[[str], None] = log.info) -> Submission:
    """Upload, record, and (with `wait`) poll until the server's verdict or submit.timeout_s."""
    s = settings(cfg)
    server = connect(cfg)  # the token is checked before anything else
    path = submission_file(cfg, file)
    data = path.read_bytes()
    tags = {"server": s.url, "protocol": s.protocol, "format": s.format, "file": str(path),
            "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": str(len(data)), **_local(path)}
    deadline = time.time() + s.timeout_s
    while True:
        _wait_for_slot(cfg, wait, say)
        known = {e.attempt for e in _statuses(cfg, server, None)}
        run_id = tracking.start_submission(cfg, {**tags, "status": "uploading"})
        try:
            answer = server.submit(path)
        except RateLimited as e:
            tracking.delete_submission(cfg, run_id)  # nothing was submitted
            wait_s = e.retry_after_s if e.retry_after_s is not None else s.min_interval_s
            tracking.set_next_allowed_at(cfg, time.time() + max(1.0, wait_s))  # at least 1 s: never a busy loop
            if not wait or time.time() + wait_s > deadline:
                _wait_for_slot(cfg, False, say)  # says when the server will take it
            continue
        except Unavailable as e:
            tracking.update_submission(cfg, run_id, {"status": "unknown", "error": str(e)})
            raise KdsearchError(f"submit.url {s.url}: {e}; the upload may or may not have arrived, so it is "
                                "recorded as unknown: `kdsearch submissions CONFIG --sync` checks it later") from None
        except SubmitError as e:
            _fail(cfg, run_id, e)
        break
    tracking.set_next_allowed_at(cfg, time.time() + s.min_interval_s)
    attempt = answer.get("attempt") if isinstance(answer.get("attempt"), int) else None
    tracking.update_submission(cfg, run_id, {"status": "pending", "submitted_at": f"{time.time():.3f}"})
    say(f"uploaded {path.name} ({len(data) / 1e6:.2f} MB) to {s.url}; recorded as MLflow run {run_id}")
    sub = _record(cfg, server, run_id, attempt, known)
    while wait and sub.status not in TERMINAL and time.time() < deadline:
        time.sleep(min(s.poll_interval_s, max(0.0, deadline - time.time())))
        sub = _record(cfg, server, run_id, sub.attempt, known)
        say(f"attempt {sub.attempt if sub.attempt is not None else '?'}: {sub.status}"
            f" ({time.time() - (deadline - s.timeout_s):.0f} s)")
    if "local_val_macro_f1" in tags:
        sub.local_val_macro_f1 = float(tags["local_val_macro_f1"])
    return sub


def _fail(cfg: Config, run_id: str, e: SubmitError, uploaded: bool = False) -> None:
    """Record a refused upload or an unreadable answer, then stop with one clear line (exit 2). A submission the
    server already has stays open for `--sync`."""
    if uploaded:
        tracking.update_submission(cfg, run_id, {"error": str(e)})
    else:
        tracking.update_submission(cfg, run_id, {"status": "error", "error": str(e)}, finished=True)
    if isinstance(e, BadResponse):
        tracking.log_submission_text(cfg, run_id, "response.txt", e.body)
        raise KdsearchError(f"submit.url {cfg.submit.url}: {e}; the raw answer is kept on MLflow run {run_id} "
                            "(submission/response.txt)") from None
    if isinstance(e, Unauthorized):
        raise KdsearchError(f"submit.token_env {cfg.submit.token_env}: {e}; check the token in that variable") from None
    raise KdsearchError(f"submit.url {cfg.submit.url}: {e}") from None


def _statuses(cfg: Config, server: Protocol, run_id: str | None) -> list[Status]:
    try:
        return server.statuses()
    except Unavailable as e:
        raise KdsearchError(f"submit.url {cfg.submit.url}: {e}; `kdsearch submissions CONFIG --sync` tries "
                            "again later") from None
    except SubmitError as e:
        if isinstance(e, Unauthorized) and run_id is None:
            raise KdsearchError(f"submit.token_env {cfg.submit.token_env}: {e}; check the token in that "
                                "variable") from None
        if run_id is None:
            raise KdsearchError(f"submit.url {cfg.submit.url}: {e}") from None
        _fail(cfg, run_id, e, uploaded=True)
        raise


def _record(cfg: Config, server: Protocol, run_id: str, attempt: int | None, known: set[int]) -> Submission:
    """Ask the server about this submission and write what it says to its run."""
    entries = _statuses(cfg, server, run_id)
    entry = next((e for e in entries if e.attempt == attempt), None) if attempt is not None else \
        max((e for e in entries if e.attempt not in known), key=lambda e: e.attempt, default=None)
    return _apply(cfg, server, run_id, entry, attempt)


def _apply(cfg: Config, server: Protocol, run_id: str, entry: Status | None, attempt: int | None) -> Submission:
    if entry is None:  # not listed yet
        return Submission(run_id, attempt, "pending", None, None, None, {})
    raw = json.loads(server.scrub(entry.model_dump_json()))
    metrics = {k: raw[k] for k in ("score", "model_size") if raw.get(k) is not None}
    tags = {"attempt": str(entry.attempt), "status": entry.status,
            "entry": json.dumps(raw, sort_keys=True)[:4000]}  # every field the server gave, extras included
    reason = next((str(raw[k]) for k in ("reason", "error", "message", "detail") if raw.get(k)), None)
    if reason:
        tags["reason"] = reason[:1000]
    tracking.update_submission(cfg, run_id, tags, metrics, finished=entry.status in TERMINAL)
    return Submission(run_id, entry.attempt, entry.status, raw.get("score"), raw.get("model_size"), None, raw)


def sync(cfg: Config) -> int:
    """Ask the server about every submission not yet scored and update its record; returns how many were updated."""
    every = tracking.submissions(cfg)
    open_ = [r for r in every if r.get("status") in OPEN]
    if not open_:
        return 0
    server = connect(cfg)
    entries = _statuses(cfg, server, None)
    recorded = {int(r["attempt"]) for r in every if r.get("attempt")}
    unclaimed = sorted((e for e in entries if e.attempt not in recorded), key=lambda e: e.attempt)
    for r in open_:
        if r.get("attempt"):
            entry = next((e for e in entries if e.attempt == int(r["attempt"])), None)
        else:  # uploaded, never matched (killed before the server listed it): the oldest unclaimed attempt
            entry = unclaimed.pop(0) if unclaimed else None
        _apply(cfg, server, r["run_id"], entry, int(r["attempt"]) if r.get("attempt") else None)
    return len(open_)


def leaderboard(cfg: Config) -> list[dict[str, str]]:
    server = connect(cfg)
    try:
        rows = server.leaderboard()
    except Exception as e:  # a page, not an API: any failure is the server's
        raise KdsearchError(server.scrub(f"submit.leaderboard_url {cfg.submit.leaderboard_url}: cannot read it "
                                         f"({type(e).__name__}: {e})")) from None
    if rows is None:
        raise KdsearchError("submit.leaderboard_url: not set; add the server's leaderboard page to the config")
    return rows

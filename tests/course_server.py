"""A local evaluation server speaking the course protocol, with injectable behaviour, for the submission tests.

POST /submit (multipart: token, file) -> {"attempt": n} | 401 | 429 | 500
GET /submission-status/<token> -> [{"attempt", "score", "model_size", "status", ...}]
GET /leaderboard -> an HTML table
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    token: str = "tok-SENTINEL-5ad1"
    pending_polls: int = 2  # status answers that say pending before the verdict
    score: float = 0.8125
    fail_reason: str | None = None  # the verdict is failed with this reason
    hold: bool = False  # stay pending until released
    min_interval_s: float = 0.0  # 429 when submitting sooner than this after the last upload
    retry_after: str | None = None  # Retry-After header of a 429
    submit_errors: int = 0  # 500 answers before an upload is accepted
    garbage_status: bool = False  # the status list is not JSON of the protocol's shape
    max_bytes: int = 25_000_000
    delay_s: float = 0.0  # every answer this slow
    requests: list = field(default_factory=list)  # (method, path, form fields)
    attempts: list = field(default_factory=list)
    polls: dict = field(default_factory=dict)
    last_upload: float = 0.0


def start(behaviour: Behaviour) -> tuple[ThreadingHTTPServer, str]:
    b = behaviour
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: str | bytes, ctype: str = "application/json", headers: dict | None = None):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            time.sleep(b.delay_s)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            form = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                    for p in msg.iter_parts()}
            with lock:
                b.requests.append(("POST", self.path, sorted(form)))
                if self.path != "/submit":
                    return self._send(404, "{}")
                if form.get("token", b"").decode() != b.token:
                    return self._send(401, '{"detail": "invalid token"}')
                if b.submit_errors > 0:
                    b.submit_errors -= 1
                    return self._send(500, "internal error")
                if time.time() - b.last_upload < b.min_interval_s:
                    headers = {"Retry-After": b.retry_after} if b.retry_after is not None else {}
                    return self._send(429, '{"detail": "one submission per 15 minutes"}', headers=headers)
                b.last_upload = time.time()
                size = len(form.get("file", b""))
                attempt = len(b.attempts) + 1
                b.attempts.append({"attempt": attempt, "score": None, "model_size": round(size / 1e6, 3),
                                   "status": "pending", "submitted": "2026-11-24T10:00:00",
                                   "bytes": size})
                b.polls[attempt] = 0
                return self._send(200, json.dumps({"attempt": attempt}))

        def do_GET(self):
            time.sleep(b.delay_s)
            with lock:
                b.requests.append(("GET", self.path, []))
                if self.path == "/leaderboard":
                    rows = "".join(f"<tr><td>{i}</td><td>team {i}</td><td>0.{90 - i}</td><td>4.2</td></tr>"
                                   for i in (1, 2))
                    return self._send(200, f"<html><table><tr><th>rank</th><th>team</th><th>score</th>"
                                           f"<th>size</th></tr>{rows}</table></html>", "text/html")
                if not self.path.startswith("/submission-status/"):
                    return self._send(404, "{}")
                if self.path.rsplit("/", 1)[1] != b.token:
                    return self._send(401, '{"detail": "invalid token"}')
                if b.garbage_status:
                    return self._send(200, json.dumps([{"attempt": "first", "status": "done", "echo": b.token}]))
                for a in b.attempts:
                    if a["status"] != "pending" or b.hold:
                        continue
                    b.polls[a["attempt"]] += 1
                    if b.polls[a["attempt"]] > b.pending_polls:
                        if a["bytes"] > b.max_bytes:
                            a.update(status="failed", reason=f"model is {a['bytes']} bytes, over {b.max_bytes}")
                        elif b.fail_reason:
                            a.update(status="failed", reason=b.fail_reason)
                        else:
                            a.update(status="successful", score=b.score)
                return self._send(200, json.dumps(b.attempts))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"

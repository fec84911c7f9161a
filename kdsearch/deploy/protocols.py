"""Evaluation-server protocols: how a student is uploaded and its verdict read, one small class per kind of server.

`course` is built in (a course's server: POST {url}/submit, GET
{url}/submission-status/{token}); `submit.protocol: package.module:Class`
names your own subclass of `Protocol`. A protocol speaks HTTP and raises the
errors below; recording, waiting and rate limits live in submit.py.

The token is a secret: every message a protocol raises goes through `scrub`,
because the course's status URL itself contains the token.
"""

from __future__ import annotations

import email.utils
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from ..config import SubmitConfig
from ..core.errors import KdsearchError
from ..core.registry import Registry, import_object

TERMINAL = ("successful", "failed")


class SubmitError(Exception):
    """A server problem, its message already free of the token."""


class RateLimited(SubmitError):
    def __init__(self, message: str, retry_after_s: float | None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthorized(SubmitError):
    """The server refused the token (401/403): retrying cannot help."""


class Unavailable(SubmitError):
    """5xx answers or dropped connections, after every retry."""


class BadResponse(SubmitError):
    def __init__(self, message: str, body: str):
        super().__init__(message)
        self.body = body


class Status(BaseModel):
    """One attempt as the server lists it; fields the server adds are kept."""

    model_config = ConfigDict(extra="allow")
    attempt: int
    status: Literal["pending", "successful", "failed"]
    score: float | None = None
    model_size: float | None = None


_STATUSES = TypeAdapter(list[Status])


class Protocol:
    """One server's API. Subclasses implement `submit` and `statuses` (and `leaderboard` if the server has one)."""

    def __init__(self, settings: SubmitConfig, token: str):
        self.settings, self.url, self._token = settings, settings.url.rstrip("/"), token

    def scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def submit(self, path: Path) -> dict[str, Any]:
        """Upload the file; returns what the server said (an `attempt` number if it gives one)."""
        raise NotImplementedError

    def statuses(self) -> list[Status]:
        """Every attempt of this token, as the server lists them."""
        raise NotImplementedError

    def leaderboard(self) -> list[dict[str, str]] | None:
        return None


PROTOCOLS: Registry[type[Protocol]] = Registry("submit.protocol")


def register_protocol(name: str):
    return PROTOCOLS.register(name)


def create_protocol(settings: SubmitConfig, token: str) -> Protocol:
    name = settings.protocol
    if ":" in name:
        cls = import_object(name, "submit.protocol")
        if not (isinstance(cls, type) and issubclass(cls, Protocol)):
            raise KdsearchError(f"submit.protocol {name}: not a subclass of kdsearch.protocols.Protocol")
    elif name in PROTOCOLS:
        cls = PROTOCOLS[name]
    else:
        raise KdsearchError(f"submit.protocol {name!r}: unknown; use {', '.join(PROTOCOLS.names())} or "
                            "package.module:Class")
    return cls(settings, token)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when is not None else None


@register_protocol("course")
class CourseProtocol(Protocol):
    """The course server: multipart POST {url}/submit (token, file); GET {url}/submission-status/{token} -> JSON list
    of {attempt, score, model_size, status: pending | successful | failed, ...}; a 429 when submitting too soon."""

    timeout_s = 60.0  # per request: an upload of 25 MB on a slow link

    def __init__(self, settings: SubmitConfig, token: str):
        super().__init__(settings, token)
        self.session = requests.Session()

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One request, retried with exponential backoff on 5xx answers and dropped connections."""
        last = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(min(2.0 ** (attempt - 1), 30.0))
            for f in kwargs.get("files", {}).values():  # a retried upload starts from the file's beginning
                f[1].seek(0)
            try:
                r = self.session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
            except requests.RequestException as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code in (401, 403):
                raise Unauthorized(f"the server refused the token (HTTP {r.status_code})")
            if r.status_code == 429:
                raise RateLimited("the server refused a submission this soon (HTTP 429)",
                                  retry_after_seconds(r.headers.get("Retry-After")))
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code >= 400:
                raise BadResponse(f"{method} {self.scrub(path)} answered HTTP {r.status_code}", self.scrub(r.text))
            return r
        raise Unavailable(self.scrub(f"{self.url} did not answer after {self.settings.retries + 1} tries ({last})"))

    def submit(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as f:
            r = self._request("POST", "/submit", data={"token": self._token},
                              files={"file": (path.name, f, "application/octet-stream")})
        try:
            body = r.json()
        except ValueError:
            return {}  # an upload acknowledged without JSON: the attempt is found in the status list
        return body if isinstance(body, dict) else {}

    def statuses(self) -> list[Status]:
        r = self._request("GET", f"/submission-status/{self._token}")
        try:
            return _STATUSES.validate_json(r.content)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "the body"
            raise BadResponse(f"the status list is not what the course protocol expects: {where}: {err['msg']}",
                              self.scrub(r.text)) from None

    def leaderboard(self) -> list[dict[str, str]] | None:
        if not self.settings.leaderboard_url:
            return None
        r = self.session.get(self.settings.leaderboard_url, timeout=self.timeout_s)
        r.raise_for_status()
        return parse_html_table(r.text)


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_html_table(html: str) -> list[dict[str, str]]:
    """The first HTML table as a list of {header: cell}. The standard library's parser: pandas.read_html would
    need lxml or BeautifulSoup for one small table."""
    parser = _TableParser()
    parser.feed(html)
    rows = [r for r in parser.rows if r]
    if not rows:
        return []
    return [dict(zip(rows[0], r)) for r in rows[1:]]

"""A Python client for the Secateurs HTTP API (httpx, synchronous).

    from workers.client import Client

    client = Client("http://127.0.0.1:8000", api_key=None)
    job = client.submit("model.keras", "data.npz", {"steps": [{"kind": "prune", "target_sparsity": 0.5}]})
    job = job.wait(timeout=600, on_event=print)       # follows /v1/jobs/{id}/events (SSE)
    paths = job.download("out/")                      # every artifact, streamed, sha256 checked

Requests are retried safely: every submit carries an `Idempotency-Key` (a new uuid unless given), so a submit
retried after a lost answer returns the job it created instead of a second one; 503 and 429 answers are retried
after their `Retry-After` (capped) or an exponential backoff; connection errors are retried a bounded number of
times. A request that cannot succeed raises `ApiError` with the server's problem document (status, code, field,
detail); a server that stays unreachable raises `ServerUnreachable`; a wait past its timeout raises `WaitTimeout`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from workers.client_errors import (
    ApiError,
    ChecksumMismatch,
    ClientError,
    JobNotFinished,
    ServerUnreachable,
    WaitTimeout,
)

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_CHUNK = 1 << 20

__all__ = [
    "ApiError",
    "ChecksumMismatch",
    "Client",
    "ClientError",
    "DEFAULT_URL",
    "Event",
    "Job",
    "JobNotFinished",
    "RetryPolicy",
    "ServerUnreachable",
    "TERMINAL",
    "WaitTimeout",
]


# -- values ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a request is retried. Pauses double from `backoff` up to `max_backoff` seconds (with a
    little jitter); a `Retry-After` answer is honoured up to `max_backoff` too."""

    attempts: int = 5  # tries of one request in all, the first included
    backoff: float = 0.5
    max_backoff: float = 30.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if not (self.backoff >= 0 and self.max_backoff >= 0):
            raise ValueError("RetryPolicy.backoff and max_backoff must be >= 0")

    def pause(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        base = min(self.backoff * 2 ** (retry - 1), self.max_backoff)
        return base * random.uniform(0.9, 1.1)


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: `kind` is status, progress or log; `data` is the event's JSON."""

    kind: str
    seq: int
    data: dict = field(default_factory=dict)


class Job:
    """A job document (GET /v1/jobs/{id}) bound to the client that fetched it."""

    def __init__(self, client: Client, doc: Mapping[str, Any]):
        self.client = client
        self.doc = dict(doc)

    id = property(lambda self: self.doc["id"])
    status = property(lambda self: self.doc["status"])
    terminal = property(lambda self: self.doc["status"] in TERMINAL)
    manifest = property(lambda self: self.doc.get("manifest"))
    summary = property(lambda self: (self.doc.get("manifest") or {}).get("summary"))
    error = property(lambda self: self.doc.get("error"))
    artifacts = property(lambda self: list(self.doc.get("artifacts") or []))
    url = property(lambda self: (self.doc.get("links") or {}).get("self"))

    def refresh(self) -> Job:
        self.doc = self.client.get(self.id).doc
        return self

    def wait(self, timeout: float | None = None, on_event: Callable[[Event], None] | None = None) -> Job:
        self.doc = self.client.wait(self.id, timeout, on_event).doc
        return self

    def download(self, dest: str | os.PathLike) -> list[Path]:
        return self.client.download(self, dest)

    def cancel(self) -> Job:
        self.doc = self.client.cancel(self.id).doc
        return self

    def delete(self) -> None:
        self.client.delete(self.id)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status!r})"


# -- the client ------------------------------------------------------------------------------------------------------

_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # nothing reached the server
_RETRY_STATUSES = (429, 503)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error(resp: httpx.Response) -> ApiError:
    text = resp.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return ApiError(resp.status_code, body if isinstance(body, dict) else None, text=text)


def _spec_text(spec) -> str:
    """A spec as JSON text: a mapping, a pydantic JobSpec, JSON text (str) or a path to a JSON file (Path)."""
    if isinstance(spec, Mapping):
        return json.dumps(spec)
    if hasattr(spec, "model_dump_json"):
        return spec.model_dump_json()
    if isinstance(spec, os.PathLike):
        return Path(spec).read_text()
    if isinstance(spec, str):
        return spec
    raise TypeError(f"spec must be a dict, JSON text, a JobSpec or a path, not {type(spec).__name__}")


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


class Client:
    """Talks to one Secateurs server. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        base_url = base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, not {base_url!r}")
        headers = {"User-Agent": "secateurs-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- one request, retried ------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        replay_safe: bool,
        stream: bool = False,
        files: Callable[[ExitStack], dict] | None = None,
        **kw,
    ) -> httpx.Response:
        """Send with retries; returns a 2xx/3xx response (open when `stream`), raises ApiError / ServerUnreachable.

        503 and 429 are always retried (the server changed nothing). A connection that failed before the request
        reached the server is always retried; one that failed later only when `replay_safe` (GET, or a POST whose
        Idempotency-Key makes a repeat harmless). `files` opens fresh upload files for every attempt."""
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            last = attempt == policy.attempts
            with ExitStack() as stack:
                extra = files(stack) if files else {}
                try:
                    resp = self._http.send(self._http.build_request(method, path, **kw, **extra), stream=stream)
                except httpx.TransportError as e:
                    if last or not (replay_safe or isinstance(e, _CONNECT_ERRORS)):
                        raise ServerUnreachable(
                            f"{method} {self.base_url}{path}: {type(e).__name__}: {e or 'no answer'}"
                        ) from e
                    time.sleep(policy.pause(attempt))
                    continue
            if resp.status_code < 400:
                return resp
            if stream:
                resp.read()
                resp.close()
            if resp.status_code in _RETRY_STATUSES and not last:
                time.sleep(policy.pause(attempt, _retry_after(resp.headers.get("Retry-After"))))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, *, replay_safe: bool = True, **kw) -> Any:
        return self._send(method, path, replay_safe=replay_safe, **kw).json()

    # -- jobs ----------------------------------------------------------------------------------------------------

    def submit(
        self,
        model: str | os.PathLike,
        data: str | os.PathLike | None,
        spec,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Upload a model, an optional dataset and a spec; answers the queued job. Retries reuse one
        Idempotency-Key, so a retried submit never creates a second job."""
        model, data = Path(model), (Path(data) if data is not None else None)
        fields = {"spec": _spec_text(spec)}
        if webhook_url:
            fields["webhook_url"] = webhook_url
        key = idempotency_key or uuid.uuid4().hex

        def files(stack: ExitStack) -> dict:
            out = {"model": (model.name, stack.enter_context(open(model, "rb")), "application/octet-stream")}
            if data is not None:
                out["data"] = (data.name, stack.enter_context(open(data, "rb")), "application/octet-stream")
            return {"files": out}

        resp = self._send(
            "POST", "/v1/jobs", replay_safe=True, files=files, data=fields, headers={"Idempotency-Key": key}
        )
        return Job(self, resp.json())

    def get(self, job_id: str, wait: float = 0) -> Job:
        """The job now; with `wait` (seconds, at most 60) as soon as its status changes (long-poll)."""
        params = {"wait": wait} if wait else None
        timeout = self._http.timeout.read + wait if wait else httpx.USE_CLIENT_DEFAULT
        return Job(self, self._json("GET", f"/v1/jobs/{quote(job_id, safe='')}", params=params, timeout=timeout))

    def list(self, status: str | list[str] | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first, every page followed (up to `limit` jobs)."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        out: list[Job] = []
        cursor = None
        while limit is None or len(out) < limit:
            page_size = 200 if limit is None else min(200, limit - len(out))
            params = (
                [("limit", page_size)] + [("status", s) for s in statuses] + ([("cursor", cursor)] if cursor else [])
            )
            page = self._json("GET", "/v1/jobs", params=params)
            out += [Job(self, d) for d in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job at once, a running one at its next batch (the answer says `cancel_requested`)."""
        return Job(self, self._json("POST", f"/v1/jobs/{quote(job_id, safe='')}/cancel"))  # repeatable

    def delete(self, job_id: str) -> None:
        """Delete a finished (or queued) job and its artifacts."""
        self._send("DELETE", f"/v1/jobs/{quote(job_id, safe='')}", replay_safe=False)

    def preflight(self, model: str | os.PathLike, spec=None) -> dict:
        """POST /v1/preflight: what the service can prune in `model` (and what `spec` would leave), no training."""
        model = Path(model)
        fields = {"spec": _spec_text(spec)} if spec is not None else {}

        def files(stack: ExitStack) -> dict:
            return {
                "files": {"model": (model.name, stack.enter_context(open(model, "rb")), "application/octet-stream")}
            }

        return self._json("POST", "/v1/preflight", files=files, data=fields)

    # -- waiting -------------------------------------------------------------------------------------------------

    def wait(
        self, job: str | Job, timeout: float | None = None, on_event: Callable[[Event], None] | None = None
    ) -> Job:
        """Follow the job's event stream (SSE) until it ends; answers the final job document. A dropped stream is
        resumed where it stopped. WaitTimeout after `timeout` seconds (None: no limit; a quiet job is noticed at the
        server's next keep-alive, at most 15 s late)."""
        job_id = job.id if isinstance(job, Job) else job
        deadline = None if timeout is None else time.monotonic() + timeout
        seq, status, drops = 0, None, 0
        while True:
            got = False
            try:
                for ev in self._events(job_id, seq, deadline):
                    seq, drops, got = max(seq, ev.seq), 0, True
                    if ev.kind == "status":
                        status = ev.data.get("status", status)
                    if on_event is not None:
                        on_event(ev)
                    if status in TERMINAL:
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout(job_id, status, timeout)
            except (ServerUnreachable, httpx.TransportError) as e:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(job_id, status, timeout) from None
                drops += 1
                if drops >= self.retry.attempts:
                    raise (
                        e
                        if isinstance(e, ServerUnreachable)
                        else ServerUnreachable(f"the event stream of {job_id} keeps failing: {type(e).__name__}: {e}")
                    ) from e
                time.sleep(self.retry.pause(drops))
                continue
            current = self.get(job_id)
            if current.terminal:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, current.status, timeout)
            if not got:  # the stream ended early with nothing new: do not spin
                time.sleep(self.retry.pause(1))

    def _events(self, job_id: str, after: int, deadline: float | None) -> Iterator[Event]:
        """The job's events after `after`, parsed from its text/event-stream. Parsed here rather than with httpx-sse
        because the clock must be checked on every line, the server's keep-alive comments (pings) included: a job
        that stays quiet past the deadline still ends the wait on time."""
        # the server pings every 15 s: a read timeout of 45 s means the connection is gone
        read = 45.0 if deadline is None else max(0.5, min(45.0, deadline - time.monotonic() + 0.5))
        resp = self._send(
            "GET",
            f"/v1/jobs/{quote(job_id, safe='')}/events",
            replay_safe=True,
            stream=True,
            params={"after": after},
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(self._http.timeout.connect or 10.0, read=read),
        )
        kind, data, last_id = "message", [], None
        try:
            for line in resp.iter_lines():
                if deadline is not None and time.monotonic() >= deadline:
                    return  # the caller sees the deadline
                if not line:  # a blank line dispatches the event (WHATWG HTML, server-sent events)
                    if data:
                        payload = json.loads("\n".join(data))
                        yield Event(kind=kind, seq=int(last_id or payload.get("seq") or 0), data=payload)
                    kind, data = "message", []
                elif not line.startswith(":"):  # ":" starts a comment: the keep-alive pings
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        kind = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        last_id = value
        except httpx.ReadTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                return
            raise
        finally:
            resp.close()

    # -- artifacts -----------------------------------------------------------------------------------------------

    def download(self, job: str | Job, dest: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
        """Stream every artifact (or `names`) of a succeeded job into `dest`, each checked against the sha256 the
        server sends (X-Checksum-SHA256) and the one in the job document; a mismatch is downloaded again, then
        raises ChecksumMismatch. Files appear under their final name only once verified."""
        job = self.get(job) if isinstance(job, str) else job
        if job.status != "succeeded":
            job = job.refresh()
        if job.status != "succeeded":
            raise JobNotFinished(job.id, job.status)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        wanted = [a for a in job.artifacts if names is None or a["name"] in names]
        missing = set(names or ()) - {a["name"] for a in wanted}
        if missing:
            raise ClientError(f"job {job.id} has no artifact {', '.join(sorted(missing))}")
        paths = []
        for art in wanted:
            if not _safe_name(art["name"]):
                raise ClientError(f"refusing an artifact name that is not a plain file name: {art['name']!r}")
            paths.append(self._download_one(job.id, art, dest))
        return paths

    def _download_one(self, job_id: str, art: dict, dest: Path) -> Path:
        name = art["name"]
        target, part = dest / name, dest / f".{name}.part"
        path = f"/v1/jobs/{quote(job_id, safe='')}/artifacts/{quote(name, safe='')}"
        for attempt in range(1, self.retry.attempts + 1):
            digest = hashlib.sha256()
            try:
                resp = self._send("GET", path, replay_safe=True, stream=True)
                try:
                    expected = resp.headers.get("X-Checksum-SHA256") or art.get("sha256")
                    with open(part, "wb") as f:
                        for chunk in resp.iter_bytes(_CHUNK):
                            digest.update(chunk)
                            f.write(chunk)
                finally:
                    resp.close()
            except httpx.TransportError as e:  # the stream broke part way
                part.unlink(missing_ok=True)
                if attempt == self.retry.attempts:
                    raise ServerUnreachable(f"downloading {name}: {type(e).__name__}: {e}") from e
                time.sleep(self.retry.pause(attempt))
                continue
            actual = digest.hexdigest()
            documented = art.get("sha256")
            if expected and actual == expected and (not documented or documented == actual):
                os.replace(part, target)
                return target
            part.unlink(missing_ok=True)
            if attempt == self.retry.attempts:
                raise ChecksumMismatch(name, expected or documented, actual)
            time.sleep(self.retry.pause(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

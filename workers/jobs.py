"""Jobs as the store keeps them: statuses, allowed transitions, records and events."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

# Every status change a job can go through; the job store's conditional updates take their status conditions from
# this table (`_leaving` in workers/store/schema.py, used by workers/store/sql.py) and refuse any change it does not
# list.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # running -> queued: an interrupted attempt is re-queued (the next claim counts another attempt)
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[JobStatus(old)]


class EventKind(StrEnum):
    STATUS = "status"  # data: {"status": ..., "reason"?: ...}
    PROGRESS = "progress"  # data: Progress.to_dict()
    LOG = "log"  # data: {"message": ...}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_id_lock = threading.Lock()
_last_us = 0


def new_job_id() -> str:
    """Sortable by creation time (fixed-width hex microseconds, strictly increasing within a process) and
    unguessable (random suffix)."""
    global _last_us
    with _id_lock:
        _last_us = max(time.time_ns() // 1000, _last_us + 1)
        stamp = _last_us
    return f"job_{stamp:014x}{secrets.token_hex(8)}"


@dataclass(frozen=True)
class InputFile:
    """An uploaded file as stored: its role (model/data), stored name, original file name, size and sha256."""

    role: str
    name: str
    filename: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "filename": self.filename, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class ArtifactInfo:
    name: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class NewJob:
    """Everything the API knows about a job when it saves it (before any worker sees it)."""

    tenant: str
    spec: dict
    inputs: dict[str, InputFile]
    id: str = field(default_factory=new_job_id)
    webhook_url: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None  # sha256 of the request (see service.services.jobs.request_fingerprint)


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    status: JobStatus
    spec: dict
    inputs: dict[str, InputFile]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    max_attempts: int = 1
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    progress: dict | None = None
    manifest: dict | None = None
    error: dict | None = None
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    webhook_url: str | None = None
    idempotency_key: str | None = None
    request_fingerprint: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    seq: int
    kind: EventKind
    data: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict:
        """The event as the API shows it (a status event's error with its `type` alias, see `public_error`)."""
        data = {**self.data, "error": public_error(self.data["error"])} if self.data.get("error") else self.data
        return {"seq": self.seq, "kind": str(self.kind), "at": self.created_at.isoformat(), **data}


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    tenant: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None
    admin: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def error_dict(code: str, message: str, **extra) -> dict:
    """The error of a failed job as stored: {"code": code, "message": ...} and "field" where one is at fault (the
    same shape as `SecateursError.to_dict()`)."""
    return {"code": code, "message": message, **extra}


def public_error(error: dict | None) -> dict | None:
    """A job's error as the API, its events and webhooks show it: `code`, and `type` with the same value, a
    deprecated alias kept because the API documented error {type, message} before `code` (docs/SERVICE.md). Errors
    stored before the rename carry `type` only; they are shown the same way."""
    if not error:
        return error
    code = error.get("code", error.get("type"))
    return {"code": code, "type": code, **{k: v for k, v in error.items() if k not in ("code", "type")}}

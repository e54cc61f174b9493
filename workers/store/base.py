"""The job store protocol: the one place where job state changes, each change a conditional update."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from workers.jobs import ApiKeyRecord, ArtifactInfo, EventKind, JobEvent, JobRecord, JobStatus, NewJob


@dataclass(frozen=True)
class TenantQuota:
    max_active_jobs: int
    max_stored_jobs: int
    max_stored_artifacts: int | None = None  # artifacts of the tenant's finished jobs; None: no limit


@dataclass(frozen=True)
class Claim:
    """A claimed attempt: the job as it is now running, and the attempt number that owns it."""

    job: JobRecord
    attempt: int
    worker_id: str


@dataclass(frozen=True)
class SweepResult:
    job_id: str
    status: JobStatus  # queued (re-queued) or failed/cancelled


@dataclass(frozen=True)
class Page:
    items: list[JobRecord]
    next_cursor: str | None


class JobStore(Protocol):
    # jobs ------------------------------------------------------------------------------------------------------
    def create_job(self, new: NewJob, *, max_attempts: int, quota: TenantQuota | None = None) -> tuple[JobRecord, bool]:
        """Save a queued job; returns (job, created). An existing (tenant, idempotency_key) returns (that job,
        False)."""

    def get_job(self, job_id: str, tenant: str | None = None) -> JobRecord | None: ...

    def find_by_idempotency_key(self, tenant: str, key: str) -> JobRecord | None: ...

    def list_jobs(
        self,
        tenant: str | None,
        *,
        statuses: Iterable[JobStatus] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page: ...

    def count_jobs(self, tenant: str | None = None, statuses: Iterable[JobStatus] | None = None) -> int: ...

    def count_artifacts(self, tenant: str) -> int:
        """Artifacts (output files) the tenant's jobs hold in the artifact store."""

    def counts_by_status(self) -> dict[JobStatus, int]: ...

    def durations(self) -> list[tuple[JobStatus, float]]: ...

    def job_ids(self) -> set[str]: ...

    def delete_job(self, job_id: str) -> bool: ...

    # lifecycle -------------------------------------------------------------------------------------------------
    def queued_job_ids(self, limit: int = 20) -> list[str]: ...

    def claim(self, job_id: str, worker_id: str) -> Claim | None:
        """queued -> running, attempts + 1, only if still queued and under max attempts (else None)."""

    def heartbeat(self, claim: Claim) -> bool:
        """Refresh the running attempt's heartbeat; False when the attempt no longer owns the job."""

    def finish(
        self,
        claim: Claim,
        status: JobStatus,
        *,
        manifest: dict | None = None,
        error: dict | None = None,
        artifacts: list[ArtifactInfo] | None = None,
    ) -> bool:
        """running -> terminal, only for the attempt that owns the job."""

    def retry(self, claim: Claim, reason: str) -> Claim | None:
        """running -> running as the next attempt of the same worker (the ended attempt is spent), only for the
        attempt that owns the job, while attempts remain and no cancel was requested; None otherwise."""

    def release(self, claim: Claim, reason: str) -> bool:
        """running -> queued without spending the attempt (graceful worker shutdown)."""

    def sweep_stale(
        self, older_than: datetime, *, dead_worker: Callable[[str], bool] | None = None
    ) -> list[SweepResult]:
        """Running jobs whose heartbeat is older than `older_than` (or whose worker `dead_worker` says is gone):
        re-queued, or failed as interrupted when out of attempts; cancelled if a cancel was requested."""

    def fail_exhausted(self) -> list[SweepResult]:
        """Queued jobs that have used every attempt are failed as interrupted."""

    def request_cancel(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        """queued -> cancelled at once; running -> cancel flag set. None for an unknown job."""

    def cancel_requested(self, job_id: str) -> bool: ...

    # events ----------------------------------------------------------------------------------------------------
    def add_event(self, job_id: str, kind: EventKind, data: dict) -> int: ...

    def record_progress(self, claim: Claim, progress: dict) -> None: ...

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobEvent]: ...

    # API keys --------------------------------------------------------------------------------------------------
    def create_api_key(
        self, key_id: str, tenant: str, key_hash: str, name: str | None = None, *, admin: bool = False
    ) -> ApiKeyRecord: ...

    def find_api_key(self, key_hash: str) -> tuple[ApiKeyRecord, str] | None:
        """(record, stored hash) for a hash, revoked or not."""

    def revoke_api_key(self, key_id: str) -> bool: ...

    def list_api_keys(self) -> list[ApiKeyRecord]: ...

    def any_api_key(self) -> bool: ...

    # plumbing --------------------------------------------------------------------------------------------------
    def ping(self) -> None: ...

    def close(self) -> None: ...

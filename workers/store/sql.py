"""SQLAlchemy 2 job store: a SQLite file (WAL) by default, PostgreSQL by URL.

Every state change is one conditional UPDATE whose WHERE clause states the transition it expects (status,
owner attempt, heartbeat), so concurrent API processes, workers and sweeps can never move a job twice. The status
part of each clause comes from `_leaving(old, new)`, which refuses a change `jobs.TRANSITIONS` does not list: that
table is the one list of the status changes a job can go through. The status event of a change is written in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from workers.jobs import (
    ArtifactInfo,
    EventKind,
    InputFile,
    JobEvent,
    JobRecord,
    JobStatus,
    NewJob,
    utcnow,
)
from workers.store.base import Claim, Page, TenantQuota
from workers.store.schema import (  # noqa: F401 (tests and tools import tables here)
    ACTIVE_STATUSES,
    ADDED_COLUMNS,
    SQLITE_POOL_SIZE,
    _leaving,
    add_missing_columns,
    api_keys,
    events,
    jobs,
    make_engine,
    metadata,
)
from workers.store.sql_keys import ApiKeys
from workers.store.sql_quota import check_quota, count_artifacts
from workers.store.sql_sweeps import Sweeps


def _job(row) -> JobRecord:
    m = row._mapping
    return JobRecord(
        id=m["id"],
        tenant=m["tenant"],
        status=JobStatus(m["status"]),
        spec=m["spec"],
        inputs={role: InputFile(role=role, **f) for role, f in (m["inputs"] or {}).items()},
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        worker_id=m["worker_id"],
        heartbeat_at=m["heartbeat_at"],
        cancel_requested=bool(m["cancel_requested"]),
        progress=m["progress"],
        manifest=m["manifest"],
        error=m["error"],
        artifacts=[ArtifactInfo(**a) for a in (m["artifacts"] or [])],
        webhook_url=m["webhook_url"],
        idempotency_key=m["idempotency_key"],
        request_fingerprint=m["request_fingerprint"],
    )


class SqlJobStore(Sweeps, ApiKeys):
    """The job store over one SQLAlchemy engine; its sweeps and API keys are in `sql_sweeps` and `sql_keys`."""

    def __init__(self, url: str, *, echo: bool = False, create: bool = True):
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.dialect = self.engine.dialect.name
        if create:
            metadata.create_all(self.engine)
            add_missing_columns(self.engine)

    # -- helpers ------------------------------------------------------------------------------------------------

    def _event(self, conn: Connection, job_id: str, kind: EventKind, data: dict, now: datetime | None = None) -> int:
        result = conn.execute(
            insert(events).values(job_id=job_id, kind=str(kind), data=data, created_at=now or utcnow())
        )
        return int(result.inserted_primary_key[0])

    def _status_event(self, conn: Connection, job_id: str, status: JobStatus, now: datetime, **extra) -> None:
        self._event(conn, job_id, EventKind.STATUS, {"status": str(status), **extra}, now)

    def _lock_tenant(self, conn: Connection, tenant: str) -> None:
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": "secateurs:" + tenant})

    # -- jobs ---------------------------------------------------------------------------------------------------

    def create_job(self, new: NewJob, *, max_attempts: int, quota: TenantQuota | None = None) -> tuple[JobRecord, bool]:
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                self._lock_tenant(conn, new.tenant)
                # insert first, then count: the row's write lock serializes concurrent submits of a tenant
                conn.execute(
                    insert(jobs).values(
                        id=new.id,
                        tenant=new.tenant,
                        status=JobStatus.QUEUED.value,
                        spec=new.spec,
                        inputs={role: f.to_dict() for role, f in new.inputs.items()},
                        created_at=now,
                        updated_at=now,
                        attempts=0,
                        max_attempts=max_attempts,
                        cancel_requested=False,
                        webhook_url=new.webhook_url,
                        idempotency_key=new.idempotency_key,
                        request_fingerprint=new.fingerprint,
                    )
                )
                if quota is not None:
                    check_quota(conn, new.tenant, quota)
                self._status_event(conn, new.id, JobStatus.QUEUED, now)
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            existing = self.find_by_idempotency_key(new.tenant, new.idempotency_key)
            if existing is None:  # pragma: no cover - an integrity error of another kind
                raise
            return existing, False
        job = self.get_job(new.id)
        assert job is not None
        return job, True

    def count_artifacts(self, tenant: str) -> int:
        with self.engine.connect() as conn:
            return count_artifacts(conn, tenant)

    def get_job(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        q = select(jobs).where(jobs.c.id == job_id)
        if tenant is not None:
            q = q.where(jobs.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else _job(row)

    def find_by_idempotency_key(self, tenant: str, key: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)).first()
        return None if row is None else _job(row)

    def list_jobs(
        self,
        tenant: str | None,
        *,
        statuses: Iterable[JobStatus] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        q = select(jobs).order_by(jobs.c.id.desc()).limit(limit + 1)
        if tenant is not None:
            q = q.where(jobs.c.tenant == tenant)
        if statuses:
            q = q.where(jobs.c.status.in_([str(s) for s in statuses]))
        if cursor:
            q = q.where(jobs.c.id < cursor)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        items = [_job(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit and items else None)

    def count_jobs(self, tenant: str | None = None, statuses: Iterable[JobStatus] | None = None) -> int:
        q = select(func.count()).select_from(jobs)
        if tenant is not None:
            q = q.where(jobs.c.tenant == tenant)
        if statuses:
            q = q.where(jobs.c.status.in_([str(s) for s in statuses]))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def counts_by_status(self) -> dict[JobStatus, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
        counts = {s: 0 for s in JobStatus}
        counts.update({JobStatus(s): int(n) for s, n in rows})
        return counts

    def durations(self) -> list[tuple[JobStatus, float]]:
        q = select(jobs.c.status, jobs.c.started_at, jobs.c.finished_at).where(
            jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [(JobStatus(s), (f - b).total_seconds()) for s, b, f in rows]

    def job_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(jobs.c.id)).scalars())

    def delete_job(self, job_id: str) -> bool:
        with self.engine.begin() as conn:
            conn.execute(delete(events).where(events.c.job_id == job_id))
            return conn.execute(delete(jobs).where(jobs.c.id == job_id)).rowcount == 1

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def queued_job_ids(self, limit: int = 20) -> list[str]:
        q = select(jobs.c.id).where(jobs.c.status == JobStatus.QUEUED.value).order_by(jobs.c.id).limit(limit)
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def claim(self, job_id: str, worker_id: str) -> Claim | None:
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    _leaving(JobStatus.QUEUED, JobStatus.RUNNING),
                    jobs.c.attempts < jobs.c.max_attempts,
                    jobs.c.cancel_requested.is_(False),
                )
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=jobs.c.attempts + 1,
                    worker_id=worker_id,
                    started_at=now,
                    heartbeat_at=now,
                    updated_at=now,
                    progress=None,
                )
            )
            if result.rowcount != 1:
                return None
            attempts, max_attempts = conn.execute(
                select(jobs.c.attempts, jobs.c.max_attempts).where(jobs.c.id == job_id)
            ).one()
            self._status_event(
                conn, job_id, JobStatus.RUNNING, now, attempt=attempts, max_attempts=max_attempts, worker=worker_id
            )
        job = self.get_job(job_id)
        if job is None:  # pragma: no cover - deleted in between
            return None
        return Claim(job=job, attempt=attempts, worker_id=worker_id)

    def _owned(self, claim: Claim, to: JobStatus | None = None):
        """The job still runs the claim's attempt (and may now move `to` that status)."""
        running = jobs.c.status == JobStatus.RUNNING.value if to is None else _leaving(JobStatus.RUNNING, to)
        return jobs.c.id == claim.job.id, running, jobs.c.worker_id == claim.worker_id, jobs.c.attempts == claim.attempt

    def heartbeat(self, claim: Claim) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            return conn.execute(update(jobs).where(*self._owned(claim)).values(heartbeat_at=now)).rowcount == 1

    def finish(
        self,
        claim: Claim,
        status: JobStatus,
        *,
        manifest: dict | None = None,
        error: dict | None = None,
        artifacts: list[ArtifactInfo] | None = None,
    ) -> bool:
        if not JobStatus(status).terminal:
            raise ValueError(f"finish() needs a terminal status, not {status}")
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(*self._owned(claim, to=JobStatus(status)))
                .values(
                    status=str(status),
                    finished_at=now,
                    updated_at=now,
                    manifest=manifest,
                    error=error,
                    artifacts=[a.to_dict() for a in artifacts or []],
                )
            )
            if result.rowcount != 1:
                return False
            extra = {"error": error} if error else {}
            self._status_event(conn, claim.job.id, status, now, **extra)
        return True

    def retry(self, claim: Claim, reason: str) -> Claim | None:
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    *self._owned(claim),
                    jobs.c.attempts < jobs.c.max_attempts,
                    jobs.c.cancel_requested.is_(False),
                )
                .values(attempts=jobs.c.attempts + 1, started_at=now, heartbeat_at=now, updated_at=now, progress=None)
            )
            if result.rowcount != 1:
                return None
            max_attempts = conn.execute(select(jobs.c.max_attempts).where(jobs.c.id == claim.job.id)).scalar_one()
            self._status_event(
                conn,
                claim.job.id,
                JobStatus.RUNNING,
                now,
                attempt=claim.attempt + 1,
                max_attempts=max_attempts,
                worker=claim.worker_id,
                reason=f"attempt {claim.attempt} ended: {reason}; retrying",
            )
        job = self.get_job(claim.job.id)
        if job is None:  # pragma: no cover - deleted in between
            return None
        return Claim(job=job, attempt=claim.attempt + 1, worker_id=claim.worker_id)

    def release(self, claim: Claim, reason: str) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(*self._owned(claim, to=JobStatus.QUEUED))
                .values(
                    status=JobStatus.QUEUED.value,
                    attempts=jobs.c.attempts - 1,
                    worker_id=None,
                    heartbeat_at=None,
                    updated_at=now,
                    progress=None,
                )
            )
            if result.rowcount != 1:
                return False
            self._status_event(conn, claim.job.id, JobStatus.QUEUED, now, reason=reason)
        return True

    def request_cancel(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        now = utcnow()
        scope = [jobs.c.id == job_id] + ([jobs.c.tenant == tenant] if tenant is not None else [])
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(*scope, _leaving(JobStatus.QUEUED, JobStatus.CANCELLED))
                .values(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=now, updated_at=now)
            )
            if result.rowcount == 1:
                self._status_event(conn, job_id, JobStatus.CANCELLED, now, reason="cancelled while queued")
            else:
                result = conn.execute(
                    update(jobs)
                    .where(
                        *scope,
                        jobs.c.status == JobStatus.RUNNING.value,
                        jobs.c.cancel_requested.is_(False),
                    )
                    .values(cancel_requested=True, updated_at=now)
                )
                if result.rowcount == 1:
                    self._event(
                        conn, job_id, EventKind.LOG, {"message": "cancel requested; stopping at the next batch"}, now
                    )
        return self.get_job(job_id, tenant)

    def cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            value = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar_one_or_none()
        return bool(value)

    # -- events -------------------------------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: EventKind, data: dict) -> int:
        with self.engine.begin() as conn:
            return self._event(conn, job_id, kind, data)

    def record_progress(self, claim: Claim, progress: dict) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            if conn.execute(update(jobs).where(*self._owned(claim)).values(progress=progress)).rowcount == 1:
                self._event(conn, claim.job.id, EventKind.PROGRESS, progress, now)

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        q = select(events).where(events.c.job_id == job_id, events.c.seq > after).order_by(events.c.seq).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [
            JobEvent(job_id=r.job_id, seq=r.seq, kind=EventKind(r.kind), data=r.data, created_at=r.created_at)
            for r in rows
        ]

    # -- plumbing -----------------------------------------------------------------------------------------------

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

"""The SQL store's sweeps (`SqlJobStore` inherits them): jobs whose worker stopped go back to the queue, or fail or
end cancelled; queued jobs out of attempts fail. Each change is a conditional UPDATE, as in `workers.store.sql`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select, update

from workers.jobs import JobStatus, error_dict, utcnow
from workers.store.base import SweepResult
from workers.store.schema import _leaving, jobs


class Sweeps:
    """The sweeping half of `SqlJobStore`; uses its `engine` and `_status_event`."""

    def sweep_stale(
        self, older_than: datetime, *, dead_worker: Callable[[str], bool] | None = None
    ) -> list[SweepResult]:
        q = select(
            jobs.c.id,
            jobs.c.attempts,
            jobs.c.max_attempts,
            jobs.c.heartbeat_at,
            jobs.c.worker_id,
            jobs.c.cancel_requested,
        ).where(jobs.c.status == JobStatus.RUNNING.value)
        with self.engine.connect() as conn:
            running = conn.execute(q).all()
        stale = [
            r
            for r in running
            if r.heartbeat_at is None
            or r.heartbeat_at < older_than
            or (dead_worker is not None and r.worker_id and dead_worker(r.worker_id))
        ]
        out = []
        for job_id, attempts, max_attempts, beat, worker, cancel in stale:
            now = utcnow()
            reason = f"interrupted: worker {worker} stopped during attempt {attempts} of {max_attempts}"
            if cancel:
                status, values = JobStatus.CANCELLED, {"finished_at": now}
            elif attempts < max_attempts:
                status, values = JobStatus.QUEUED, {"worker_id": None, "heartbeat_at": None, "progress": None}
            else:
                status = JobStatus.FAILED
                values = {
                    "finished_at": now,
                    "error": error_dict(
                        "interrupted",
                        f"the job was interrupted: its worker stopped during attempt {attempts} of "
                        f"{max_attempts} (worker.max_attempts) and it is not retried again",
                    ),
                }
            where = (
                jobs.c.id == job_id,
                _leaving(JobStatus.RUNNING, status),
                jobs.c.heartbeat_at == beat,
                jobs.c.attempts == attempts,
            )
            with self.engine.begin() as conn:
                result = conn.execute(update(jobs).where(*where).values(status=str(status), updated_at=now, **values))
                if result.rowcount == 1:
                    extra = {"error": values["error"]} if "error" in values else {}
                    self._status_event(conn, job_id, status, now, reason=reason, **extra)
                    out.append(SweepResult(job_id, status))
        return out

    def fail_exhausted(self) -> list[SweepResult]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.attempts).where(
                    jobs.c.status == JobStatus.QUEUED.value, jobs.c.attempts >= jobs.c.max_attempts
                )
            ).all()
        out = []
        for job_id, attempts in rows:
            now = utcnow()
            error = error_dict(
                "interrupted",
                f"the job was interrupted on each of its {attempts} attempts "
                "(worker.max_attempts); it is not retried again",
            )
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.id == job_id,
                        _leaving(JobStatus.QUEUED, JobStatus.FAILED),
                        jobs.c.attempts >= jobs.c.max_attempts,
                    )
                    .values(status=JobStatus.FAILED.value, finished_at=now, updated_at=now, error=error)
                )
                if result.rowcount == 1:
                    self._status_event(conn, job_id, JobStatus.FAILED, now, error=error)
                    out.append(SweepResult(job_id, JobStatus.FAILED))
        return out

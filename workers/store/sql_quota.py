"""Per-tenant quotas of the SQL store, checked in the transaction that inserts a job."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from workers.errors import QuotaExceeded
from workers.store.base import TenantQuota
from workers.store.schema import ACTIVE_STATUSES, jobs


def check_quota(conn: Connection, tenant: str, quota: TenantQuota) -> None:
    """Raise `QuotaExceeded` when the tenant, its new job already inserted in `conn`, is over one of its limits."""
    active = conn.execute(
        select(func.count()).select_from(jobs).where(jobs.c.tenant == tenant, jobs.c.status.in_(ACTIVE_STATUSES))
    ).scalar_one()
    if active > quota.max_active_jobs:
        raise QuotaExceeded(
            "max_active_jobs_per_tenant",
            quota.max_active_jobs,
            f"tenant '{tenant}' already has {active - 1} queued or running jobs; the limit "
            f"(limits.max_active_jobs_per_tenant) is {quota.max_active_jobs}",
        )
    stored = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.tenant == tenant)).scalar_one()
    if stored > quota.max_stored_jobs:
        raise QuotaExceeded(
            "max_stored_jobs_per_tenant",
            quota.max_stored_jobs,
            f"tenant '{tenant}' already stores {stored - 1} jobs; the limit "
            f"(limits.max_stored_jobs_per_tenant) is {quota.max_stored_jobs}: delete old jobs",
        )
    if quota.max_stored_artifacts is not None:
        stored_artifacts = count_artifacts(conn, tenant)
        if stored_artifacts >= quota.max_stored_artifacts:
            raise QuotaExceeded(
                "max_stored_artifacts_per_tenant",
                quota.max_stored_artifacts,
                f"tenant '{tenant}' already stores {stored_artifacts} artifacts; the limit "
                f"(limits.max_stored_artifacts_per_tenant) is {quota.max_stored_artifacts}: "
                "delete old jobs",
            )


def count_artifacts(conn: Connection, tenant: str) -> int:
    """The artifacts the tenant's jobs hold."""
    # counted here rather than in SQL: JSON array functions differ between SQLite and PostgreSQL, and a tenant
    # holds at most limits.max_stored_jobs_per_tenant rows
    rows = conn.execute(select(jobs.c.artifacts).where(jobs.c.tenant == tenant, jobs.c.artifacts.is_not(None)))
    return sum(len(a) for (a,) in rows if isinstance(a, list))

"""Job store: the protocol (base.py) and its SQLAlchemy implementation (sql.py; SQLite file or PostgreSQL URL)."""

from __future__ import annotations

from workers.errors import QuotaExceeded, StoreError, StoreUnavailable
from workers.store.base import Claim, JobStore, Page, SweepResult, TenantQuota


def open_store(url: str, *, echo: bool = False) -> JobStore:
    """Open (and create the tables of) the store at a SQLAlchemy URL."""
    from workers.store.sql import SqlJobStore

    return SqlJobStore(url, echo=echo)


__all__ = [
    "Claim",
    "JobStore",
    "Page",
    "QuotaExceeded",
    "StoreError",
    "StoreUnavailable",
    "SweepResult",
    "TenantQuota",
    "open_store",
]

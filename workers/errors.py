"""Every error the project raises on purpose, under one root: `SecateursError(message, field=None)` with a `code`.

The root and the engine's errors are defined in workers/engine/errors.py (the engine may import nothing of workers/
outside workers/engine, so the root lives where both sides can import it) and re-exported here; the job store's and
the artifact store's errors are defined here. Codes are stable, one per meaning. HTTP statuses are no business of
workers/: the service maps codes to statuses in one table (service/errors.py).
"""

from __future__ import annotations

from workers.engine.errors import (
    Cancelled,
    DataError,
    EngineError,
    ModelRejected,
    ResourceLimit,
    SecateursError,
    SpecError,
    UnsupportedFile,
)


class StoreError(SecateursError):
    """Base of the job store's and the artifact store's own errors."""

    code = "store_error"


class StoreUnavailable(StoreError):
    """The job store cannot be reached or used right now (connection refused or lost, database file unavailable,
    locked for too long). Nothing was changed; the caller may retry later."""

    code = "store_unavailable"


class ArtifactStoreUnavailable(StoreUnavailable):
    """A remote artifact store (S3) cannot be reached or refused the request. A StoreUnavailable, so a submit that
    meets it is told to retry later (nothing was saved); a worker that fails to publish fails the job with the reason
    (runner._conclude), and one that cannot read an input ends the attempt, which is retried. Not an OSError: the
    places that treat it like a failed disk name it."""


class QuotaExceeded(StoreError):
    """A per-tenant limit refused a new job; `limit` names the setting, `value` its configured value."""

    code = "quota_exceeded"

    def __init__(self, limit: str, value: int, message: str):
        super().__init__(message, field=f"limits.{limit}")
        self.limit, self.value = limit, value


__all__ = [
    "ArtifactStoreUnavailable",
    "Cancelled",
    "DataError",
    "EngineError",
    "ModelRejected",
    "QuotaExceeded",
    "ResourceLimit",
    "SecateursError",
    "SpecError",
    "StoreError",
    "StoreUnavailable",
    "UnsupportedFile",
]

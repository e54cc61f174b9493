"""The job store's tables, column types and engine set-up (SQLite pragmas, pool sizes, columns added to older
databases); the store itself is `sql.SqlJobStore`."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from workers.errors import StoreUnavailable
from workers.jobs import (
    JobStatus,
    can_transition,
)


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC (SQLite has no time zones), always returned timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("worker_id", String(256)),
    Column("heartbeat_at", UTCDateTime),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("progress", JSON),
    Column("manifest", JSON),
    Column("error", JSON),
    Column("artifacts", JSON),
    Column("webhook_url", Text),
    Column("idempotency_key", String(256)),
    # sha256 of what the submit sent (files' sha256, spec, webhook): a reused Idempotency-Key must send the same
    Column("request_fingerprint", String(64)),
    UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    Index("ix_jobs_status_id", "status", "id"),
    Index("ix_jobs_tenant_id", "tenant", "id"),
)

events = Table(
    "job_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_job_events_job_seq", "job_id", "seq"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(256)),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("admin", Boolean),  # may read service-wide data (/metrics); NULL: not an admin
)

# Columns added after the first release, nullable: a store created before them gets them at start-up (ALTER TABLE
# ... ADD COLUMN), without a migration tool.
ADDED_COLUMNS = {"jobs": ("request_fingerprint",), "api_keys": ("admin",)}

ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def _leaving(old: JobStatus, new: JobStatus):
    """The status condition of an UPDATE that moves a job from `old` to `new`; ValueError unless jobs.TRANSITIONS
    allows that change (a bug in the caller, never an outside input)."""
    if not can_transition(old, new):
        raise ValueError(f"a job cannot go from {old} to {new} (jobs.TRANSITIONS)")
    return jobs.c.status == old.value


def _unavailable_errors(engine: Engine) -> None:
    """Errors that mean "the store cannot be used now" (refused or lost connection, unopenable or locked database
    file) surface as StoreUnavailable, so that callers can say so (retry later) instead of failing obscurely. Constraint
    violations and SQL errors stay what they are. A failed pre-ping is left to the pool, which reconnects."""

    @event.listens_for(engine, "handle_error")
    def _translate(ctx):
        if ctx.is_pre_ping:
            return
        if ctx.is_disconnect or isinstance(ctx.sqlalchemy_exception, (OperationalError, InterfaceError)):
            reason = " ".join(str(ctx.original_exception).split())[:300]
            raise StoreUnavailable(
                f"the job store is unavailable ({engine.url.get_backend_name()}): {reason}"
            ) from ctx.sqlalchemy_exception


SQLITE_POOL_SIZE = 40
SQLITE_MAX_OVERFLOW = 40


def make_engine(url: str, *, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        file_db = bool(parsed.database) and parsed.database != ":memory:"
        # A file database gets a pool as large as the API's thread pool (anyio's default: 40 threads), so that
        # concurrent requests reuse connections instead of opening (and closing) overflow connections.
        pool = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_MAX_OVERFLOW} if file_db else {}
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False}, **pool)
        _unavailable_errors(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        # WAL is a property of the database file: set it once here, not on every new connection (changing the
        # journal mode needs a lock that a busy writer holds, which stalled readers behind job progress writes).
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        return engine
    engine = create_engine(url, echo=echo, pool_pre_ping=True)
    _unavailable_errors(engine)
    return engine


def add_missing_columns(engine: Engine) -> None:
    """Add the ADDED_COLUMNS a store created by an earlier release lacks (each is nullable). Two processes starting
    at once may both try: a failed ALTER is fine when the column exists afterwards."""
    from sqlalchemy import inspect

    for table_name, names in ADDED_COLUMNS.items():
        table = metadata.tables[table_name]
        present = {c["name"] for c in inspect(engine).get_columns(table_name)}
        for name in names:
            if name in present:
                continue
            column = table.c[name]
            ddl = f"ALTER TABLE {table_name} ADD COLUMN {name} {column.type.compile(engine.dialect)}"
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
            except Exception:
                if name not in {c["name"] for c in inspect(engine).get_columns(table_name)}:
                    raise

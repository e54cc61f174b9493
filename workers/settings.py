"""Service and worker configuration: environment variables with the prefix SECATEURS_, nested groups.

A nested field is set with a double underscore: `SECATEURS_LIMITS__MAX_UPLOAD_BYTES=1000000`. Every variable is
listed in docs/CONFIG.md. Nothing is read at import time: call `get_settings()` (cached) or build `Settings(...)`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 2**30
MiB = 2**20


class StoreSettings(BaseModel):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job store. Default: a SQLite file `jobs.db` in the data directory "
        "(WAL mode). PostgreSQL: postgresql+psycopg://user:pass@host:5432/db.",
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging).")


class S3Settings(BaseModel):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO: http://minio:9000); default: AWS S3."
    )
    region: str | None = Field(None, description="Region of the bucket; default: boto3's (AWS_DEFAULT_REGION).")
    access_key_id: str | None = Field(
        None, description="Access key; default: boto3's credential chain (AWS_* variables, instance role)."
    )
    secret_access_key: SecretStr | None = Field(None, description="Secret key that goes with access_key_id.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket addressing: path (MinIO, most S3-compatible servers) or virtual (AWS)."
    )
    part_bytes: int = Field(
        16 * MiB,
        ge=5 * MiB,
        le=5 * GiB,
        description="Part size of multipart uploads (files larger than this are uploaded in parts of this size).",
    )


class ArtifactSettings(BaseModel):
    url: str | None = Field(
        None,
        description="Where uploads and artifacts are kept: a local directory (a path or file:// URL; default: "
        "`artifacts/` in the data directory) or an S3-compatible bucket, s3://bucket/prefix (see the s3 group).",
    )
    s3: S3Settings = Field(default_factory=S3Settings)
    max_total_bytes: int = Field(
        0,
        ge=0,
        description="Total size of the artifact store (uploads + outputs); 0 = unlimited. A job whose "
        "outputs would exceed it fails with a resource_limit error.",
    )


class LimitSettings(BaseModel):
    max_upload_bytes: int = Field(
        512 * MiB,
        ge=1,
        description="Largest accepted request body (model + data + "
        "spec) in bytes; larger uploads are refused with 413 while streaming.",
    )
    max_spec_bytes: int = Field(1 * MiB, ge=1, description="Largest accepted `spec` form field in bytes.")
    max_active_jobs_per_tenant: int = Field(
        8, ge=1, description="Queued + running jobs one tenant may have; more is refused with 429."
    )
    max_stored_jobs_per_tenant: int = Field(
        1000, ge=1, description="Jobs (any state) one tenant may keep; more is refused with 429 until some are deleted."
    )
    max_stored_artifacts_per_tenant: int = Field(
        5000,
        ge=1,
        description="Artifacts (output files of finished "
        "jobs) one tenant may keep; at the limit new jobs are refused "
        "with 429 until some jobs are deleted.",
    )
    max_concurrent_inspections: int = Field(
        2,
        ge=1,
        le=64,
        description="Uploads one API process inspects at the "
        "same time, each in a child process (inspecting the largest accepted "
        "config takes a few hundred MiB there); more wait their turn, up to a "
        "minute, then get 503.",
    )
    inspection_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Time limit of inspecting one uploaded file "
        "(run in a child process, killed on expiry): a file that takes longer is "
        "refused with 422 naming this limit.",
    )
    max_sequential_layers: int = Field(
        250,
        ge=1,
        description="Layers of Sequential models in one uploaded model "
        "(nested ones included). Keras rebuilds a Sequential model after each layer "
        "it adds while loading it, so loading takes time growing with the square of "
        "this number (~36 s for 200, ~150 s for 400; docs/CONFIG.md); more is "
        "refused with 422 at submit. A functional model of the same layers loads far "
        "faster.",
    )
    max_epoch_samples: int = Field(
        50_000_000,
        ge=1,
        description="Training budget per job, in samples: each epoch "
        "of the spec is charged max(rows of x_train, limits.min_epoch_samples) plus "
        "limits.step_cost_samples per optimizer step; larger jobs are refused with 422 "
        "at submit.",
    )
    min_epoch_samples: int = Field(
        50_000,
        ge=0,
        description="Least an epoch is charged against "
        "limits.max_epoch_samples, however few rows the data has: an epoch has a fixed "
        "cost (validation, callbacks, progress), so 1,000 epochs of 4 rows are not cheap "
        "(python -m bench.epoch_cost).",
    )
    step_cost_samples: int = Field(
        20,
        ge=0,
        description="Charged per optimizer step (batch) on top of its rows: "
        "a step costs about as much as 20 samples (python -m bench.epoch_cost).",
    )
    job_wall_seconds: float = Field(
        3600.0,
        gt=0,
        description="Wall-clock limit of one job attempt; the job "
        "process is killed and the job fails when it runs longer.",
    )
    job_memory_bytes: int = Field(
        16 * GiB,
        ge=256 * MiB,
        description="Address-space limit (RLIMIT_AS) of the job "
        "process. TensorFlow reserves a lot of virtual memory: keep it at several GiB.",
    )
    job_file_bytes: int = Field(
        0, ge=0, description="Largest file the job process may write (RLIMIT_FSIZE); 0 = unlimited."
    )
    job_cpu_seconds: int = Field(0, ge=0, description="CPU-time limit of the job process (RLIMIT_CPU); 0 = none.")
    preflight_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Time limit of one POST /v1/preflight "
        "after the upload is inspected: loading the model with TensorFlow and building "
        "its table in a child process, killed on expiry (422 naming this limit).",
    )
    preflight_memory_bytes: int = Field(
        8 * GiB,
        ge=256 * MiB,
        description="Address-space limit (RLIMIT_AS) of the "
        "preflight child process (TensorFlow needs about 3 GiB of it to start).",
    )
    max_concurrent_preflights: int = Field(
        2,
        ge=1,
        le=64,
        description="Preflights one API process runs at the "
        "same time (each a TensorFlow child process); more wait their turn, up "
        "to a minute, then get 503.",
    )


class WorkerSettings(BaseModel):
    dispatcher: Literal["local", "none", "celery"] = Field(
        "local",
        description="local: `secateurs serve` starts worker processes that pull jobs from the store; "
        "none: the API only enqueues (run `secateurs worker` processes separately); celery: the API sends job ids "
        "to a Celery broker and `secateurs worker` runs a Celery worker (see the celery group).",
    )
    concurrency: int = Field(
        2,
        ge=0,
        le=64,
        description="Worker processes started by `secateurs serve`, or pool "
        "processes of a Celery `secateurs worker` (each runs one job at a time, in its own "
        "child process).",
    )
    poll_interval: float = Field(0.5, gt=0, le=60, description="Seconds between store polls of an idle worker.")
    max_attempts: int = Field(
        2,
        ge=1,
        le=10,
        description="Attempts per job, counted when a worker claims it: a "
        "job interrupted more often is failed, never redelivered forever.",
    )
    heartbeat_interval: float = Field(2.0, gt=0, description="Seconds between heartbeats of a running job.")
    heartbeat_timeout: float = Field(
        30.0,
        gt=0,
        description="A running job without a heartbeat for this long "
        "is considered interrupted (its worker died): re-queued or failed.",
    )
    heartbeat_max_missed: int = Field(
        3,
        ge=1,
        le=100,
        description="A running attempt stops (and publishes "
        "nothing) after this many failed heartbeats in a row (the store unreachable "
        "or the claim lost), or once worker.heartbeat_timeout passed without one "
        "that succeeded: by then the sweep may have given its job to another worker.",
    )
    cancel_poll_interval: float = Field(
        0.5, gt=0, le=10, description="How often a running job checks its cancel flag (seconds)."
    )
    tf_threads: int = Field(
        0,
        ge=0,
        description="Intra-/inter-op threads of TensorFlow in a job; 0 = the host's "
        "cores divided among the concurrent jobs (at least 1).",
    )
    job_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="CPU priority (nice) of job processes, autogroup included: "
        "19 lets the API and the workers' bookkeeping run first while jobs saturate the cores; "
        "0 = the worker's own priority.",
    )


class CelerySettings(BaseModel):
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Broker of the celery dispatcher (Redis).")
    queue: str = Field("secateurs", min_length=1, description="Queue the job ids are sent to.")
    key_prefix: str = Field("", description="Prefix of every Redis key the broker uses (share a Redis database).")
    publish_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds a submit waits for the broker; when it "
        "is unreachable the job stays queued and is sent again later.",
    )
    redispatch_interval: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds between the API's sweeps: jobs "
        "whose worker died are re-queued and sent again, as are jobs that could not "
        "be sent.",
    )
    time_limit_margin: float = Field(
        600.0,
        ge=0,
        description="Celery's hard task time limit is "
        "limits.job_wall_seconds plus this margin (publishing the artifacts).",
    )


class WebhookSettings(BaseModel):
    secret: str | None = Field(None, description="HMAC secret used to sign webhook deliveries.")
    allow_private: bool = Field(False, description="Allow webhook URLs that resolve to private/loopback addresses.")
    timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Wall-clock deadline of one webhook delivery attempt "
        "in seconds (connect, send, receive the answer's headers), however slowly the receiver "
        "answers.",
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Delivery attempts per webhook.")
    queue_size: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Webhooks one process keeps waiting for its "
        "sender threads; more are dropped with a warning (a job never waits for a webhook).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SECATEURS_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(Path(".secateurs"), description="Directory for the SQLite store, artifacts and temp files.")
    host: str = Field("127.0.0.1", description="Address `secateurs serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `secateurs serve` listens on.")
    log_level: str = Field("info", description="Log level of the service and workers.")
    auth_required: bool = Field(
        False,
        description="Require an API key on every route but /healthz and /readyz, "
        "even before any key exists (keys are always required once one exists).",
    )
    auth_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="While no API key exists, how long the "
        "answer 'no key exists' is reused for requests without a key before the store "
        "is asked again: a key created in another process is enforced within this time. "
        "0 = ask the store on every such request.",
    )
    public_url: str | None = Field(None, description="Base URL used in links and webhooks; default: from the request.")

    store: StoreSettings = Field(default_factory=StoreSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @model_validator(mode="after")
    def _heartbeats(self):
        if self.worker.heartbeat_timeout <= self.worker.heartbeat_interval:
            raise ValueError(
                f"worker.heartbeat_timeout ({self.worker.heartbeat_timeout}) must be larger than "
                f"worker.heartbeat_interval ({self.worker.heartbeat_interval})"
            )
        return self

    # -- derived locations ------------------------------------------------------------------------------------

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{(self.data_dir / 'jobs.db').resolve()}"

    @property
    def artifacts_root(self) -> Path:
        url = self.artifacts.url
        if url is None:
            return (self.data_dir / "artifacts").resolve()
        if url.startswith("file://"):
            return Path(url.removeprefix("file://")).resolve()
        if "://" in url:
            raise ValueError(
                f"artifacts.url {url!r} is not a local directory (only local directories have an "
                "artifacts_root): open the store with workers.artifacts.open_artifacts(settings)"
            )
        return Path(url).resolve()

    @property
    def cache_dir(self) -> Path:
        """Local copies of inputs kept in a remote artifact store (S3), downloaded for the job process."""
        return (self.data_dir / "cache").resolve()

    @property
    def tmp_dir(self) -> Path:
        """Uploads in flight; emptied at start-up (a restart mid-upload leaves nothing behind)."""
        return (self.data_dir / "tmp").resolve()

    @property
    def scratch_dir(self) -> Path:
        """Per-attempt working directories of running jobs."""
        return (self.data_dir / "scratch").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()

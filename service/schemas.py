"""Read models of the API (what it answers). The input contract is workers.spec.JobSpec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from workers.engine.report import REPORT_NAME
from workers.jobs import JobRecord, JobStatus
from workers.spec import JobSpec


class InputRead(BaseModel):
    filename: str | None = Field(None, description="The uploaded file's name.")
    bytes: int
    sha256: str


class ArtifactRead(BaseModel):
    name: str
    bytes: int
    sha256: str
    url: str


class ErrorRead(BaseModel):
    type: str = Field(..., description="A stable code: model_rejected, data_error, spec_error, resource_limit, "
                      "crashed, interrupted, cancelled, internal_error, ...")
    message: str
    field: str | None = None


class ProgressRead(BaseModel):
    phase: str | None = None
    step_index: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    sparsity: float | None = None
    loss: float | None = None
    message: str | None = None


class JobLinks(BaseModel):
    self: str
    events: str
    logs: str
    cancel: str


class JobRead(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    spec: JobSpec
    inputs: dict[str, InputRead]
    progress: ProgressRead | None = None
    manifest: dict[str, Any] | None = Field(None, description="The metrics manifest, once the job succeeded.")
    error: ErrorRead | None = None
    artifacts: list[ArtifactRead] = Field(default_factory=list)
    webhook_url: str | None = None
    report: str | None = Field(None, description="URL of report.html, the job's report for people, once it "
                                                "succeeded.")
    links: JobLinks

    @classmethod
    def of(cls, job: JobRecord, base_url: str) -> JobRead:
        url = f"{base_url}/v1/jobs/{job.id}"
        progress = job.progress
        return cls(
            id=job.id, status=job.status, created_at=job.created_at, updated_at=job.updated_at,
            started_at=job.started_at, finished_at=job.finished_at, attempts=job.attempts,
            max_attempts=job.max_attempts, cancel_requested=job.cancel_requested, spec=JobSpec.model_validate(job.spec),
            inputs={role: InputRead(filename=f.filename, bytes=f.bytes, sha256=f.sha256) for role, f in job.inputs.items()},
            progress=ProgressRead.model_validate(progress) if progress else None,
            manifest=job.manifest,
            error=ErrorRead.model_validate(job.error) if job.error else None,
            artifacts=[ArtifactRead(name=a.name, bytes=a.bytes, sha256=a.sha256, url=f"{url}/artifacts/{a.name}")
                       for a in job.artifacts],
            webhook_url=job.webhook_url,
            report=next((f"{url}/artifacts/{a.name}" for a in job.artifacts if a.name == REPORT_NAME), None),
            links=JobLinks(self=url, events=f"{url}/events", logs=f"{url}/logs", cancel=f"{url}/cancel"),
        )


class JobList(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= to get the next page; null on the last page.")
    next: str | None = Field(None, description="The next page's URL.")


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


PROBLEM_RESPONSES = {
    status: {"model": Problem, "content": {"application/problem+json": {}}, "description": desc}
    for status, desc in {
        401: "Missing, unknown or revoked API key",
        403: "The API key may not do this (an admin key is needed)",
        404: "Unknown job (or another tenant's)",
        409: "The job is in a state that does not allow this",
        413: "Upload over the size limit",
        415: "Not a model / dataset file, or not multipart",
        422: "Invalid spec, data or parameter (the field is named)",
        429: "A per-tenant limit was reached",
        503: "The job store is unavailable (nothing was changed; retry after Retry-After seconds)",
        507: "The server has no room to store the upload (nothing was kept)",
    }.items()
}


def problem_responses(*codes: int) -> dict:
    """The problem responses of a route; every route that reaches the job store can also answer 503."""
    return {c: PROBLEM_RESPONSES[c] for c in sorted({*codes, 503})}

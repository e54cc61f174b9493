"""Read models of the API (what it answers). The input contract is workers.spec.JobSpec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.engine.report import REPORT_NAME
from workers.jobs import JobRecord, JobStatus, public_error
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
    code: str = Field(
        ...,
        description="A stable code: model_rejected, data_error, spec_error, resource_limit, "
        "crashed, interrupted, cancelled, internal_error, ...",
    )
    type: str = Field(
        ..., deprecated=True, description="The same value as `code` (its name before `code`); deprecated, use `code`."
    )
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
    report: str | None = Field(None, description="URL of report.html, the job's report for people, once it succeeded.")
    links: JobLinks

    @classmethod
    def of(cls, job: JobRecord, base_url: str) -> JobRead:
        url = f"{base_url}/v1/jobs/{job.id}"
        progress = job.progress
        return cls(
            id=job.id,
            status=job.status,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            spec=JobSpec.model_validate(job.spec),
            inputs={
                role: InputRead(filename=f.filename, bytes=f.bytes, sha256=f.sha256) for role, f in job.inputs.items()
            },
            progress=ProgressRead.model_validate(progress) if progress else None,
            manifest=job.manifest,
            error=ErrorRead.model_validate(public_error(job.error)) if job.error else None,
            artifacts=[
                ArtifactRead(name=a.name, bytes=a.bytes, sha256=a.sha256, url=f"{url}/artifacts/{a.name}")
                for a in job.artifacts
            ],
            webhook_url=job.webhook_url,
            report=next((f"{url}/artifacts/{a.name}" for a in job.artifacts if a.name == REPORT_NAME), None),
            links=JobLinks(self=url, events=f"{url}/events", logs=f"{url}/logs", cancel=f"{url}/cancel"),
        )


class JobList(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= to get the next page; null on the last page.")
    next: str | None = Field(None, description="The next page's URL.")


class PreflightModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    model_class: str = Field(..., alias="class", description="Functional, Sequential, ...")
    file: str | None = None
    bytes: int | None = None
    format: str | None = Field(None, description="keras or h5, as inspected (never from the file name).")
    saved_loss: str | None = Field(None, description="The loss the model was saved with, when a job can use it.")


class PreflightLayer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(..., description="The layer's path: its name, prefixed by enclosing models ('outer/inner').")
    layer_class: str = Field(..., alias="class")
    params: int
    nonzero: int
    prunable_params: int = Field(
        ..., description="Elements of its kernels that pruning may zero (under the spec's layer selection)."
    )
    macs: int | None = Field(..., description="Multiply-accumulates per sample; null when a size is unknown.")
    prunable: bool = Field(
        ...,
        description="A prune step with the defaults (magnitude, scope global) prunes it, or "
        "a structured step can remove its units.",
    )
    reason: str | None = Field(
        None,
        description="Why it is not prunable (no kernel, custom layer, layer selection, "
        "spared by the global scope, ...).",
    )
    spared: str | None = Field(
        None,
        description="A global magnitude step leaves it dense (output or small layer), "
        "though it stays prunable by structured pruning.",
    )
    methods: list[str] = Field(
        ..., description="Methods that can prune it: magnitude, threshold, n_m, block, structured."
    )
    group: str | None = Field(
        None,
        description="The structured group it belongs to (as a producer or resliced "
        "with it): coupled layers are cut together.",
    )
    structured_reason: str | None = Field(None, description="Why structured pruning removes none of its units.")


class PreflightGroup(BaseModel):
    id: str
    layers: list[str] = Field(..., description="The producers whose units are removed together.")
    dependents: list[str] = Field(..., description="Layers resliced with them (BatchNorm, depthwise, consumers).")
    units: int
    removable_units: int
    selected: bool = Field(..., description="Every member is selected by the spec's layers (else none is cut).")


class PreflightTotals(BaseModel):
    layers: int
    prunable_layers: int
    params: int
    trainable: int
    nonzero: int
    prunable_params: int
    macs: int
    flops: int
    effective_macs: int = Field(..., description="MACs counting only non-zero kernel weights.")
    unknown_macs: list[str]
    groups: int
    size_bytes: int = Field(
        ..., description="The weights stored densely (the .keras file adds its config and ~2 KiB per variable)."
    )
    gzip_bytes: int = Field(..., description="Those bytes gzipped (level 6; sampled above 8 MiB).")


class PreflightStep(BaseModel):
    index: int
    kind: str
    estimate: str = Field(..., description="How the numbers were obtained (each step applied once, no training).")
    params: int
    nonzero: int
    sparsity: float = Field(..., description="Fraction of zeros in the prunable kernels.")
    macs: int
    effective_macs: int = Field(..., description="MACs counting only non-zero kernel weights.")
    size_bytes: int
    gzip_bytes: int
    spared: list[str] | None = None
    groups_pruned: int | None = None


class PreflightRead(BaseModel):
    model: PreflightModel
    layers: list[PreflightLayer]
    groups: list[PreflightGroup]
    totals: PreflightTotals
    steps: list[PreflightStep] = Field(default_factory=list, description="With a spec: what each step would leave.")
    task: dict[str, Any] | None = Field(None, description="With a spec: the loss and metrics a job would use.")
    notes: list[str] = Field(default_factory=list)
    wall_time_s: float


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

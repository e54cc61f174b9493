"""/v1/jobs: submit, read (with long-poll), list, follow (SSE), logs, cancel, delete, download artifacts."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from service.deps import Jobs, Who, base_url
from service.errors import Unprocessable
from service.schemas import JobList, JobRead, problem_responses
from service.services.jobs import MAX_EVENT_SEQ, MAX_WAIT_SECONDS
from workers.engine.report_html import CSP as REPORT_CSP
from workers.jobs import JobEvent, JobStatus
from workers.spec import json_schema

router = APIRouter(prefix="/v1", tags=["jobs"])

# every artifact is served under the report's policy (no script, no load but inline styles and data: images) and
# in a sandbox, so that a downloaded file can never act as a page of this origin
ARTIFACT_CSP = f"{REPORT_CSP}; sandbox"

EXAMPLE_SPEC = {
    "steps": [
        {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "scope": "global", "epochs": 2},
        {"kind": "structured", "criterion": "l1", "keep_ratio": 0.5, "round_to": 8, "epochs": 1},
    ],
    "training": {"batch_size": 64, "learning_rate": 0.001},
    "export": {"formats": ["keras", "tflite"]},
    "seed": 0,
}
SPEC_EXAMPLES = {
    "prune_then_structured": {
        "summary": "Gradual magnitude pruning, then remove half the units",
        "value": EXAMPLE_SPEC,
    },
    "regularize_prune_finetune": {
        "summary": "L1 regularization, 2:4 sparsity, fine-tune",
        "value": {
            "steps": [
                {"kind": "regularize", "l1": 1e-5, "epochs": 1},
                {"kind": "prune", "method": "n_m", "n": 2, "m": 4},
                {"kind": "finetune", "epochs": 1},
            ],
            "training": {"metrics": ["accuracy"]},
        },
    },
    "one_shot_no_training": {
        "summary": "One-shot pruning without training (data optional)",
        "value": {
            "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.5}],
            "evaluation": {"latency": False},
        },
    },
    "budget_within_one_point": {
        "summary": "The smallest model within 1 point of held-out accuracy",
        "value": {
            "steps": [
                {
                    "kind": "budget",
                    "metric": "accuracy",
                    "max_drop": 0.01,
                    "objective": "nonzero_params",
                    "method": "magnitude",
                    "epochs": 2,
                    "max_trials": 6,
                }
            ]
        },
    },
    "sensitivity_then_allocate": {
        "summary": "Per-layer sensitivity, then 90% sparsity where it costs least",
        "value": {
            "steps": [
                {"kind": "sensitivity", "levels": [0.5, 0.8, 0.9, 0.95]},
                {
                    "kind": "prune",
                    "method": "magnitude",
                    "target_sparsity": 0.9,
                    "allocation": "sensitivity",
                    "epochs": 2,
                },
            ]
        },
    },
}

SUBMIT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model", "spec"],
                    "properties": {
                        "model": {
                            "type": "string",
                            "format": "binary",
                            "description": "The trained model: a Keras 3 `.keras` file or a legacy `.h5` file.",
                        },
                        "data": {
                            "type": "string",
                            "format": "binary",
                            "description": "`.npz` with x_train, y_train (optional x_val, y_val; optional x_test, "
                            "y_test, measured but never decided on); required when the spec trains or ranks units "
                            "on activations.",
                        },
                        "spec": {
                            "$ref": "#/components/schemas/JobSpec",
                            "description": "The JobSpec as JSON, as a field (`-F spec='{...}'`) or a file "
                            "(`-F spec=@spec.json`).",
                        },
                        "webhook_url": {
                            "type": "string",
                            "format": "uri",
                            "description": "Optional: POSTed a signed JSON event when the job ends.",
                        },
                    },
                },
                "encoding": {"spec": {"contentType": "application/json"}},
                "examples": {
                    k: {"summary": v["summary"], "value": {"spec": v["value"]}} for k, v in SPEC_EXAMPLES.items()
                },
            }
        },
    },
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobRead,
    openapi_extra=SUBMIT_OPENAPI,
    summary="Submit a compression job",
    description="Multipart upload of `model`, `data` and `spec`; answers 202 with the job and a `Location` "
    "header. Works with a plain `curl -F` line. Send an `Idempotency-Key` header to make retries safe: "
    "a repeated key with the same request (files, spec, webhook_url) answers the job it created "
    "(header `Idempotent-Replayed: true`); with a different request it is a 422 "
    "(`idempotency_key_reused`).",
    responses=problem_responses(401, 413, 415, 422, 429, 507),
)
async def submit_job(
    who: Who,
    jobs: Jobs,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Makes retries safe: a repeated key answers the job it created.",
    ),
) -> JobRead:
    result = await jobs.submit_job(request, who, idempotency_key)
    read = JobRead.of(result.job, base_url(request))
    response.headers["Location"] = read.links.self
    if not result.created:
        response.headers["Idempotent-Replayed"] = "true"
    return read


@router.get("/jobs", response_model=JobList, summary="List jobs", responses=problem_responses(401, 422))
def list_jobs(
    who: Who,
    jobs: Jobs,
    request: Request,
    status: list[JobStatus] | None = Query(None, description="Only jobs in these states (repeatable)."),
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, description="`next_cursor` of the previous page."),
) -> JobList:
    page = jobs.list_jobs(who, status, limit, cursor)
    base = base_url(request)
    nxt = None
    if page.next_cursor:
        params = [("limit", limit), ("cursor", page.next_cursor)] + [("status", str(s)) for s in status or []]
        nxt = f"{base}/v1/jobs?{urlencode(params)}"
    return JobList(items=[JobRead.of(j, base) for j in page.items], next_cursor=page.next_cursor, next=nxt)


@router.get(
    "/jobs/{job_id}",
    response_model=JobRead,
    summary="Job status, progress, metrics and artifacts",
    responses=problem_responses(401, 404, 422),
)
async def get_job(
    who: Who,
    jobs: Jobs,
    request: Request,
    job_id: str,
    wait: float = Query(
        0,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Long-poll: answer as soon as the status changes, or after this many seconds.",
    ),
) -> JobRead:
    if wait > 0:
        job = await jobs.wait_for_change(job_id, who, wait)
    else:
        job = await run_in_threadpool(jobs.get_job, job_id, who)
    return JobRead.of(job, base_url(request))


AFTER = Query(0, ge=0, le=MAX_EVENT_SEQ, description="Only events after this sequence number.")


def _resume_from(last_event_id: str | None, after: int) -> int:
    """Where an SSE stream resumes: Last-Event-ID (an event's `id`, sent back by a reconnecting EventSource) wins
    over `after`. Anything but a sequence number in range is a 422 naming the header (ids we send always are)."""
    if last_event_id is None or not last_event_id.strip():
        return after
    value = last_event_id.strip()
    if not (value.isascii() and value.isdecimal() and len(value) <= 10 and int(value) <= MAX_EVENT_SEQ):
        raise Unprocessable(
            f"Last-Event-ID must be an event id (an integer from 0 to {MAX_EVENT_SEQ}), not {value[:40]!r}",
            field="Last-Event-ID",
        )
    return int(value)


def _event_payload(ev: JobEvent) -> dict:
    return {"event": str(ev.kind), "id": str(ev.seq), "data": json.dumps(ev.to_dict())}


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-Sent Events: status and progress until the job ends",
    response_class=EventSourceResponse,
    responses=problem_responses(401, 404, 422),
)
async def job_events(
    who: Who,
    jobs: Jobs,
    job_id: str,
    after: int = Query(
        0, ge=0, le=MAX_EVENT_SEQ, description="Only events after this sequence number (or send Last-Event-ID)."
    ),
    last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=256),
):
    start = _resume_from(last_event_id, after)
    await run_in_threadpool(jobs.get_job, job_id, who)  # 404 before the stream starts

    async def stream():
        async for ev in jobs.follow_events(job_id, who, after=start):
            yield _event_payload(ev)

    return EventSourceResponse(stream(), ping=15)


def _log_line(ev: JobEvent) -> str:
    at = ev.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    data = dict(ev.data)
    message = data.pop("message", "")
    fields = " ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in data.items())
    return " ".join(filter(None, [at, str(ev.kind), fields, message]))


@router.get(
    "/jobs/{job_id}/logs",
    response_class=PlainTextResponse,
    summary="The job's log as text",
    responses=problem_responses(401, 404, 422),
)
def job_logs(
    who: Who,
    jobs: Jobs,
    job_id: str,
    after: int = AFTER,
) -> PlainTextResponse:
    events = jobs.logs(job_id, who, after)
    return PlainTextResponse("".join(_log_line(e) + "\n" for e in events))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobRead,
    summary="Cancel a job",
    description="A queued job is cancelled at once (200); a running one stops at its next batch (202).",
    responses={
        202: {"description": "Cancel requested; the job stops at its next batch"},
        **problem_responses(401, 404, 409),
    },
)
def cancel_job(
    who: Who,
    jobs: Jobs,
    request: Request,
    response: Response,
    job_id: str,
) -> JobRead:
    job = jobs.cancel_job(job_id, who)
    if not job.terminal:
        response.status_code = 202
    return JobRead.of(job, base_url(request))


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Delete a finished job and its artifacts",
    responses=problem_responses(401, 404, 409),
)
def delete_job(job_id: str, who: Who, jobs: Jobs) -> Response:
    jobs.delete_job(job_id, who)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/artifacts/{name}",
    summary="Download an artifact (streamed, with its sha256)",
    response_class=StreamingResponse,
    description="Streams the file with its sha256. `report.html` is served as `text/html` for a browser, "
    "under a Content-Security-Policy that forbids scripts and external loads.",
    responses={
        200: {
            "content": {"application/octet-stream": {}, "text/html": {}},
            "headers": {
                "X-Checksum-SHA256": {"schema": {"type": "string"}},
                "Repr-Digest": {"schema": {"type": "string"}},
            },
        },
        **problem_responses(401, 404),
    },
)
def download_artifact(job_id: str, name: str, who: Who, jobs: Jobs) -> StreamingResponse:
    art = jobs.open_artifact(job_id, name, who)
    b64 = base64.b64encode(bytes.fromhex(art.sha256)).decode()
    html = name.endswith(".html")  # report.html opens in the browser; its CSP forbids scripts and any load
    media = (
        "text/html; charset=utf-8"
        if html
        else "application/json"
        if name.endswith(".json")
        else "application/octet-stream"
    )
    headers = {
        "Content-Length": str(art.bytes),
        "Content-Disposition": f'{"inline" if html else "attachment"}; filename="{art.name}"',
        "ETag": f'"{art.sha256}"',
        "X-Checksum-SHA256": art.sha256,
        "Repr-Digest": f"sha-256=:{b64}:",
        "Content-Security-Policy": ARTIFACT_CSP,
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(art.chunks, media_type=media, headers=headers)


schema_router = APIRouter(prefix="/v1/schema", tags=["schema"])


@schema_router.get(
    "/jobspec", summary="The JobSpec JSON Schema (the `spec` form field)", responses=problem_responses(401)
)
def jobspec_schema(_who: Who) -> dict:
    return json_schema()

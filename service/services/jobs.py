"""Job use cases behind the routes: submit, read, list, wait, follow, cancel, delete, download.

Routes validate and call one method; methods raise SecateursErrors (the service's own or workers'). The store is
the queue: a job is saved (inputs in place, row committed) first and only then handed to the dispatcher.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError
from pydantic_core import from_json
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.auth import Principal
from service.errors import (
    RETRY_AFTER_SECONDS,
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    TooManyRequests,
    Unavailable,
    Unprocessable,
    validation_errors,
)
from service.prometheus import ServiceMetrics
from service.services.uploads import FormRules, ParsedUpload, receive_multipart
from workers import notify
from workers.artifacts import ArtifactStore, valid_name
from workers.errors import DataError, EngineError, ModelRejected, QuotaExceeded
from workers.jobs import ACTIVE, TERMINAL, EventKind, InputFile, JobEvent, JobRecord, JobStatus, NewJob
from workers.notify.urls import validate_webhook_url
from workers.settings import LimitSettings, Settings
from workers.spec import JobSpec, load_spec
from workers.store import JobStore, TenantQuota

if TYPE_CHECKING:
    from workers.dispatch import Dispatcher

log = logging.getLogger("secateurs.service")

MODEL_SUFFIX = {"keras": "model.keras", "h5": "model.h5"}
DATA_NAME = "data.npz"
MAX_WAIT_SECONDS = 60.0
MAX_WEBHOOK_URL_BYTES = 2048
INSPECTION_WAIT_SECONDS = 60.0  # an upload waits this long for an inspection slot, then gets 503
POLL_SECONDS = 0.25
MAX_EVENT_SEQ = 2**31 - 1  # event sequence numbers are 32-bit (PostgreSQL SERIAL): `after` and Last-Event-ID


@dataclass(frozen=True)
class Artifact:
    name: str
    bytes: int
    sha256: str
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool  # False: an earlier submit with the same Idempotency-Key


@contextmanager
def busy_slot(semaphore, doing: str, setting: str, wait: float = INSPECTION_WAIT_SECONDS) -> Iterator[None]:
    """Hold one of `semaphore`'s slots, or answer 503 with Retry-After naming limits.`setting` when none frees up
    within `wait` seconds."""
    if not semaphore.acquire(timeout=wait):
        raise Unavailable(
            f"the server is busy {doing}, limits.{setting}); retry later",
            field=f"limits.{setting}",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    try:
        yield
    finally:
        semaphore.release()


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        artifacts: ArtifactStore,
        dispatcher: Dispatcher,
        metrics: ServiceMetrics,
    ):
        self.settings, self.store, self.artifacts = settings, store, artifacts
        self.dispatcher, self.metrics = dispatcher, metrics
        self.rules = FormRules(
            file_fields=frozenset({"model", "data"}),
            text_fields={"spec": settings.limits.max_spec_bytes, "webhook_url": MAX_WEBHOOK_URL_BYTES},
            max_body_bytes=settings.limits.max_upload_bytes,
            text_limit_names={"spec": "limits.max_spec_bytes"},
        )
        # inspections run in child processes (bounded in time, their memory returned when they exit), waited for on
        # a few threads of their own
        n = settings.limits.max_concurrent_inspections
        self._inspections = threading.BoundedSemaphore(n)
        self._inspector = ThreadPoolExecutor(max_workers=n, thread_name_prefix="secateurs-inspect")

    def close(self) -> None:
        self._inspector.shutdown(wait=False, cancel_futures=True)

    @property
    def quota(self) -> TenantQuota:
        lim = self.settings.limits
        return TenantQuota(
            max_active_jobs=lim.max_active_jobs_per_tenant,
            max_stored_jobs=lim.max_stored_jobs_per_tenant,
            max_stored_artifacts=lim.max_stored_artifacts_per_tenant,
        )

    # -- submit -------------------------------------------------------------------------------------------------

    async def submit_job(self, request: Request, who: Principal, idempotency_key: str | None) -> Submitted:
        """Save and dispatch a new job. A repeated Idempotency-Key answers the job it created when the request is
        the same (same files, spec and webhook: `request_fingerprint`), and 422 when it is not (IETF
        draft-ietf-httpapi-idempotency-key-header, "reuse with a different request payload")."""
        existing = None
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise Unprocessable("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
            existing = await run_in_threadpool(self.store.find_by_idempotency_key, who.tenant, idempotency_key)
        try:
            if existing is None:  # a replay is answered even when the tenant is at a limit now
                await run_in_threadpool(self._precheck_quota, who.tenant)
            upload = await receive_multipart(request, self.settings.tmp_dir, self.rules)
            try:
                self.metrics.upload_bytes.inc(upload.total_bytes)
                fingerprint = request_fingerprint(upload)
                if existing is not None:
                    result = Submitted(_same_request(existing, fingerprint), created=False)
                else:
                    result = await run_in_threadpool(self._save, upload, who, idempotency_key, fingerprint)
            finally:
                upload.cleanup()
        except Exception:
            self.metrics.submits.labels(outcome="rejected").inc()
            raise
        self.metrics.submits.labels(outcome="accepted" if result.created else "replayed").inc()
        return result

    def _precheck_quota(self, tenant: str) -> None:
        """Refuse before reading the body when the tenant is already at a limit (re-checked atomically on save)."""
        lim = self.settings.limits
        active = self.store.count_jobs(tenant, ACTIVE)
        if active >= lim.max_active_jobs_per_tenant:
            raise TooManyRequests(
                f"tenant '{tenant}' already has {active} queued or running jobs; the limit "
                f"(limits.max_active_jobs_per_tenant) is {lim.max_active_jobs_per_tenant}",
                field="limits.max_active_jobs_per_tenant",
            )
        stored = self.store.count_jobs(tenant)
        if stored >= lim.max_stored_jobs_per_tenant:
            raise TooManyRequests(
                f"tenant '{tenant}' already stores {stored} jobs; the limit "
                f"(limits.max_stored_jobs_per_tenant) is {lim.max_stored_jobs_per_tenant}: delete "
                "old jobs",
                field="limits.max_stored_jobs_per_tenant",
            )
        artifacts = self.store.count_artifacts(tenant)
        if artifacts >= lim.max_stored_artifacts_per_tenant:
            raise TooManyRequests(
                f"tenant '{tenant}' already stores {artifacts} artifacts; the limit "
                f"(limits.max_stored_artifacts_per_tenant) is {lim.max_stored_artifacts_per_tenant}: "
                "delete old jobs",
                field="limits.max_stored_artifacts_per_tenant",
            )

    def _save(
        self, upload: ParsedUpload, who: Principal, idempotency_key: str | None, fingerprint: str | None = None
    ) -> Submitted:
        spec = self._parse_spec(upload)
        model = upload.files.get("model")
        if model is None or model.bytes == 0:
            raise Unprocessable("a model file is required (form field 'model', a .keras or .h5 file)", field="model")
        data = upload.files.get("data")
        if data is not None and data.bytes == 0:
            raise Unprocessable("the data file is empty (form field 'data', an .npz file)", field="data")
        with self._inspection_slot():
            model_format = self._inspect("model", model.path)
            if data is None and spec.trains:
                raise Unprocessable(
                    "this spec trains (or ranks units on activations) and needs a dataset: send "
                    "form field 'data' (.npz with x_train, y_train)",
                    field="data",
                )
            if data is not None:
                arrays = self._inspect("data", data.path)
                self._check_data(arrays, spec)
        webhook_url = self._check_webhook(upload.fields.get("webhook_url"))

        inputs = {
            "model": InputFile(
                "model",
                MODEL_SUFFIX.get(model_format, "model.keras"),
                model.filename or "model",
                model.bytes,
                model.sha256,
            )
        }
        if data is not None:
            inputs["data"] = InputFile("data", DATA_NAME, data.filename or "data.npz", data.bytes, data.sha256)
        new = NewJob(
            tenant=who.tenant,
            spec=spec.model_dump(mode="json"),
            inputs=inputs,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        # save first: inputs in place, then the row; only then dispatch. Whatever fails removes what was saved.
        try:
            self.artifacts.adopt_input(new.id, inputs["model"].name, model.path)
            if data is not None:
                self.artifacts.adopt_input(new.id, DATA_NAME, data.path)
            job, created = self.store.create_job(new, max_attempts=self.settings.worker.max_attempts, quota=self.quota)
        except QuotaExceeded as e:
            self._discard_inputs(new.id)
            raise TooManyRequests(e.message, field=f"limits.{e.limit}") from None
        except BaseException:
            self._discard_inputs(new.id)
            raise
        if not created:  # a concurrent submit with the same key saved first
            self._discard_inputs(new.id)
            return Submitted(_same_request(job, fingerprint), created=False)
        try:
            self.dispatcher.wake(job.id)
        except Exception:  # the job is saved and queued: the dispatcher's sweep hands it out later
            log.exception("job %s saved but not handed to the dispatcher now; it stays queued", job.id)
        log.info("job %s queued for tenant %s", job.id, who.tenant)
        return Submitted(job, created=True)

    def _discard_inputs(self, job_id: str) -> None:
        """Remove the inputs of a job that was not saved; when that fails too (the artifact store is down), the
        start-up housekeeping removes them later as orphans."""
        try:
            self.artifacts.delete_job(job_id)
        except Exception:
            log.exception("could not remove the inputs of unsaved job %s", job_id)

    def _parse_spec(self, upload: ParsedUpload) -> JobSpec:
        text = upload.fields.get("spec")
        if text is None or not text.strip():
            raise Unprocessable(
                "a job spec is required (form field 'spec', JSON; see GET /v1/schema/jobspec)", field="spec"
            )
        try:
            return load_spec(text)
        except ValidationError as e:
            errors = validation_errors(e, prefix="spec")
            if any(err.get("type") == "json_invalid" for err in e.errors()):
                errors = [{"field": "spec", "message": f"not valid JSON: {e.errors()[0].get('msg')}"}]
            raise Unprocessable(
                "invalid spec: " + "; ".join(f"{x['field']}: {x['message']}" for x in errors), errors=errors
            ) from None

    def _inspection_slot(self):
        """At most limits.max_concurrent_inspections inspections at once: each may need a few hundred MiB."""
        limit = self.settings.limits.max_concurrent_inspections
        return busy_slot(
            self._inspections, f"inspecting other uploads ({limit} at a time", "max_concurrent_inspections"
        )

    def _inspect(self, field: str, path):
        """Inspect the model (its format is returned) or the dataset (its arrays' shapes and dtypes) of form field
        `field` in a child process killed after limits.inspection_seconds, waited for on an inspector thread
        (within an inspection slot): no upload can hold the API's event loop or GIL. Errors name the form field."""
        try:
            return self._inspector.submit(_INSPECTIONS[field], self.settings.limits, path).result()
        except EngineError as e:
            e.field = e.field or field
            if not e.message.startswith(f"{field}:"):
                e.message = f"{field}: {e.message}"
            raise

    def _check_data(self, arrays: dict, spec: JobSpec) -> None:
        for name in ("x_train", "y_train"):
            if name not in arrays:
                raise DataError(
                    f"data: the .npz has no array '{name}' (found: {', '.join(sorted(arrays)) or 'none'})",
                    field=f"data.{name}",
                )
        rows = arrays["x_train"][0][0] if arrays["x_train"][0] else 0
        if arrays["y_train"][0] and arrays["y_train"][0][0] != rows:
            raise DataError(
                f"data: x_train has {rows} rows but y_train has {arrays['y_train'][0][0]}", field="data.y_train"
            )
        lim = self.settings.limits
        budget = lim.max_epoch_samples
        # an epoch costs its rows, but never less than a fixed minimum (validation, callbacks and progress cost the
        # same for 4 rows as for 4,000), plus a charge per optimizer step (a batch of 1 is not 1/128 of a batch)
        steps = math.ceil(rows / spec.training.batch_size) if rows else 0
        per_epoch = max(rows, lim.min_epoch_samples) + steps * lim.step_cost_samples
        cost = spec.total_epochs * per_epoch
        if cost > budget:
            raise Unprocessable(
                f"the job's training budget is too large: {spec.total_epochs} epochs x {per_epoch} samples per epoch "
                f"= {cost} exceeds the limit of {budget} (limits.max_epoch_samples); an epoch of the {rows} rows of "
                f"x_train is charged max({rows}, limits.min_epoch_samples = {lim.min_epoch_samples}) + {steps} steps "
                f"x limits.step_cost_samples = {lim.step_cost_samples}",
                field="limits.max_epoch_samples",
            )

    def _check_webhook(self, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip()
        try:
            return validate_webhook_url(url, allow_private=self.settings.webhooks.allow_private)
        except ValueError as e:
            raise Unprocessable(str(e), field="webhook_url") from None

    # -- read ---------------------------------------------------------------------------------------------------

    def get_job(self, job_id: str, who: Principal) -> JobRecord:
        job = self.store.get_job(job_id, who.tenant)
        if job is None:
            raise NotFound(f"no job '{job_id}'", field="job_id")
        return job

    def list_jobs(self, who: Principal, statuses: list[JobStatus] | None, limit: int, cursor: str | None):
        return self.store.list_jobs(who.tenant, statuses=statuses, limit=limit, cursor=cursor)

    async def wait_for_change(self, job_id: str, who: Principal, wait: float) -> JobRecord:
        """The job now, or as soon as its status changes within `wait` seconds (long-poll)."""
        job = await run_in_threadpool(self.get_job, job_id, who)
        deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
        first = job.status
        while job.status == first and not job.terminal and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            job = await run_in_threadpool(self.get_job, job_id, who)
        return job

    async def follow_events(self, job_id: str, who: Principal, after: int = 0) -> AsyncIterator[JobEvent]:
        """Every event after `after`, as it is written, ending after the job's terminal status event."""
        await run_in_threadpool(self.get_job, job_id, who)
        last = after
        while True:
            batch = await run_in_threadpool(self.store.events, job_id, after=last, limit=500)
            for ev in batch:
                last = ev.seq
                yield ev
                if ev.kind is EventKind.STATUS and ev.data.get("status") in TERMINAL:
                    return
            if not batch:
                job = await run_in_threadpool(self.store.get_job, job_id, who.tenant)
                if job is None:
                    return
                if job.terminal:
                    # the terminal event may have been before `after`: nothing more will come
                    more = await run_in_threadpool(self.store.events, job_id, after=last, limit=1)
                    if not more:
                        return
                    continue
                await asyncio.sleep(POLL_SECONDS)

    def logs(self, job_id: str, who: Principal, after: int = 0) -> list[JobEvent]:
        """The job's events after sequence number `after` (0 <= after <= MAX_EVENT_SEQ, checked by the route)."""
        self.get_job(job_id, who)
        return self.store.events(job_id, after=after, limit=100_000)

    # -- change -------------------------------------------------------------------------------------------------

    def cancel_job(self, job_id: str, who: Principal) -> JobRecord:
        job = self.get_job(job_id, who)
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise Conflict(f"job '{job_id}' already {job.status}; there is nothing to cancel", field="status")
        if job.status is JobStatus.CANCELLED:
            return job
        job = self.store.request_cancel(job_id, who.tenant)
        if job is None:  # pragma: no cover - deleted in between
            raise NotFound(f"no job '{job_id}'", field="job_id")
        if job.status is JobStatus.CANCELLED and job.webhook_url:  # it never reaches a worker: notify from here
            notify.send(self.settings, job)  # queued for this process's sender threads
        return job

    def delete_job(self, job_id: str, who: Principal) -> None:
        job = self.get_job(job_id, who)
        if job.status is JobStatus.QUEUED:
            job = self.store.request_cancel(job_id, who.tenant) or job
        if job.status is JobStatus.RUNNING:
            raise Conflict(
                f"job '{job_id}' is running; cancel it first (POST /v1/jobs/{job_id}/cancel)", field="status"
            )
        self.artifacts.delete_job(job_id)
        self.store.delete_job(job_id)

    # -- artifacts ----------------------------------------------------------------------------------------------

    def open_artifact(self, job_id: str, name: str, who: Principal) -> Artifact:
        job = self.get_job(job_id, who)
        info = next((a for a in job.artifacts if a.name == name), None) if valid_name(name) else None
        if info is None:
            names = ", ".join(a.name for a in job.artifacts) or "none yet"
            raise NotFound(f"job '{job_id}' has no artifact '{name}' (artifacts: {names})", field="name")
        try:
            chunks = self.artifacts.open_output(job_id, name)
        except FileNotFoundError:
            raise NotFound(
                f"artifact '{name}' of job '{job_id}' is missing from the artifact store", field="name"
            ) from None
        return Artifact(name=name, bytes=info.bytes, sha256=info.sha256, chunks=chunks)


def request_fingerprint(upload: ParsedUpload) -> str:
    """sha256 of what a submit asks for: the uploaded files' sha256, the spec (as parsed JSON, so that key order
    and white space do not matter; as text when it is not JSON) and the webhook URL."""
    spec_text = upload.fields.get("spec") or ""
    try:
        spec = from_json(spec_text)  # linear and depth-limited, unlike json.loads
    except ValueError:
        spec = spec_text
    parts = {
        "files": {name: f.sha256 for name, f in sorted(upload.files.items()) if f.bytes},
        "spec": spec,
        "webhook_url": (upload.fields.get("webhook_url") or "").strip() or None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _same_request(job: JobRecord, fingerprint: str) -> JobRecord:
    """The job an Idempotency-Key created, when this request is the one that created it (a job saved before
    fingerprints were kept is taken as the same)."""
    if job.request_fingerprint is not None and job.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key '{job.idempotency_key}' was already used for job '{job.id}' with a different request "
            "(other files, spec or webhook_url); send a new key for a new job, or the same request to get that "
            "job",
            field="Idempotency-Key",
        )
    return job


def _model_format(limits: LimitSettings, path) -> str:
    """Inspect a model file in a child process; bound what loading it will cost; keep only its format."""
    from workers.engine.inspection.isolated import inspect_model_isolated

    found = inspect_model_isolated(path, timeout_s=limits.inspection_seconds, limit_name="limits.inspection_seconds")
    if found.sequential_layers > limits.max_sequential_layers:
        raise ModelRejected(
            f"the model's Sequential models hold {found.sequential_layers} layers; the limit is "
            f"{limits.max_sequential_layers} (limits.max_sequential_layers): Keras rebuilds a Sequential model after "
            "each layer it adds while loading it, so loading takes time growing with the square of its depth. Save "
            "it as a functional model (keras.Model(inputs, outputs)), which loads far faster, or raise the "
            "limit",
            field="limits.max_sequential_layers",
        )
    return found.format


def _data_arrays(limits: LimitSettings, path) -> dict:
    """Inspect a dataset .npz in a child process: {array name: (shape, dtype)}."""
    from workers.engine.inspection.isolated import inspect_npz_isolated

    return inspect_npz_isolated(path, timeout_s=limits.inspection_seconds, limit_name="limits.inspection_seconds")


_INSPECTIONS = {"model": _model_format, "data": _data_arrays}


def prepare_data_dir(
    settings: Settings, store: JobStore, artifacts: ArtifactStore, *, orphan_age_s: float = 300.0
) -> dict:
    """Start-up housekeeping: remove temp uploads of a previous run (a restart mid-upload leaves no trace) and
    input directories older than `orphan_age_s` that no job row refers to (a crash between the two saves)."""
    import shutil

    removed_tmp = 0
    tmp = settings.tmp_dir
    if tmp.is_dir():
        for p in tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed_tmp += 1
    tmp.mkdir(parents=True, exist_ok=True)
    known = store.job_ids()
    orphans = []
    for job_id in artifacts.job_ids() - known:
        age = artifacts.job_age_seconds(job_id)
        if age is not None and age >= orphan_age_s:
            artifacts.delete_job(job_id)
            orphans.append(job_id)
    return {"temp_uploads_removed": removed_tmp, "orphans_removed": orphans}

"""run_job(job_id, ctx): the one code path that executes a job, whatever dispatched it.

It claims the job (a conditional update that counts the attempt), runs the engine in a sandboxed child process,
relays progress and heartbeats to the store, publishes the outputs to the artifact store and records the
terminal state. It is safe to call twice or concurrently for the same id: only one claim can win, and every later
write is conditional on still owning that attempt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workers import webhooks
from workers.artifacts import ArtifactStore, ArtifactStoreUnavailable, open_artifacts
from workers.artifacts.base import sha256_file
from workers.engine.errors import EngineError
from workers.jobs import ArtifactInfo, EventKind, JobRecord, JobStatus, error_dict, worker_identity
from workers.sandbox import Hooks, SandboxJob, SandboxLimits, SandboxResult, run_sandboxed
from workers.settings import Settings
from workers.store import Claim, JobStore, open_store

log = logging.getLogger("secateurs.runner")

MANIFEST_NAME = "manifest.json"


@dataclass
class RunContext:
    """What a worker needs to run jobs: settings, the two stores, its identity and a stop signal."""

    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    worker_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    alive: Callable[[], bool] = lambda: True  # False when the process that owns this worker is gone

    @classmethod
    def from_settings(cls, settings: Settings, worker_id: str | None = None, **kw) -> RunContext:
        store = open_store(settings.store_url, echo=settings.store.echo)
        artifacts = open_artifacts(settings)
        return cls(settings=settings, store=store, artifacts=artifacts,
                   worker_id=worker_id or worker_identity(), **kw)

    def should_stop(self) -> bool:
        return self.stop.is_set() or not self.alive()


def run_job(job_id: str, ctx: RunContext) -> JobStatus | None:
    """Run one attempt of a job. Returns its terminal status, or None when it was not ours to run (or released)."""
    claim = ctx.store.claim(job_id, ctx.worker_id)
    if claim is None:
        return None
    log.info("job %s: attempt %d by %s", job_id, claim.attempt, ctx.worker_id)
    scratch = ctx.settings.scratch_dir / f"{job_id}.{claim.attempt}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        result = _run_attempt(claim, ctx, scratch)
        if result.status is None:
            ctx.store.release(claim, reason=result.error["message"] if result.error else "released")
            log.info("job %s: released (%s)", job_id, result.error)
            return None
        status, manifest, error, artifacts = _conclude(claim, ctx, result)
        if not ctx.store.finish(claim, status, manifest=manifest, error=error, artifacts=artifacts):
            log.warning("job %s: attempt %d lost its claim before finishing", job_id, claim.attempt)
            return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("job %s: %s", job_id, status)
    webhooks.send_when_finished(ctx.settings, ctx.store, job_id)  # sent by another thread
    return status


# the error type of a stored input that no longer is what was uploaded (and inspected) at submit
_INPUT_ERROR_TYPES = {"model": "model_rejected", "data": "data_error"}


def verify_inputs(job: JobRecord, artifacts: ArtifactStore) -> dict | None:
    """Check every stored input against the size and sha256 recorded at submit (when it was inspected); the error
    of the first one that is missing or was changed since, or None. The job process inspects the files again
    anyway: this names a swapped or damaged file before anything reads it."""
    for role, recorded in job.inputs.items():
        kind = _INPUT_ERROR_TYPES.get(role, "internal_error")
        what = f"the stored {role} input '{recorded.filename or recorded.name}' ({recorded.name})"
        try:
            path = Path(artifacts.input_path(job.id, recorded.name))
            size = path.stat().st_size
            digest = sha256_file(path)[0] if size == recorded.bytes else None
        except ArtifactStoreUnavailable:  # not the file's fault: the attempt ends and the job is retried
            raise
        except OSError as e:
            return error_dict(kind, f"{what} cannot be read from the artifact store: {e.strerror or e}", field=role)
        if size != recorded.bytes or digest != recorded.sha256:
            now = f"{size} bytes" if digest is None else f"sha256 {digest[:16]}..."
            then = f"{recorded.bytes} bytes" if digest is None else f"sha256 {recorded.sha256[:16]}..."
            return error_dict(kind, f"{what} changed after it was submitted and inspected ({then} at submit, {now} "
                                    "now); it was not loaded", field=role)
    return None


def _run_attempt(claim: Claim, ctx: RunContext, scratch: Path) -> SandboxResult:
    job = claim.job
    refused = verify_inputs(job, ctx.artifacts)
    if refused is not None:
        log.warning("job %s: %s", job.id, refused["message"])
        return SandboxResult(JobStatus.FAILED, refused)
    model = job.inputs.get("model")
    data = job.inputs.get("data")
    sandbox_job = SandboxJob(
        model_path=str(ctx.artifacts.input_path(job.id, model.name)),
        data_path=str(ctx.artifacts.input_path(job.id, data.name)) if data else None,
        spec=job.spec,
        scratch=str(scratch),
    )
    hooks = Hooks(
        on_progress=_tolerant(lambda p: ctx.store.record_progress(claim, p), None),
        should_cancel=_tolerant(lambda: ctx.store.cancel_requested(job.id), False),
        should_stop=ctx.should_stop,
        on_tick=_tolerant(lambda: ctx.store.heartbeat(claim), True),
        on_log=_tolerant(lambda m: ctx.store.add_event(job.id, EventKind.LOG, {"message": m}), None),
        tick_interval=ctx.settings.worker.heartbeat_interval,
    )
    return run_sandboxed(sandbox_job, SandboxLimits.from_settings(ctx.settings), hooks)


def _tolerant(fn: Callable, fallback):
    """A store call made while the job runs: a passing database hiccup is logged, not fatal to the job (a missed
    heartbeat is retried at the next tick; one that stays missing lets the sweep re-queue the job)."""

    def call(*args):
        try:
            return fn(*args)
        except Exception:
            log.exception("store call failed while a job was running")
            return fallback

    return call


def _conclude(claim: Claim, ctx: RunContext, result: SandboxResult
              ) -> tuple[JobStatus, dict | None, dict | None, list[ArtifactInfo]]:
    job_id = claim.job.id
    if result.status is not JobStatus.SUCCEEDED:
        if result.status is JobStatus.FAILED and result.log_tail.strip():
            ctx.store.add_event(job_id, EventKind.LOG, {"message": "job process output (tail):\n" + result.log_tail})
        return result.status, None, result.error, []
    try:
        manifest, artifacts = _publish(job_id, ctx.artifacts, result.out_dir)
    except (EngineError, OSError) as e:
        ctx.artifacts.delete_outputs(job_id)
        error = e.to_dict() if isinstance(e, EngineError) else error_dict(
            "internal_error", f"could not store the job's artifacts: {e}")
        return JobStatus.FAILED, None, error, []
    return JobStatus.SUCCEEDED, manifest, None, artifacts


def _publish(job_id: str, artifacts: ArtifactStore, out_dir: Path) -> tuple[dict, list[ArtifactInfo]]:
    """Copy every output file into the artifact store (atomically, hashed); the manifest is read last."""
    manifest_path = out_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    published = []
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    names.sort(key=lambda n: n == MANIFEST_NAME)  # the manifest goes in last
    for name in names:
        published.append(artifacts.put_output(job_id, name, out_dir / name))
    return manifest, published


def cleanup_scratch(settings: Settings, store: JobStore) -> list[str]:
    """Remove attempt directories that no running attempt owns (left by a crash); returns what was removed."""
    root = settings.scratch_dir
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    removed = []
    for p in root.iterdir():
        job_id, _, attempt = p.name.rpartition(".")
        job = store.get_job(job_id) if job_id else None
        if job is not None and job.status is JobStatus.RUNNING and str(job.attempts) == attempt:
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed

"""run_job(job_id, ctx): the one code path that executes a job, whatever dispatched it.

It claims the job (a conditional update that counts the attempt), runs the engine in a sandboxed child process,
relays progress and heartbeats to the store, publishes the outputs to the artifact store and records the
terminal state. It is safe to call twice or concurrently for the same id: only one claim can win, and every later
write is conditional on still owning that attempt.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workers import notify
from workers.artifacts import ArtifactStore, open_artifacts
from workers.artifacts.base import sha256_file
from workers.engine.summary import MANIFEST_NAME
from workers.errors import ArtifactStoreUnavailable, EngineError
from workers.jobs import ArtifactInfo, EventKind, JobRecord, JobStatus, error_dict
from workers.sandbox import Hooks, SandboxJob, SandboxLimits, SandboxResult, run_sandboxed
from workers.settings import Settings
from workers.store import Claim, JobStore, open_store

log = logging.getLogger("secateurs.runner")


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
    def from_settings(cls, settings: Settings, worker_id: str, **kw) -> RunContext:
        """A context with its own store and artifact store clients; `worker_id` from `worker.worker_identity`."""
        store = open_store(settings.store_url, echo=settings.store.echo)
        artifacts = open_artifacts(settings)
        return cls(settings=settings, store=store, artifacts=artifacts, worker_id=worker_id, **kw)

    def should_stop(self) -> bool:
        return self.stop.is_set() or not self.alive()


def run_job(job_id: str, ctx: RunContext) -> JobStatus | None:
    """Run one attempt of a job (and, after a job process killed from outside, the next one while attempts remain).
    Returns its terminal status, or None when it was not ours to run, or released, or the attempt lost its claim."""
    claim = ctx.store.claim(job_id, ctx.worker_id)
    while claim is not None:
        log.info("job %s: attempt %d by %s", job_id, claim.attempt, ctx.worker_id)
        outcome = _run_claim(claim, ctx)
        if isinstance(outcome, Claim):  # retried as the next attempt
            claim = outcome
            continue
        if outcome is None:
            return None
        log.info("job %s: %s", job_id, outcome)
        notify.send_when_finished(ctx.settings, ctx.store, job_id)  # sent by another thread
        return outcome
    return None


class ClaimLost(Exception):
    """The attempt no longer owns its job (or cannot tell, its heartbeats failing): it must stop and publish nothing."""


class Lease:
    """An attempt's hold on its job, renewed by heartbeats. A heartbeat that raises (the store unreachable) or
    answers False (the claim is gone) is a failure: the lease is lost at once when the store says the claim is gone,
    and after `max_missed` failures in a row, or `timeout` seconds since the last heartbeat that succeeded (the
    sweep may have re-queued the job by then), otherwise. A lost lease stays lost."""

    def __init__(
        self,
        store: JobStore,
        claim: Claim,
        *,
        max_missed: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.claim, self.max_missed, self.timeout, self.clock = store, claim, max_missed, timeout, clock
        self.last_ok = clock()
        self.missed = 0
        self.lost: str | None = None  # why the lease was lost

    def renew(self) -> bool:
        """One heartbeat; False when the attempt must stop."""
        if self.lost is not None:
            return False
        try:
            owned = bool(self.store.heartbeat(self.claim))
        except Exception as e:  # the store cannot be reached: maybe passing, maybe this worker is cut off
            self.missed += 1
            log.warning(
                "job %s: a heartbeat of attempt %d failed (%d in a row): %s",
                self.claim.job.id,
                self.claim.attempt,
                self.missed,
                e,
            )
            since = self.clock() - self.last_ok
            if self.missed >= self.max_missed or since >= self.timeout:
                self.lost = (
                    f"{self.missed} heartbeats in a row failed ({since:.0f} s without one): the attempt "
                    f"cannot tell whether it still owns the job (worker.heartbeat_max_missed)"
                )
            return self.lost is None
        if not owned:
            self.lost = "the attempt lost its claim on the job (another attempt owns it, or it ended)"
            return False
        self.missed, self.last_ok = 0, self.clock()
        return True

    def check(self) -> None:
        """Renew before a write that only the owner may make; raises ClaimLost when the lease is lost."""
        if not self.renew():
            raise ClaimLost(self.lost)


def _run_claim(claim: Claim, ctx: RunContext) -> JobStatus | Claim | None:
    job_id = claim.job.id
    worker = ctx.settings.worker
    lease = Lease(ctx.store, claim, max_missed=worker.heartbeat_max_missed, timeout=worker.heartbeat_timeout)
    scratch = ctx.settings.scratch_dir / f"{job_id}.{claim.attempt}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        result = _run_attempt(claim, ctx, scratch, lease)
        if result.status is None:
            reason = lease.lost or (result.error["message"] if result.error else "released")
            _tolerant(lambda: ctx.store.release(claim, reason=reason), False)()
            log.info("job %s: attempt %d stopped, nothing published (%s)", job_id, claim.attempt, reason)
            return None
        if result.retryable:  # killed from outside, not by a limit: worth another attempt while any remain
            if claim.attempt < claim.job.max_attempts:
                retried = ctx.store.retry(claim, reason=result.error["message"])
                if retried is not None:
                    log.warning(
                        "job %s: attempt %d ended (%s); retrying", job_id, claim.attempt, result.error["message"]
                    )
                    return retried
            else:
                result.error = {
                    **result.error,
                    "message": f"{result.error['message']}; not retried: that was "
                    f"attempt {claim.attempt} of {claim.job.max_attempts} (worker.max_attempts)",
                }
        try:
            status, manifest, error, artifacts = _conclude(claim, ctx, result, lease)
        except ClaimLost as e:
            _discard_outputs(ctx, claim)
            log.warning("job %s: attempt %d stopped before publishing: %s", job_id, claim.attempt, e)
            return None
        if not ctx.store.finish(claim, status, manifest=manifest, error=error, artifacts=artifacts):
            _discard_outputs(ctx, claim)
            log.warning(
                "job %s: attempt %d lost its claim before finishing; its outputs were discarded", job_id, claim.attempt
            )
            return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return status


def _discard_outputs(ctx: RunContext, claim: Claim) -> None:
    """Remove what a fenced-off attempt wrote (under its own attempt number, never served); best effort."""
    _tolerant(lambda: ctx.artifacts.delete_outputs(claim.job.id, attempt=claim.attempt), None)()


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
        except OSError as e:  # (an unavailable artifact store is not the file's fault: it ends the attempt, retried)
            return error_dict(kind, f"{what} cannot be read from the artifact store: {e.strerror or e}", field=role)
        if size != recorded.bytes or digest != recorded.sha256:
            now = f"{size} bytes" if digest is None else f"sha256 {digest[:16]}..."
            then = f"{recorded.bytes} bytes" if digest is None else f"sha256 {recorded.sha256[:16]}..."
            return error_dict(
                kind,
                f"{what} changed after it was submitted and inspected ({then} at submit, {now} now); it was not loaded",
                field=role,
            )
    return None


def _run_attempt(claim: Claim, ctx: RunContext, scratch: Path, lease: Lease) -> SandboxResult:
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
        on_tick=lease.renew,  # a failed heartbeat counts: the attempt stops once its lease is lost
        on_log=_tolerant(lambda m: ctx.store.add_event(job.id, EventKind.LOG, {"message": m}), None),
        tick_interval=ctx.settings.worker.heartbeat_interval,
    )
    return run_sandboxed(sandbox_job, SandboxLimits.from_settings(ctx.settings), hooks)


def _tolerant(fn: Callable, fallback):
    """A store call made while the job runs: a passing database hiccup is logged, not fatal to the job (heartbeats
    are not made this way: a failed one counts, see Lease)."""

    def call(*args):
        try:
            return fn(*args)
        except Exception:
            log.exception("store call failed while a job was running")
            return fallback

    return call


def _conclude(
    claim: Claim, ctx: RunContext, result: SandboxResult, lease: Lease
) -> tuple[JobStatus, dict | None, dict | None, list[ArtifactInfo]]:
    """The terminal state of an attempt, its outputs written under its attempt number (published by `finish`).
    Raises ClaimLost when the attempt lost its claim before a write."""
    job_id = claim.job.id
    if result.status is not JobStatus.SUCCEEDED:
        if result.status is JobStatus.FAILED and result.log_tail.strip():
            ctx.store.add_event(job_id, EventKind.LOG, {"message": "job process output (tail):\n" + result.log_tail})
        return result.status, None, result.error, []
    try:
        manifest, artifacts = _publish(claim, ctx.artifacts, result.out_dir, lease)
    except (EngineError, ArtifactStoreUnavailable, OSError) as e:  # a full disk, an unreachable S3: the job fails
        ctx.artifacts.delete_outputs(job_id, attempt=claim.attempt)
        error = (
            e.to_dict()
            if isinstance(e, EngineError)
            else error_dict("internal_error", f"could not store the job's artifacts: {e}")
        )
        return JobStatus.FAILED, None, error, []
    return JobStatus.SUCCEEDED, manifest, None, artifacts


def _publish(claim: Claim, artifacts: ArtifactStore, out_dir: Path, lease: Lease) -> tuple[dict, list[ArtifactInfo]]:
    """Copy every output file into the attempt's place in the artifact store (atomically, hashed), renewing the
    lease before each write; the manifest is read first and written last. Nothing is served before `finish`
    records the attempt's artifacts, and a stale attempt's files never replace those of the one that finished."""
    manifest_path = out_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    published = []
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    names.sort(key=lambda n: n == MANIFEST_NAME)  # the manifest goes in last
    for name in names:
        lease.check()
        published.append(artifacts.put_output(claim.job.id, name, out_dir / name, attempt=claim.attempt))
    return manifest, published

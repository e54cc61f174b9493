"""Preflight use case behind POST /v1/preflight: what the engine can prune in a model, and what a spec would leave.

The upload is received and checked exactly as a job's is (the same form rules for `model` and `spec`, the same spec
validation and the same upload inspection in a child process, within the same inspection slots, so a model a job
would refuse is refused with the same status and message). The model is then loaded where jobs load models: a
child process with TensorFlow, bounded in time and memory (`workers.preflight.run_isolated`); the API process never
imports TensorFlow. Nothing is stored: the upload is removed when the answer is ready.
"""

from __future__ import annotations

import threading

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.errors import Unprocessable
from service.services.jobs import JobService, busy_slot
from service.services.uploads import FormRules, ParsedUpload, receive_multipart
from workers.preflight import PreflightLimits, run_isolated
from workers.settings import Settings

SCRATCH = "preflight"  # the child's directory, inside the upload's own temp directory


class PreflightService:
    def __init__(self, settings: Settings, jobs: JobService):
        self.settings, self.jobs = settings, jobs
        self.limits = PreflightLimits.from_settings(settings)
        self.rules = FormRules(
            file_fields=frozenset({"model"}),
            text_fields={"spec": settings.limits.max_spec_bytes},
            max_body_bytes=settings.limits.max_upload_bytes,
            text_limit_names={"spec": "limits.max_spec_bytes"},
        )
        self._slots = threading.BoundedSemaphore(settings.limits.max_concurrent_preflights)

    async def preflight(self, request: Request) -> dict:
        """The engine's preflight of the uploaded model (with the spec's checks and step estimates when given)."""
        upload = await receive_multipart(request, self.settings.tmp_dir, self.rules)
        try:
            return await run_in_threadpool(self._run, upload)
        finally:
            upload.cleanup()

    def _run(self, upload: ParsedUpload) -> dict:
        # the checks of JobService._save, in its order, with its messages
        spec = self.jobs._parse_spec(upload) if (upload.fields.get("spec") or "").strip() else None
        model = upload.files.get("model")
        if model is None or model.bytes == 0:
            raise Unprocessable("a model file is required (form field 'model', a .keras or .h5 file)", field="model")
        with self.jobs._inspection_slot():
            self.jobs._inspect("model", model.path)
        with self._slot():
            result = run_isolated(
                model.path,
                spec.model_dump(mode="json") if spec is not None else None,
                self.limits,
                upload.tmp_dir / SCRATCH,
            )
        result["model"]["file"] = model.filename or result["model"]["file"]
        return result

    def _slot(self):
        """At most limits.max_concurrent_preflights TensorFlow children at once."""
        limit = self.settings.limits.max_concurrent_preflights
        return busy_slot(self._slots, f"with other preflights ({limit} at a time", "max_concurrent_preflights")

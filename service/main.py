"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan opens the job store and artifact
store, cleans up after a previous run, sweeps interrupted jobs and starts the dispatcher, all on app.state.

Run it with `secateurs serve` (API + local workers) or `uvicorn service.main:app_factory --factory`.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from workers.settings import Settings, get_settings

log = logging.getLogger("secateurs.service")

DESCRIPTION = """Compress trained Keras 3 models: prune, regularize and fine-tune, then download the smaller model
and its before/after metrics.

Submit with one `curl -F` line (`model`, `data`, `spec`), follow `GET /v1/jobs/{id}?wait=30` or the SSE stream
`/v1/jobs/{id}/events`, then download `/v1/jobs/{id}/artifacts/model.keras`. The `spec` field is a **JobSpec**
(schema below and at `GET /v1/schema/jobspec`). Errors are RFC 9457 problem details.
"""


@asynccontextmanager
async def lifespan(app: FastAPI):
    from service.auth import KeyPresence
    from service.prometheus import ServiceMetrics
    from service.services.jobs import JobService, prepare_data_dir
    from service.services.preflight import PreflightService
    from workers.artifacts import open_artifacts
    from workers.dispatch import make_dispatcher
    from workers.store import open_store
    from workers.worker import sweep

    settings: Settings = app.state.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.store_url, echo=settings.store.echo)
    artifacts = open_artifacts(settings)
    housekeeping = prepare_data_dir(settings, store, artifacts)
    swept = sweep(store, settings)
    log.info("start-up: %s; interrupted jobs handled: %s", housekeeping, [(r.job_id, str(r.status)) for r in swept])
    dispatcher = make_dispatcher(settings, concurrency=app.state.workers)
    metrics = ServiceMetrics(store)
    app.state.store, app.state.artifacts, app.state.dispatcher, app.state.metrics = (
        store,
        artifacts,
        dispatcher,
        metrics,
    )
    app.state.jobs = JobService(settings, store, artifacts, dispatcher, metrics)
    app.state.preflight = PreflightService(settings, app.state.jobs)
    app.state.key_presence = KeyPresence(store, ttl=settings.auth_cache_seconds)
    dispatcher.start()
    try:
        yield
    finally:
        dispatcher.stop()
        app.state.jobs.close()
        store.close()
        from workers import notify

        notify.drain()  # webhooks of jobs cancelled before they ran are sent from this process


def create_app(settings: Settings | None = None, *, workers: int | None = None) -> FastAPI:
    """Build the app. `workers` overrides settings.worker.concurrency for the local dispatcher."""
    from service.errors import install_handlers
    from service.routes import health, jobs, preflight

    settings = settings or get_settings()
    app = FastAPI(
        title="Secateurs",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "Submit and follow compression jobs"},
            {"name": "preflight", "description": "What can be pruned, before any compute"},
            {"name": "schema", "description": "The JobSpec contract"},
            {"name": "health", "description": "Probes and metrics"},
        ],
    )
    app.state.settings = settings
    app.state.workers = workers
    install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(preflight.router)
    app.include_router(jobs.schema_router)
    app.include_router(health.router)
    _add_jobspec_to_openapi(app)
    return app


def _add_jobspec_to_openapi(app: FastAPI) -> None:
    """Add the JobSpec schema (and its parts) to the OpenAPI components, for the multipart `spec` field."""
    from fastapi.openapi.utils import get_openapi

    from workers.spec import JobSpec

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in spec_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["JobSpec"] = spec_schema
        _validation_errors_are_problems(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _validation_errors_are_problems(schema: dict) -> None:
    """FastAPI documents a 422 `HTTPValidationError` (application/json) for every route with parameters; the
    service answers every 422 as a problem (application/problem+json): say so."""
    from service.schemas import PROBLEM_RESPONSES

    problem = {
        "description": PROBLEM_RESPONSES[422]["description"],
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            content = responses.get("422", {}).get("content", {})
            if "application/json" in content and "HTTPValidationError" in str(content["application/json"]):
                responses["422"] = problem
    components = schema.get("components", {}).get("schemas", {})
    components.setdefault("Problem", _problem_schema())
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused not in str(schema.get("paths")):
            components.pop(unused, None)


def _problem_schema() -> dict:
    from service.schemas import Problem

    return Problem.model_json_schema(ref_template="#/components/schemas/{model}")


def app_factory() -> FastAPI:
    """For `uvicorn service.main:app_factory --factory`: settings from the environment."""
    return create_app()

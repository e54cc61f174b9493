"""/healthz (the process answers), /readyz (store, artifact store and workers usable), /metrics (Prometheus, for
admin keys only: its counts cover every tenant)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import Admin
from service.errors import problem
from service.schemas import Health, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: store, artifact store and workers are usable",
    responses={503: {"description": "Not ready (the failing check is named)"}},
)
def readyz(request: Request):
    state = request.app.state
    checks: dict[str, object] = {}
    failed = []
    for name, check in (("store", state.store.ping), ("artifacts", state.artifacts.check_writable)):
        try:
            check()
            checks[name] = "ok"
        except Exception as e:  # a readiness probe reports, it does not raise
            checks[name] = f"failed: {type(e).__name__}: {e}"
            failed.append(name)
    dispatcher = checks["dispatcher"] = state.dispatcher.describe()
    if "broker" in dispatcher:  # celery: "ok", "not reached yet", "never reached: ..." or "unreachable: ..."
        checks["broker"] = dispatcher["broker"]
    if not state.dispatcher.healthy():
        failed.append("broker" if "broker" in dispatcher else "dispatcher")
    if failed:
        return problem(
            503, "not_ready", "not ready: " + ", ".join(f"{n} ({checks[n]})" for n in failed), instance="/readyz"
        )
    return JSONResponse(Health(status="ready", checks=checks).model_dump())


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin keys only: the counts cover every tenant)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **problem_responses(401, 403)},
)
def metrics(request: Request, _admin: Admin) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

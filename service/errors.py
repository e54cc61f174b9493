"""The service's own error classes and the one place that turns every error into RFC 9457 problem+json.

A problem body: {"type": "urn:secateurs:problem:<code>", "title", "status", "detail", "code", "instance"} plus
`errors` ([{"field", "message"}]) when fields are at fault. Engine errors (workers.engine.errors) carry their own
code and HTTP status and are rendered the same way.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.engine.errors import EngineError
from workers.store import StoreUnavailable

log = logging.getLogger("secateurs.service")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:secateurs:problem:"


class ServiceError(Exception):
    code = "error"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None, errors: list[dict] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors
        self.headers = headers


class BadRequest(ServiceError):
    code, http_status = "bad_request", 400


class Unauthorized(ServiceError):
    code, http_status = "unauthorized", 401

    def __init__(self, message: str, **kw):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="secateurs"'}, **kw)


class Forbidden(ServiceError):
    code, http_status = "forbidden", 403


class NotFound(ServiceError):
    code, http_status = "not_found", 404


class Conflict(ServiceError):
    code, http_status = "conflict", 409


class IdempotencyKeyReused(ServiceError):
    """An Idempotency-Key sent again with a different request (IETF draft-ietf-httpapi-idempotency-key-header)."""

    code, http_status = "idempotency_key_reused", 422


class PayloadTooLarge(ServiceError):
    code, http_status = "payload_too_large", 413


class UnsupportedMediaType(ServiceError):
    code, http_status = "unsupported_media_type", 415


class Unprocessable(ServiceError):
    code, http_status = "validation_error", 422


class TooManyRequests(ServiceError):
    code, http_status = "too_many_requests", 429


class Unavailable(ServiceError):
    code, http_status = "unavailable", 503


class InsufficientStorage(ServiceError):
    code, http_status = "insufficient_storage", 507


RETRY_AFTER_SECONDS = 5  # what a 503 for an unavailable job store suggests


def problem(status: int, code: str, detail: str, *, instance: str | None = None, errors: list[dict] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "type": TYPE_PREFIX + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_errors(field: str | None, message: str, errors: list[dict] | None) -> list[dict] | None:
    if errors:
        return errors
    return [{"field": field, "message": message}] if field else None


def validation_errors(exc, prefix: str = "") -> list[dict]:
    """pydantic / FastAPI validation errors as [{"field": "a.b.0", "message": ...}]."""
    from workers.spec import _UNION_TAGS

    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if str(p) not in _UNION_TAGS]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        out.append({"field": ".".join(filter(None, [prefix, *loc])) or prefix or "request",
                    "message": err.get("msg", "invalid")})
    return out


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path (Starlette's Allow header names only the first route's)."""
    from starlette.routing import Match

    routes = request.app.router.routes
    return [m for m in _METHODS
            if any(route.matches({**request.scope, "method": m})[0] is Match.FULL for route in routes)]


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return problem(exc.http_status, exc.code, exc.message, instance=request.url.path,
                       errors=_field_errors(exc.field, exc.message, exc.errors), headers=exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        return problem(exc.http_status, exc.code, exc.message, instance=request.url.path,
                       errors=_field_errors(exc.field, exc.message, None))

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable):
        log.error("job store unavailable on %s %s: %s", request.method, request.url.path, exc)
        # the reason (host, port, file) stays in the log: clients learn nothing about the deployment
        which = "artifact store" if isinstance(exc, OSError) else "job store"  # ArtifactStoreUnavailable is both
        return problem(503, "store_unavailable", f"the {which} is unavailable right now; nothing was saved, retry "
                       "later", instance=request.url.path, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "validation_error", detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
        return problem(exc.status_code, code, detail, instance=request.url.path, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "internal server error", instance=request.url.path)

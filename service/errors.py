"""The service's own error classes, the one map from error codes to HTTP statuses, and the one place that turns
every error into RFC 9457 problem+json.

A problem body: {"type": "urn:secateurs:problem:<code>", "title", "status", "detail", "code", "instance"} plus
`errors` ([{"field", "message"}]) when fields are at fault. Every error the project raises on purpose is a
`SecateursError` with a `code` (workers/errors.py); `STATUS` below gives each code its HTTP status, and is the only
place that does.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.errors import ArtifactStoreUnavailable, SecateursError, StoreUnavailable
from workers.spec import field_path

log = logging.getLogger("secateurs.service")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:secateurs:problem:"

# error code -> HTTP status; a code not named here is a 500
STATUS: dict[str, int] = {
    # the service's own (below)
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "idempotency_key_reused": 422,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "too_many_requests": 429,
    "unavailable": 503,
    "insufficient_storage": 507,
    # the engine's (workers/engine/errors.py)
    "model_rejected": 422,
    "unsupported_file": 415,
    "data_error": 422,
    "spec_error": 422,
    "resource_limit": 413,
    "cancelled": 409,
    # the stores' (workers/errors.py)
    "store_unavailable": 503,
    "quota_exceeded": 429,
}


def status_of(exc: SecateursError) -> int:
    """The HTTP status that answers an error (500 for a code the table does not name)."""
    return STATUS.get(exc.code, 500)


class ServiceError(SecateursError):
    """An error of the HTTP layer itself; may name several fields (`errors`) and add response headers."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        errors: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message, field=field)
        self.errors = errors
        self.headers = headers


class BadRequest(ServiceError):
    code = "bad_request"


class Unauthorized(ServiceError):
    code = "unauthorized"

    def __init__(self, message: str, **kw):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="secateurs"'}, **kw)


class Forbidden(ServiceError):
    code = "forbidden"


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    code = "conflict"


class IdempotencyKeyReused(ServiceError):
    """An Idempotency-Key sent again with a different request (IETF draft-ietf-httpapi-idempotency-key-header)."""

    code = "idempotency_key_reused"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class Unprocessable(ServiceError):
    code = "validation_error"


class TooManyRequests(ServiceError):
    code = "too_many_requests"


class Unavailable(ServiceError):
    code = "unavailable"


class InsufficientStorage(ServiceError):
    code = "insufficient_storage"


RETRY_AFTER_SECONDS = 5  # what a 503 for an unavailable job store suggests


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
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
    out = []
    for err in exc.errors():
        loc = err.get("loc", ())
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        out.append(
            {
                "field": ".".join(filter(None, [prefix, field_path(loc)])) or "request",
                "message": err.get("msg", "invalid"),
            }
        )
    return out


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path (Starlette's Allow header names only the first route's)."""
    from starlette.routing import Match

    routes = request.app.router.routes
    return [
        m for m in _METHODS if any(route.matches({**request.scope, "method": m})[0] is Match.FULL for route in routes)
    ]


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable):
        log.error("job store unavailable on %s %s: %s", request.method, request.url.path, exc)
        # the reason (host, port, file) stays in the log: clients learn nothing about the deployment
        which = "artifact store" if isinstance(exc, ArtifactStoreUnavailable) else "job store"
        return problem(
            status_of(exc),
            exc.code,
            f"the {which} is unavailable right now; nothing was saved, retry later",
            instance=request.url.path,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(SecateursError)
    async def _error(request: Request, exc: SecateursError):
        errors = getattr(exc, "errors", None)
        return problem(
            status_of(exc),
            exc.code,
            exc.message,
            instance=request.url.path,
            errors=_field_errors(exc.field, exc.message, errors),
            headers=getattr(exc, "headers", None),
        )

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

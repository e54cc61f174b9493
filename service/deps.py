"""FastAPI dependencies: the app's services from app.state and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth import DEFAULT_TENANT, KeyPresence, Principal, authenticate
from service.errors import Forbidden
from service.services.jobs import JobService
from service.services.preflight import PreflightService
from workers.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from `secateurs keys create`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same API key, as a header.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs


def get_preflight(request: Request) -> PreflightService:
    return request.app.state.preflight


def base_url(request: Request) -> str:
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


async def principal(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    api_key: str | None = Depends(_api_key),
) -> Principal:
    """The caller's tenant. 401 when keys are required and none (or an unknown / revoked one) is presented."""
    from service.auth import presented_key

    key = presented_key(request.headers.get("authorization"), api_key)
    settings: Settings = request.app.state.settings
    if key is None and not settings.auth_required:
        presence: KeyPresence = request.app.state.key_presence
        # no key and none exists: the default tenant, without a thread hop and a query per request
        if presence.known_absent() or not await run_in_threadpool(presence.refresh):
            return Principal(DEFAULT_TENANT, admin=True)
    return await run_in_threadpool(authenticate, request.app.state.store, key, required=settings.auth_required)


Who = Annotated[Principal, Depends(principal)]
"""The caller (tenant) of a route; 401 before the route runs when no valid key is presented."""
Jobs = Annotated[JobService, Depends(get_jobs)]
Preflight = Annotated[PreflightService, Depends(get_preflight)]


def admin(who: Who) -> Principal:
    """The caller, when an admin (an admin key, or anyone while the service has no keys); else 403."""
    if not who.admin:
        raise Forbidden(
            f"API key {who.key_id} (tenant '{who.tenant}') is not an admin key; service-wide data needs "
            "one: secateurs keys create --tenant T --admin",
            field="authorization",
        )
    return who


Admin = Annotated[Principal, Depends(admin)]
"""An admin caller: 401 without a valid key, 403 with a key that is not an admin key."""

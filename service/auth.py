"""API keys: generated once, stored as sha256 hashes, checked in constant time; one tenant per key.

Keys are required on every route but /healthz and /readyz as soon as any key exists (revoked ones count, so
revoking every key never silently opens the service) or when SECATEURS_AUTH_REQUIRED=true. Without keys every
caller is the tenant `default` (and an admin: every job is theirs). While no key exists, a request without a key
is let through from a cached answer (`KeyPresence`, re-checked at most every SECATEURS_AUTH_CACHE_SECONDS, one
second by default) instead of a database query per request: a key created by `secateurs keys create` in another
process is enforced within that time.

Service-wide data (/metrics: every tenant's counts) needs an admin key once keys exist: `secateurs keys create
--tenant T --admin` (`Principal.admin`; service.deps.Admin answers 403 to any other key).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from service.errors import Unauthorized
from workers.jobs import ApiKeyRecord
from workers.store import JobStore

KEY_PREFIX = "sct_"
DEFAULT_TENANT = "default"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str | None = None
    admin: bool = False  # may read service-wide data (/metrics)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(
    store: JobStore, tenant: str, name: str | None = None, *, admin: bool = False
) -> tuple[ApiKeyRecord, str]:
    """Create a key for `tenant` (an admin key also reads service-wide data); returns (record, plaintext). The
    plaintext is not stored anywhere."""
    if not TENANT_RE.match(tenant):
        raise ValueError(
            f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    key_id = "key_" + secrets.token_hex(6)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return store.create_api_key(key_id, tenant, hash_key(plaintext), name, admin=admin), plaintext


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <API key>'", field="authorization")
        return value.strip()
    if x_api_key:
        return x_api_key.strip()
    return None


class KeyPresence:
    """Whether any API key exists, without a database query per request.

    True is final (keys are never deleted: revoked ones count). False is re-checked at most every `ttl`
    seconds, so a key created by `secateurs keys create` in another process is enforced within `ttl`.
    """

    def __init__(self, store: JobStore, ttl: float = 1.0):
        self.store, self.ttl = store, ttl
        self._exists = False
        self._checked = float("-inf")

    def known_absent(self) -> bool:
        """True when no key existed at the last check, made less than `ttl` seconds ago."""
        return not self._exists and time.monotonic() - self._checked < self.ttl

    def refresh(self) -> bool:
        if not self._exists:
            self._exists = self.store.any_api_key()
            self._checked = time.monotonic()
        return self._exists


def authenticate(store: JobStore, key: str | None, *, required: bool) -> Principal:
    if key is None:
        if required or store.any_api_key():
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        return Principal(DEFAULT_TENANT, admin=True)
    digest = hash_key(key)
    found = store.find_api_key(digest)
    if found is None or not hmac.compare_digest(found[1], digest):
        raise Unauthorized("unknown API key")
    record = found[0]
    if not record.active:
        raise Unauthorized(f"API key {record.id} was revoked")
    return Principal(record.tenant, record.id, admin=record.admin)

"""Signed webhooks with bounded retries, each attempt pinned to an address checked by urls.py.

    deliver(url, payload, secret=...)          -> True when the receiver answered 2xx; never raises
    delivery_budget(timeout, attempts, backoff) -> the most seconds one delivery can take
    sign(secret, body) / verify_signature(...)  -> the `X-Secateurs-Signature` header, sender and receiver side

**DNS rebinding.** A name that resolves to a public address when the job is submitted may resolve to 127.0.0.1
when the webhook fires. `deliver` therefore resolves and checks again before *every* attempt, and then connects to
exactly the address it checked: the request goes to `scheme://<checked IP>:port/path` with the `Host` header set to
the original host and, for https, the TLS SNI name (and so certificate verification) set to the original host
through httpx's `sni_hostname` request extension. httpx never resolves the name itself, so there is no second
lookup an attacker could answer differently. Environment proxies are ignored (`trust_env=False`): a proxy would
resolve the name on its own. Redirects are never followed; a 3xx answer is a failed delivery.

**Signature.** With a secret, each request carries `X-Secateurs-Signature: t=<unix seconds>,v1=<hex>` where `v1` is
HMAC-SHA256(secret, f"{t}.{body}") over the exact body bytes sent; receivers check it with `verify_signature` and
reject old timestamps. `X-Secateurs-Event` names the event and `X-Secateurs-Delivery` is one id shared by all
attempts of one delivery, so a receiver can drop duplicates.

**Retries.** `retries` is the number of *additional* attempts after the first (`retries=3`: at most 4 requests).
Connection errors, timeouts, 5xx and 429 are retried after `backoff * 2**n` seconds (capped at 30 s); any other
answer (3xx, 4xx) or a URL refused by the checks ends the delivery at once. The response body is never read.

**Deadline.** `timeout` is a wall-clock deadline for each whole attempt (connect, send the body, receive the status
line and headers), not a per-read timeout: a receiver that trickles its answer one byte at a time is cut off when
the deadline passes, like one that says nothing. The request runs on httpx's async client under `asyncio.timeout`,
which cancels it wherever it waits. The address checks (and so the DNS lookup) come before the deadline starts and
are bounded by the resolver's own timeouts. One delivery therefore takes at most `delivery_budget(...)` seconds,
`attempts * timeout` plus the pauses between attempts, and those lookups and the client's set-up (a fraction of a
second). `deliver` blocks for that long: call it from a sender thread (sender.py), never from a worker loop or an
event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterable

import httpx

from workers.notify.urls import ResolveError, Target, check_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Secateurs-Signature"
EVENT_HEADER = "X-Secateurs-Event"
DELIVERY_HEADER = "X-Secateurs-Delivery"
DEFAULT_EVENT = "job.updated"
USER_AGENT = "secateurs-webhook/1"
MAX_BACKOFF_S = 30.0


# -- signing -----------------------------------------------------------------------------------------------------


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Secateurs-Signature` value for `body`: "t=<unix>,v1=<hex HMAC-SHA256 of f'{t}.{body}'>"."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """Receiver side: True when `header` signs `body` with `secret` and its timestamp is within `tolerance_s`."""
    try:
        fields = dict(part.strip().split("=", 1) for part in header.split(","))
        t = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(given, _mac(secret, t, body))


# -- delivery ----------------------------------------------------------------------------------------------------


def _encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def _pinned_request(
    client: httpx.AsyncClient, target: Target, address: str, body: bytes, headers: dict[str, str]
) -> httpx.Request:
    """A request to `address` that still names the original host in Host and (for https) SNI/certificate checks."""
    host = target.url.raw_host.decode("ascii")
    request_headers = {**headers, "Host": target.url.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if target.url.scheme == "https" else {}
    return client.build_request(
        "POST", target.url.copy_with(host=address), content=body, headers=request_headers, extensions=extensions
    )


async def _post(
    client: httpx.AsyncClient, target: Target, body: bytes, headers: dict[str, str]
) -> tuple[bool, bool, str]:
    """POST to the target's checked addresses in turn until one connects; (delivered, retry, what happened)."""
    outcome = "no address connected"
    for address in target.addresses:
        try:
            response = await client.send(_pinned_request(client, target, address, body, headers), stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            outcome = f"cannot connect to {address}: {e!r}"
            continue  # the next address of the same, checked, resolution
        except httpx.HTTPError as e:
            return False, True, f"{address}: {e!r}"
        await response.aclose()  # the body is never read
        status = response.status_code
        if 200 <= status < 300:
            return True, False, f"{address}: HTTP {status}"
        retry = status >= 500 or status == 429
        note = " (redirects are not followed)" if 300 <= status < 400 else ""
        return False, retry, f"{address}: HTTP {status}{note}"
    return False, True, outcome


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline_s: float,
    allow_private: bool,
    allowed_hosts: Iterable[str],
) -> tuple[bool, bool, str]:
    """One attempt: re-check the URL, then POST within `deadline_s` seconds of wall-clock time.

    Returns (delivered, retry, what happened).
    """
    try:
        target = check_url(url, allow_private, allowed_hosts)
    except ResolveError as e:
        return False, True, str(e)
    except ValueError as e:
        return False, False, f"refused: {e}"
    try:
        async with asyncio.timeout(deadline_s):
            return await _post(client, target, body, headers)
    except TimeoutError:
        return False, True, f"no complete answer within the {deadline_s:g} s deadline of an attempt"


def _for_log(url: str) -> str:
    """The URL without its query string or credentials (receivers often put tokens there)."""
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))
    except Exception:
        return "<invalid URL>"


def delivery_budget(timeout: float, attempts: int, backoff: float = 0.5) -> float:
    """The most seconds one `deliver` call can take (DNS lookups aside): every attempt's deadline plus the pauses."""
    attempts = max(1, int(attempts))
    return attempts * timeout + sum(min(MAX_BACKOFF_S, max(0.0, backoff) * 2**n) for n in range(attempts - 1))


def deliver(
    url: str,
    payload: dict,
    *,
    secret: str | None,
    timeout: float = 5.0,
    retries: int = 3,
    backoff: float = 0.5,
    allow_private: bool = False,
    allowed_hosts: frozenset[str] = frozenset(),
    event: str | None = None,
) -> bool:
    """POST `payload` as JSON to `url`, signed when `secret` is given; True once the receiver answers 2xx.

    `event` (default: `payload["event"]`, else "job.updated") goes in `X-Secateurs-Event`. The URL is checked
    again before every attempt and the request pinned to the checked address; at most `1 + retries` attempts, each
    cut off `timeout` seconds (wall clock) after it starts, `backoff * 2**n` seconds between attempts: the call
    returns after about `delivery_budget(timeout, 1 + retries, backoff)` seconds at most (plus the DNS lookups).
    Blocking: call it from a thread without a running event loop. Never raises: every failure is logged and
    returns False.
    """
    try:
        body = _encode(payload)
        name = event or (payload.get("event") if isinstance(payload.get("event"), str) else None) or DEFAULT_EVENT
        return asyncio.run(
            _deliver(
                url,
                body,
                name,
                secret=secret,
                timeout=float(timeout),
                retries=retries,
                backoff=backoff,
                allow_private=allow_private,
                allowed_hosts=allowed_hosts,
            )
        )
    except Exception:  # a webhook must never break the job that sends it
        log.exception("webhook to %s could not be sent", _for_log(url))
    return False


async def _deliver(
    url: str,
    body: bytes,
    name: str,
    *,
    secret: str | None,
    timeout: float,
    retries: int,
    backoff: float,
    allow_private: bool,
    allowed_hosts: frozenset[str],
) -> bool:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: name,
        DELIVERY_HEADER: uuid.uuid4().hex,
    }
    attempts = 1 + max(0, int(retries))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False) as client:
        for n in range(attempts):
            if secret is not None:
                headers[SIGNATURE_HEADER] = sign(secret, body)  # a fresh timestamp per attempt
            delivered, retry, outcome = await _attempt(
                client, url, body, headers, deadline_s=timeout, allow_private=allow_private, allowed_hosts=allowed_hosts
            )
            if delivered:
                log.info("webhook %s delivered to %s (attempt %d): %s", name, _for_log(url), n + 1, outcome)
                return True
            log.warning(
                "webhook %s to %s failed (attempt %d of %d): %s",
                name,
                _for_log(url),
                n + 1,
                attempts,
                outcome.replace(url, _for_log(url)),
            )
            if not retry or n + 1 == attempts:
                return False
            await asyncio.sleep(min(MAX_BACKOFF_S, max(0.0, backoff) * 2**n))
    return False

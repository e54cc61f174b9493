"""Signed webhooks with bounded retries, and the URL checks that keep them from reaching internal services (SSRF).

    validate_webhook_url(url)                  -> url, or ValueError naming the URL and the reason
    deliver(url, payload, secret=...)          -> True when the receiver answered 2xx; never raises
    delivery_budget(timeout, attempts, backoff) -> the most seconds one delivery can take

**Which URLs are refused.** Only http and https, no credentials (`user:pass@`), a port in 1..65535 and a plain
host name or IP literal. The host is resolved with `socket.getaddrinfo` and *every* address it resolves to is
checked: loopback, private, link-local (which includes the cloud metadata address 169.254.169.254), multicast,
reserved, unspecified and anything else `ipaddress` does not call globally routable (100.64.0.0/10, benchmark and
documentation ranges) is refused, and so is an IPv6 address that embeds such an IPv4 address (IPv4-mapped
`::ffff:a.b.c.d`, IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4, Teredo). Numeric spellings such as `2130706433`,
`0x7f000001` or `127.1` resolve to 127.0.0.1 and are refused by the same check. `allow_private=True` (a trusted,
single-tenant deployment) or naming the host in `allowed_hosts` lifts the address check for that URL; the scheme,
credential and port checks always apply. The URL is parsed once, by httpx, for both the check and the request, so
the two can never disagree about which host is meant.

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
second). `deliver` blocks for that long: call it from a sender thread (workers/webhooks.py), never from a worker
loop or an event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Secateurs-Signature"
EVENT_HEADER = "X-Secateurs-Event"
DELIVERY_HEADER = "X-Secateurs-Delivery"
DEFAULT_EVENT = "job.updated"
USER_AGENT = "secateurs-webhook/1"
MAX_BACKOFF_S = 30.0

_SCHEMES = frozenset({"http", "https"})
_HOST_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")  # an ASCII (IDNA-encoded) name or an IPv4 literal
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- address policy ----------------------------------------------------------------------------------------------

# (reason, test) in the order the reason is reported; the first that matches names the refusal.
_REFUSED: tuple[tuple[str, object], ...] = (
    ("unspecified", lambda ip: ip.is_unspecified),
    ("loopback", lambda ip: ip.is_loopback),
    ("link-local", lambda ip: ip.is_link_local),
    ("multicast", lambda ip: ip.is_multicast),
    ("reserved", lambda ip: ip.is_reserved),
    ("private", lambda ip: ip.is_private),
    ("not globally routable", lambda ip: not ip.is_global),
)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client address; the server address is a public relay
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # ::/128 and ::1 are checked as IPv6
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why webhooks may not go to `ip` by default ("loopback", "private", ...), or None when it is public."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        reason = address_refusal(embedded)
        if reason is not None:
            return f"{reason} (IPv4 {embedded} embedded in IPv6)"
    for reason, test in _REFUSED:
        if test(ip):
            return reason
    return None


# -- URL checks --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """A checked URL: the parsed URL, its port and the addresses it may be delivered to, in resolver order."""

    url: httpx.URL
    port: int
    addresses: tuple[str, ...]


class _ResolveError(Exception):
    """The host did not resolve (possibly transient: delivery retries it)."""


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


def _parse(url: str) -> tuple[httpx.URL, str, int]:
    """Parse and check the URL's form; returns (url, ASCII host, port). Raises ValueError naming the URL."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"webhook URL {url!r} is empty")
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError) as e:
        raise ValueError(f"webhook URL {url!r} is not a valid URL: {e}") from None
    if parsed.scheme not in _SCHEMES:
        raise ValueError(f"webhook URL {url!r}: scheme {parsed.scheme or '(none)'!r} is not allowed (http or https)")
    if parsed.userinfo:
        raise ValueError(f"webhook URL {url!r}: credentials in the URL are not allowed (use the signing secret)")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise ValueError(f"webhook URL {url!r} has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_CHARS.fullmatch(host):
            raise ValueError(f"webhook URL {url!r}: host {host!r} is not a valid host name") from None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise ValueError(f"webhook URL {url!r}: port {port} is outside 1..65535")
    return parsed, host, port


def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, without scope ids, deduplicated in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise _ResolveError(str(e)) from None
    addresses = list(dict.fromkeys(info[4][0].split("%", 1)[0] for info in infos))
    if not addresses:
        raise _ResolveError("no addresses")
    return addresses


def _check(url: str, allow_private: bool, allowed_hosts: Iterable[str]) -> _Target:
    parsed, host, port = _parse(url)
    try:
        addresses = _resolve(host, port)
    except _ResolveError as e:
        raise _ResolveError(f"webhook URL {url!r}: host {host!r} does not resolve ({e})") from None
    trusted = allow_private or _normal_host(host) in {_normal_host(h) for h in allowed_hosts}
    if not trusted:
        for address in addresses:
            reason = address_refusal(ipaddress.ip_address(address))
            if reason is not None:
                where = "is" if address == host else f"resolves to {address}, which is"
                raise ValueError(f"webhook URL {url!r}: host {host!r} {where} not public ({reason} address); "
                                 "webhooks may only go to public addresses")
    return _Target(url=parsed, port=port, addresses=tuple(addresses))


def validate_webhook_url(url: str, *, allow_private: bool = False,
                         allowed_hosts: frozenset[str] = frozenset()) -> str:
    """Check that a webhook may be sent to `url` (see the module docstring) and return it.

    Raises ValueError with a message that names the URL and the reason: a scheme other than http/https,
    credentials in the URL, a bad host or port, a host that does not resolve, or any resolved address that is
    not public (unless `allow_private` or the host is in `allowed_hosts`).
    """
    try:
        _check(url, allow_private, allowed_hosts)
    except _ResolveError as e:
        raise ValueError(str(e)) from None
    return url


# -- signing -----------------------------------------------------------------------------------------------------


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Secateurs-Signature` value for `body`: "t=<unix>,v1=<hex HMAC-SHA256 of f'{t}.{body}'>"."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, body)}"


def verify_signature(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0,
                     now: float | None = None) -> bool:
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


def _pinned_request(client: httpx.AsyncClient, target: _Target, address: str, body: bytes,
                    headers: dict[str, str]) -> httpx.Request:
    """A request to `address` that still names the original host in Host and (for https) SNI/certificate checks."""
    host = target.url.raw_host.decode("ascii")
    request_headers = {**headers, "Host": target.url.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if target.url.scheme == "https" else {}
    return client.build_request("POST", target.url.copy_with(host=address), content=body,
                                headers=request_headers, extensions=extensions)


async def _post(client: httpx.AsyncClient, target: _Target, body: bytes,
                headers: dict[str, str]) -> tuple[bool, bool, str]:
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


async def _attempt(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], *, deadline_s: float,
                   allow_private: bool, allowed_hosts: Iterable[str]) -> tuple[bool, bool, str]:
    """One attempt: re-check the URL, then POST within `deadline_s` seconds of wall-clock time.

    Returns (delivered, retry, what happened).
    """
    try:
        target = _check(url, allow_private, allowed_hosts)
    except _ResolveError as e:
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


def deliver(url: str, payload: dict, *, secret: str | None, timeout: float = 5.0, retries: int = 3,
            backoff: float = 0.5, allow_private: bool = False, allowed_hosts: frozenset[str] = frozenset(),
            event: str | None = None) -> bool:
    """POST `payload` as JSON to `url`, signed when `secret` is given; True once the receiver answers 2xx.

    `event` (default: `payload["event"]`, else "job.updated") goes in `X-Secateurs-Event`. The URL is checked
    again before every attempt and the request pinned to the checked address; at most `1 + retries` attempts, each
    cut off `timeout` seconds (wall clock) after it starts, `backoff * 2**n` seconds between attempts: the call
    returns after about `delivery_budget(timeout, 1 + retries, backoff)` seconds at most (plus the DNS lookups).
    Blocking: call it from a thread without a running event loop. Never raises: every failure is logged and returns False.
    """
    try:
        body = _encode(payload)
        name = event or (payload.get("event") if isinstance(payload.get("event"), str) else None) or DEFAULT_EVENT
        return asyncio.run(_deliver(url, body, name, secret=secret, timeout=float(timeout), retries=retries,
                                    backoff=backoff, allow_private=allow_private, allowed_hosts=allowed_hosts))
    except Exception:  # a webhook must never break the job that sends it
        log.exception("webhook to %s could not be sent", _for_log(url))
    return False


async def _deliver(url: str, body: bytes, name: str, *, secret: str | None, timeout: float, retries: int,
                   backoff: float, allow_private: bool, allowed_hosts: frozenset[str]) -> bool:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, EVENT_HEADER: name,
               DELIVERY_HEADER: uuid.uuid4().hex}
    attempts = 1 + max(0, int(retries))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False) as client:
        for n in range(attempts):
            if secret is not None:
                headers[SIGNATURE_HEADER] = sign(secret, body)  # a fresh timestamp per attempt
            delivered, retry, outcome = await _attempt(client, url, body, headers, deadline_s=timeout,
                                                       allow_private=allow_private, allowed_hosts=allowed_hosts)
            if delivered:
                log.info("webhook %s delivered to %s (attempt %d): %s", name, _for_log(url), n + 1, outcome)
                return True
            log.warning("webhook %s to %s failed (attempt %d of %d): %s", name, _for_log(url), n + 1,
                        attempts, outcome.replace(url, _for_log(url)))
            if not retry or n + 1 == attempts:
                return False
            await asyncio.sleep(min(MAX_BACKOFF_S, max(0.0, backoff) * 2**n))
    return False

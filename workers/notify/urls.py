"""Which URLs a webhook may go to: the checks that keep webhooks from reaching internal services (SSRF).

    validate_webhook_url(url)   -> url, or ValueError naming the URL and the reason (used at submit)
    check_url(url, ...)         -> the parsed URL and the checked addresses it may be delivered to (delivery.py,
                                   before every attempt)
    address_refusal(ip)         -> why webhooks may not go to `ip` ("loopback", ...), or None when it is public

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
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

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
class Target:
    """A checked URL: the parsed URL, its port and the addresses it may be delivered to, in resolver order."""

    url: httpx.URL
    port: int
    addresses: tuple[str, ...]


class ResolveError(Exception):
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
        raise ResolveError(str(e)) from None
    addresses = list(dict.fromkeys(info[4][0].split("%", 1)[0] for info in infos))
    if not addresses:
        raise ResolveError("no addresses")
    return addresses


def check_url(url: str, allow_private: bool, allowed_hosts: Iterable[str]) -> Target:
    """The checked target of `url`; ValueError when it is refused, ResolveError when its host does not resolve."""
    parsed, host, port = _parse(url)
    try:
        addresses = _resolve(host, port)
    except ResolveError as e:
        raise ResolveError(f"webhook URL {url!r}: host {host!r} does not resolve ({e})") from None
    trusted = allow_private or _normal_host(host) in {_normal_host(h) for h in allowed_hosts}
    if not trusted:
        for address in addresses:
            reason = address_refusal(ipaddress.ip_address(address))
            if reason is not None:
                where = "is" if address == host else f"resolves to {address}, which is"
                raise ValueError(
                    f"webhook URL {url!r}: host {host!r} {where} not public ({reason} address); "
                    "webhooks may only go to public addresses"
                )
    return Target(url=parsed, port=port, addresses=tuple(addresses))


def validate_webhook_url(url: str, *, allow_private: bool = False, allowed_hosts: frozenset[str] = frozenset()) -> str:
    """Check that a webhook may be sent to `url` (see the module docstring) and return it.

    Raises ValueError with a message that names the URL and the reason: a scheme other than http/https,
    credentials in the URL, a bad host or port, a host that does not resolve, or any resolved address that is
    not public (unless `allow_private` or the host is in `allowed_hosts`).
    """
    try:
        check_url(url, allow_private, allowed_hosts)
    except ResolveError as e:
        raise ValueError(str(e)) from None
    return url

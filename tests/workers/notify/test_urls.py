"""Which URLs a webhook may go to (SSRF): schemes, credentials, hosts and ports, and every resolved address checked.

Public addresses appear only in validation, where nothing is sent; names that must resolve to a chosen address use a
resolver patched in the test (`fake_dns`).
"""

from __future__ import annotations

import socket

import pytest

from tests.workers.notify import PUBLIC_V4, PUBLIC_V6
from workers.notify.urls import validate_webhook_url

# -- validation --------------------------------------------------------------------------------------------------

REFUSED_BY_DEFAULT = {
    "http://127.0.0.1/hook": "loopback",
    "http://localhost:8080/hook": "loopback",
    "http://10.1.2.3/hook": "private",
    "http://192.168.0.10/hook": "private",
    "http://172.16.5.4/hook": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://[::1]/hook": "loopback",
    "http://[::ffff:127.0.0.1]/hook": "loopback",
    "http://[::ffff:169.254.169.254]/": "link-local",
    "http://0.0.0.0/hook": "unspecified",
    "http://[::]/hook": "unspecified",
    "http://224.0.0.1/hook": "multicast",
    "http://240.0.0.1/hook": "reserved",
    "http://[fe80::1]/hook": "link-local",
    "http://[fd00::1]/hook": "private",
    "http://100.64.0.1/hook": "not globally routable",
    "http://2130706433/hook": "loopback",  # decimal spelling of 127.0.0.1
    "http://0x7f000001/hook": "loopback",  # hex spelling
    "http://127.1/hook": "loopback",  # short spelling
    "http://[2002:7f00:1::1]/hook": "loopback",  # 6to4 wrapping 127.0.0.1
    "http://[64:ff9b::a00:1]/hook": "private",  # NAT64 wrapping 10.0.0.1
}


@pytest.mark.parametrize("url,reason", REFUSED_BY_DEFAULT.items(), ids=list(REFUSED_BY_DEFAULT))
def test_non_public_addresses_are_refused_by_default_naming_url_and_reason(url, reason):
    with pytest.raises(ValueError) as info:
        validate_webhook_url(url)
    assert url in str(info.value)
    assert f"({reason}" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
    ],
)
def test_allow_private_accepts_non_public_addresses(url):
    assert validate_webhook_url(url, allow_private=True) == url


BAD_FORM = {
    "ftp://example.com/hook": "scheme 'ftp'",
    "file:///etc/passwd": "scheme 'file'",
    "gopher://example.com/": "scheme 'gopher'",
    "example.com/hook": "scheme",
    "https://user:secret@example.com/hook": "credentials",
    "https://token@example.com/hook": "credentials",
    "http:///hook": "no host",
    "http://example.com:99999/hook": "port 99999",
    "http://exa mple.com/hook": "not a valid host name",
    "": "empty",
}


@pytest.mark.parametrize("url,reason", BAD_FORM.items(), ids=list(BAD_FORM))
def test_bad_schemes_credentials_hosts_and_ports_are_refused_even_when_private_is_allowed(url, reason, fake_dns):
    fake_dns["example.com"] = [PUBLIC_V4]
    with pytest.raises(ValueError) as info:
        validate_webhook_url(url, allow_private=True, allowed_hosts=frozenset({"example.com"}))
    assert reason in str(info.value)
    assert repr(url) in str(info.value)
    assert fake_dns.calls == []  # refused before any lookup


def test_hostname_resolving_to_loopback_is_refused(fake_dns):
    fake_dns["evil.example"] = ["127.0.0.1"]
    with pytest.raises(ValueError, match=r"'evil.example' resolves to 127.0.0.1, which is not public \(loopback"):
        validate_webhook_url("https://evil.example/hook")


def test_every_resolved_address_is_checked_not_just_the_first(fake_dns):
    fake_dns["mixed.example"] = [PUBLIC_V4, PUBLIC_V6, "10.0.0.7"]
    with pytest.raises(ValueError, match=r"resolves to 10.0.0.7, which is not public \(private"):
        validate_webhook_url("https://mixed.example/hook")


def test_hostname_resolving_to_metadata_address_is_refused(fake_dns):
    fake_dns["metadata.example"] = ["169.254.169.254"]
    with pytest.raises(ValueError, match="link-local"):
        validate_webhook_url("http://metadata.example/")


def test_public_addresses_and_names_are_accepted(fake_dns):
    fake_dns["hooks.example.com"] = [PUBLIC_V4, PUBLIC_V6]
    for url in (f"http://{PUBLIC_V4}/x", f"https://[{PUBLIC_V6}]:8443/x", "https://hooks.example.com/x?token=1"):
        assert validate_webhook_url(url) == url


def test_unresolvable_host_is_refused_naming_it(fake_dns):
    fake_dns["nowhere.example"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(ValueError, match="'nowhere.example' does not resolve"):
        validate_webhook_url("https://nowhere.example/hook")


def test_allowed_hosts_lifts_the_address_check_for_that_host_only(fake_dns):
    fake_dns["receiver.internal"] = ["10.0.0.5"]
    fake_dns["other.internal"] = ["10.0.0.6"]
    allowed = frozenset({"Receiver.Internal."})  # compared case-insensitively, trailing dot ignored
    assert validate_webhook_url("http://receiver.internal/x", allowed_hosts=allowed) == "http://receiver.internal/x"
    with pytest.raises(ValueError, match="other.internal"):
        validate_webhook_url("http://other.internal/x", allowed_hosts=allowed)
    with pytest.raises(ValueError, match="loopback"):
        validate_webhook_url("http://127.0.0.1/x", allowed_hosts=allowed)

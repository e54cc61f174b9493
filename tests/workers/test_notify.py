"""Webhooks: URL checks against SSRF, DNS-rebinding pinning, signatures, retries and no redirects.

Traffic only ever goes to a real HTTP server on 127.0.0.1 (delivery with allow_private=True or an allowed host).
Public addresses appear only in validation, where nothing is sent; names that must resolve to a chosen address
use a resolver patched in the test (`fake_dns`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.workers.receivers import TrickleReceiver
from workers import notify
from workers.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    deliver,
    sign,
    validate_webhook_url,
    verify_signature,
)

PUBLIC_V4 = "93.184.216.34"  # only ever validated, never contacted
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
FAST = dict(timeout=2.0, backoff=0.01)


# -- a real receiver -------------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread; answers POSTs with the next scripted status and records them."""

    def __init__(self, statuses=(200,), headers=None, delay_s: float = 0.0):
        self.statuses = list(statuses)
        self.extra_headers = headers or {}
        self.delay_s = delay_s
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                try:
                    self.send_response(status)
                    for k, v in outer.extra_headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def url(self, path="/hook", host="127.0.0.1"):
        return f"http://{host}:{self.port}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_dns(monkeypatch):
    """Make chosen names resolve to chosen addresses (a list, or a function of the call number); others resolve
    for real. Returns the table and records every lookup of a chosen name in `table.calls`."""
    real = socket.getaddrinfo

    class Table(dict):
        def __init__(self):
            super().__init__()
            self.calls: list[str] = []

    table = Table()

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            table.calls.append(host)
            answer = table[host]
            addresses = answer(len(table.calls)) if callable(answer) else answer
            if isinstance(addresses, Exception):
                raise addresses
            out = []
            for a in addresses:
                if ":" in a:
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port or 0, 0, 0)))
                else:
                    out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0)))
            return out
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


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


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.0.0.1/x",
                                 "http://169.254.169.254/", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x"])
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


# -- signatures --------------------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body_and_verifies():
    body = b'{"event":"job.succeeded","job_id":"j1"}'
    header = sign("s3cret", body, timestamp=1_700_000_000)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature("s3cret", header, body, now=1_700_000_010)
    assert not verify_signature("wrong", header, body, now=1_700_000_010)
    assert not verify_signature("s3cret", header, body + b" ", now=1_700_000_010)
    assert not verify_signature("s3cret", header, body, now=1_700_000_000 + 301)  # too old: replay
    assert not verify_signature("s3cret", "garbage", body)


# -- delivery ----------------------------------------------------------------------------------------------------


def test_signed_payload_reaches_a_local_receiver_when_private_is_allowed():
    payload = {"event": "job.succeeded", "job_id": "abc", "status": "succeeded"}
    with Receiver() as rx:
        assert deliver(rx.url(), payload, secret="topsecret", allow_private=True, **FAST) is True
    assert len(rx.requests) == 1
    req = rx.requests[0]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert req["path"] == "/hook"
    assert json.loads(req["body"]) == payload
    assert headers["content-type"] == "application/json"
    assert headers[EVENT_HEADER.lower()] == "job.succeeded"
    assert headers[DELIVERY_HEADER.lower()]
    sig = headers[SIGNATURE_HEADER.lower()]
    t = int(sig.split(",")[0].removeprefix("t="))
    assert abs(t - time.time()) < 60
    expected = hmac.new(b"topsecret", f"{t}.".encode() + req["body"], hashlib.sha256).hexdigest()
    assert sig == f"t={t},v1={expected}"
    assert verify_signature("topsecret", sig, req["body"])


def test_without_a_secret_no_signature_header_is_sent_and_event_can_be_named():
    with Receiver() as rx:
        assert deliver(rx.url(), {"job_id": "x"}, secret=None, allow_private=True, event="job.failed", **FAST)
    headers = {k.lower(): v for k, v in rx.requests[0]["headers"].items()}
    assert SIGNATURE_HEADER.lower() not in headers
    assert headers[EVENT_HEADER.lower()] == "job.failed"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_default_settings_refuse_delivery_to_loopback_and_send_nothing(host):
    with Receiver() as rx:
        assert deliver(rx.url(host=host), {"event": "x"}, secret="s", **FAST) is False
    assert rx.requests == []


def test_retries_on_500_then_succeeds_with_one_delivery_id():
    with Receiver(statuses=[500, 503, 200]) as rx:
        assert deliver(rx.url(), {"n": 1}, secret="s", retries=3, allow_private=True, **FAST) is True
    assert len(rx.requests) == 3
    ids = {r["headers"][DELIVERY_HEADER] for r in rx.requests}
    assert len(ids) == 1
    assert all(verify_signature("s", r["headers"][SIGNATURE_HEADER], r["body"]) for r in rx.requests)


def test_retries_are_bounded_and_back_off():
    with Receiver(statuses=[500]) as rx:
        start = time.monotonic()
        assert deliver(rx.url(), {"n": 1}, secret=None, retries=2, backoff=0.1, timeout=2.0,
                       allow_private=True) is False
        elapsed = time.monotonic() - start
    assert len(rx.requests) == 3  # the first attempt + 2 retries
    assert elapsed >= 0.1 + 0.2  # backoff * 2**n between attempts


def test_429_is_retried_but_other_client_errors_are_not():
    with Receiver(statuses=[429, 200]) as rx:
        assert deliver(rx.url(), {}, secret=None, retries=2, allow_private=True, **FAST) is True
    assert len(rx.requests) == 2
    with Receiver(statuses=[400]) as rx:
        assert deliver(rx.url(), {}, secret=None, retries=3, allow_private=True, **FAST) is False
    assert len(rx.requests) == 1


def test_redirects_are_not_followed_and_count_as_failure():
    with Receiver(statuses=[200]) as target:
        with Receiver(statuses=[302], headers={"Location": target.url("/stolen")}) as rx:
            assert deliver(rx.url(), {"n": 1}, secret="s", retries=3, allow_private=True, **FAST) is False
    assert len(rx.requests) == 1  # a redirect is not retried either
    assert target.requests == []


def test_connection_errors_are_retried_and_return_false():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    start = time.monotonic()
    assert deliver(f"http://127.0.0.1:{port}/x", {}, secret="s", retries=2, backoff=0.05, timeout=1.0,
                   allow_private=True) is False
    assert time.monotonic() - start >= 0.05 + 0.1  # it waited between the attempts


def test_slow_receiver_times_out_and_returns_false():
    with Receiver(statuses=[200], delay_s=1.0) as rx:
        start = time.monotonic()
        assert deliver(rx.url(), {}, secret=None, retries=0, timeout=0.2, allow_private=True) is False
        assert time.monotonic() - start < 0.9
    assert len(rx.requests) == 1


@pytest.fixture
def trickle():
    rx = TrickleReceiver()
    yield rx
    rx.close()


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_deadline_of_each_attempt(trickle):
    """The answer would take 0.25 s x 90 bytes = 22 s per attempt, each read arriving well within the timeout; the
    deadline covers the whole attempt, so two attempts of 1 s end in about 2 s."""
    start = time.monotonic()
    assert deliver(trickle.url(), {"a": 1}, secret="s", timeout=1.0, retries=1, backoff=0.05,
                   allow_private=True) is False
    took = time.monotonic() - start
    assert took < notify.delivery_budget(1.0, 2, 0.05) + 1.0
    assert took >= 2 * 1.0  # both attempts ran to their deadline
    assert trickle.connections == 2


def test_delivery_budget_is_every_attempt_deadline_plus_the_capped_pauses():
    assert notify.delivery_budget(5.0, 3, 0.5) == 5.0 * 3 + 0.5 + 1.0
    assert notify.delivery_budget(2.0, 1, 0.5) == 2.0
    assert notify.delivery_budget(1.0, 3, 100.0) == 3.0 + 2 * notify.MAX_BACKOFF_S


@pytest.mark.parametrize("url,payload", [
    ("not a url", {"a": 1}),
    ("ftp://127.0.0.1/x", {"a": 1}),
    ("http://127.0.0.1:1/x", {"unserializable": object()}),
    ("http://127.0.0.1:1/x", {"nan": float("nan")}),
])
def test_deliver_never_raises(url, payload):
    assert deliver(url, payload, secret="s", retries=1, allow_private=True, **FAST) is False


# -- DNS rebinding -----------------------------------------------------------------------------------------------


def test_delivery_connects_to_the_checked_address_with_the_original_host_header(fake_dns):
    """The name resolves once per attempt (by our check); httpx gets the IP, so a second lookup never happens."""
    answers = {1: ["127.0.0.1"]}
    fake_dns["hooks.test"] = lambda n: answers.get(n, socket.gaierror(socket.EAI_NONAME, "second lookup"))
    with Receiver() as rx:
        ok = deliver(f"http://hooks.test:{rx.port}/hook", {"a": 1}, secret="s",
                     allowed_hosts=frozenset({"hooks.test"}), **FAST)
    assert ok is True
    assert fake_dns.calls == ["hooks.test"]
    assert rx.requests[0]["headers"]["Host"] == f"hooks.test:{rx.port}"


def test_rebinding_to_loopback_after_validation_is_refused_at_delivery(fake_dns):
    # First lookup (at submit) answers a public address; every later one (at delivery) answers loopback.
    fake_dns["rebind.test"] = lambda n: [PUBLIC_V4] if n == 1 else ["127.0.0.1"]
    with Receiver() as rx:
        url = f"http://rebind.test:{rx.port}/hook"
        assert validate_webhook_url(url) == url
        assert deliver(url, {"a": 1}, secret="s", retries=2, **FAST) is False
    assert rx.requests == []
    assert fake_dns.calls == ["rebind.test", "rebind.test"]  # a policy refusal is not retried


def test_each_attempt_resolves_and_checks_again_and_lookup_failures_are_retried(fake_dns):
    # Attempt 1 reaches the receiver (500), attempt 2's lookup fails (transient), attempt 3 succeeds.
    fake_dns["flip.test"] = lambda n: socket.gaierror(socket.EAI_AGAIN, "try again") if n == 2 else ["127.0.0.1"]
    with Receiver(statuses=[500, 200]) as rx:
        ok = deliver(f"http://flip.test:{rx.port}/hook", {}, secret=None, retries=3,
                     allowed_hosts=frozenset({"flip.test"}), **FAST)
    assert ok is True
    assert len(rx.requests) == 2
    assert fake_dns.calls == ["flip.test"] * 3  # one lookup per attempt, none by the HTTP client


def test_https_request_carries_the_original_name_for_sni(monkeypatch, fake_dns):
    """For https the pinned request names the host for SNI/certificate checks; checked without any network."""
    fake_dns["secure.example"] = [PUBLIC_V4]
    import httpx

    target = notify._check("https://secure.example:8443/hook?x=1", False, frozenset())
    with httpx.Client() as client:
        request = notify._pinned_request(client, target, target.addresses[0], b"{}", {})
    assert request.url.host == PUBLIC_V4
    assert request.url.port == 8443
    assert request.url.raw_path == b"/hook?x=1"
    assert request.headers["Host"] == "secure.example:8443"
    assert request.extensions["sni_hostname"] == "secure.example"


def test_logs_leave_out_query_tokens_and_credentials(caplog):
    with Receiver(statuses=[500]) as rx:
        with caplog.at_level("INFO", logger="workers.notify"):
            deliver(rx.url("/hook?token=SUPERSECRET"), {}, secret=None, retries=1, allow_private=True, **FAST)
            deliver(f"http://user:PASSWORD@127.0.0.1:{rx.port}/x", {}, secret=None, retries=0, **FAST)
    assert "webhook" in caplog.text and "/hook" in caplog.text
    assert "SUPERSECRET" not in caplog.text
    assert "PASSWORD" not in caplog.text

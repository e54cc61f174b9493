"""Webhook delivery: signatures, bounded retries, deadlines, no redirects, and DNS-rebinding pinning.

Traffic only ever goes to a real HTTP server on 127.0.0.1 (delivery with allow_private=True or an allowed host);
names that must resolve to a chosen address use a resolver patched in the test (`fake_dns`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time

import pytest

from tests.workers.notify import PUBLIC_V4
from tests.workers.receivers import Receiver, TrickleReceiver
from workers.notify import delivery
from workers.notify.delivery import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    deliver,
    sign,
    verify_signature,
)
from workers.notify.urls import check_url, validate_webhook_url

FAST = dict(timeout=2.0, backoff=0.01)


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
        assert (
            deliver(rx.url(), {"n": 1}, secret=None, retries=2, backoff=0.1, timeout=2.0, allow_private=True) is False
        )
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
    assert (
        deliver(f"http://127.0.0.1:{port}/x", {}, secret="s", retries=2, backoff=0.05, timeout=1.0, allow_private=True)
        is False
    )
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
    assert (
        deliver(trickle.url(), {"a": 1}, secret="s", timeout=1.0, retries=1, backoff=0.05, allow_private=True) is False
    )
    took = time.monotonic() - start
    assert took < delivery.delivery_budget(1.0, 2, 0.05) + 1.0
    assert took >= 2 * 1.0  # both attempts ran to their deadline
    assert trickle.connections == 2


def test_delivery_budget_is_every_attempt_deadline_plus_the_capped_pauses():
    assert delivery.delivery_budget(5.0, 3, 0.5) == 5.0 * 3 + 0.5 + 1.0
    assert delivery.delivery_budget(2.0, 1, 0.5) == 2.0
    assert delivery.delivery_budget(1.0, 3, 100.0) == 3.0 + 2 * delivery.MAX_BACKOFF_S


@pytest.mark.parametrize(
    "url,payload",
    [
        ("not a url", {"a": 1}),
        ("ftp://127.0.0.1/x", {"a": 1}),
        ("http://127.0.0.1:1/x", {"unserializable": object()}),
        ("http://127.0.0.1:1/x", {"nan": float("nan")}),
    ],
)
def test_deliver_never_raises(url, payload):
    assert deliver(url, payload, secret="s", retries=1, allow_private=True, **FAST) is False


# -- DNS rebinding -----------------------------------------------------------------------------------------------


def test_delivery_connects_to_the_checked_address_with_the_original_host_header(fake_dns):
    """The name resolves once per attempt (by our check); httpx gets the IP, so a second lookup never happens."""
    answers = {1: ["127.0.0.1"]}
    fake_dns["hooks.test"] = lambda n: answers.get(n, socket.gaierror(socket.EAI_NONAME, "second lookup"))
    with Receiver() as rx:
        ok = deliver(
            f"http://hooks.test:{rx.port}/hook", {"a": 1}, secret="s", allowed_hosts=frozenset({"hooks.test"}), **FAST
        )
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
        ok = deliver(
            f"http://flip.test:{rx.port}/hook",
            {},
            secret=None,
            retries=3,
            allowed_hosts=frozenset({"flip.test"}),
            **FAST,
        )
    assert ok is True
    assert len(rx.requests) == 2
    assert fake_dns.calls == ["flip.test"] * 3  # one lookup per attempt, none by the HTTP client


def test_https_request_carries_the_original_name_for_sni(monkeypatch, fake_dns):
    """For https the pinned request names the host for SNI/certificate checks; checked without any network."""
    fake_dns["secure.example"] = [PUBLIC_V4]
    import httpx

    target = check_url("https://secure.example:8443/hook?x=1", False, frozenset())
    with httpx.Client() as client:
        request = delivery._pinned_request(client, target, target.addresses[0], b"{}", {})
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

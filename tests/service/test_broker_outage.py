"""A Celery API whose broker (the local Redis, behind a TCP proxy that refuses connections while down) has never been
reached: submits still answer 202 at once, /readyz is 503 and names the broker, and the saved jobs are sent as soon
as the broker can be reached."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.servers import TcpProxy, redis_space
from tests.helpers import wait_for
from tests.service.conftest import Server, submit
from tests.workers.jobfiles import QUICK_SPEC

PUBLISH_TIMEOUT = 10.0


@pytest.mark.services
def test_submits_answer_at_once_while_the_broker_is_unreachable_and_readyz_names_it(tmp_path, job_files):
    with redis_space() as redis:
        host_port, db = redis.url.removeprefix("redis://").split("/")
        proxy = TcpProxy("127.0.0.1", int(host_port.rsplit(":", 1)[1]))  # down: connections are refused
        api = Server(
            tmp_path / "data",
            workers=0,
            env={
                "SECATEURS_WORKER__DISPATCHER": "celery",
                "SECATEURS_CELERY__BROKER_URL": f"redis://127.0.0.1:{proxy.port}/{db}",
                "SECATEURS_CELERY__KEY_PREFIX": redis.prefix,
                "SECATEURS_CELERY__QUEUE": "jobs",
                "SECATEURS_CELERY__REDISPATCH_INTERVAL": "0.5",
                "SECATEURS_CELERY__PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT),
            },
        )
        api.start(ready="/healthz")  # /readyz stays 503 while the broker is unreachable
        try:
            with api.client() as c:
                ready = c.get("/readyz")
                assert ready.status_code == 503 and "broker" in ready.json()["detail"], ready.text
                wait_for(lambda: "never reached" in c.get("/readyz").json()["detail"], 30.0)  # the first check failed

                answers: dict[int, tuple[float, httpx.Response]] = {}

                def one(i: int) -> None:
                    with api.client() as own:
                        started = time.monotonic()
                        r = submit(own, job_files, QUICK_SPEC)
                        answers[i] = (time.monotonic() - started, r)

                threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                assert [r.status_code for _, r in answers.values()] == [202] * 3, [r.text for _, r in answers.values()]
                took = sorted(s for s, _ in answers.values())
                # Before: one broker timeout after another (10, 20 and 30 s). Half a timeout leaves room for a loaded
                # machine (the three uploads themselves took up to 1.7 s on CI) without hiding one timeout.
                assert took[-1] < PUBLISH_TIMEOUT / 2, took
                ids = {r.json()["id"] for _, r in answers.values()}
                assert redis.queued_messages("jobs") == []
                not_ready = c.get("/readyz")
                assert not_ready.status_code == 503, not_ready.text
                assert not_ready.json()["detail"].startswith("not ready: broker (never reached: ")

                proxy.up()
                messages = wait_for(
                    lambda: len(redis.queued_messages("jobs")) == 3 and redis.queued_messages("jobs"), 30.0
                )
                assert {m["args"][0] for m in messages} == ids
                wait_for(lambda: c.get("/readyz").status_code == 200, 30.0)
                ready = c.get("/readyz")
                assert ready.json()["checks"]["broker"] == "ok"
                assert ready.json()["checks"]["dispatcher"]["pending"] == 0
        finally:
            api.stop()
            proxy.down()

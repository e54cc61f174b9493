"""Real servers for the scale-out tests: a moto S3 server in a subprocess, the local Redis (a dedicated database
and key prefix, cleaned up) and a TCP proxy that can take a server "down" and bring it back.

Redis and PostgreSQL are the local servers (127.0.0.1:6379, 127.0.0.1:5432). Under CI=true an unreachable one is a
test failure; elsewhere the test is skipped with the reason (as in tests/workers/pg.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from workers.testing.servers import free_port, wait_until_up

REDIS_URL = os.environ.get("SECATEURS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def unreachable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (required under CI=true)")
    pytest.skip(message)


@dataclass(frozen=True)
class RedisSpace:
    """A Redis database number and a key prefix owned by one test; every key under the prefix is removed after."""

    url: str
    prefix: str

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def queued_messages(self, queue: str) -> list[dict]:
        """The Celery messages waiting in `queue` (kombu's Redis list), decoded, oldest (next delivered) first."""
        import base64
        import json

        out = []
        for raw in reversed(self.client().lrange(f"{self.prefix}{queue}", 0, -1)):  # LPUSH in, BRPOP out
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            out.append({"task": message["headers"]["task"], "args": body[0], "kwargs": body[1]})
        return out


@contextmanager
def redis_space(url: str = REDIS_URL) -> Iterator[RedisSpace]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        unreachable(f"Redis is not reachable at {url}: {e}")
    space = RedisSpace(url=url, prefix=f"secateurs-test-{uuid.uuid4().hex[:10]}:")
    try:
        yield space
    finally:
        keys = list(client.scan_iter(match=f"{space.prefix}*", count=1000))
        # kombu keeps a few keys outside the global prefix (the bindings set of the default exchange)
        keys += [k for k in client.scan_iter(match="_kombu.binding.*", count=1000) if space.prefix.encode() in k]
        if keys:
            client.delete(*keys)
        client.close()


class MotoServer:
    """`python -m moto.server` on a free 127.0.0.1 port: a real S3-compatible HTTP server."""

    def __init__(self):
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> MotoServer:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            unreachable("moto[server] is not installed (pip install -e '.[test]')")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until_up(f"{self.endpoint_url}/moto-api/", self.proc, timeout, status=None)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """SECATEURS_* variables that point the artifact store at this server."""
        return {
            "SECATEURS_ARTIFACTS__URL": f"s3://{bucket}/{prefix}".rstrip("/"),
            "SECATEURS_ARTIFACTS__S3__ENDPOINT_URL": self.endpoint_url,
            "SECATEURS_ARTIFACTS__S3__REGION": "us-east-1",
            "SECATEURS_ARTIFACTS__S3__ACCESS_KEY_ID": "testing",
            "SECATEURS_ARTIFACTS__S3__SECRET_ACCESS_KEY": "testing",
        }


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target while up; while down, connections are refused. Used to make a real
    server unreachable for a while and bring it back without touching the server."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress (close alone would not)
            except OSError:
                pass
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

"""A real HTTP reverse proxy (a thread on 127.0.0.1) in front of a real `secateurs serve`, for the client's retry
tests: it forwards every request unchanged, except that a test can make the next few matching requests

* `503`      answer 503 problem+json with a Retry-After, without forwarding (the service's own 503 shape),
* `drop`     forward the request (the server acts on it), then close the connection without an answer,
* `corrupt`  forward it and answer with one byte of the body flipped (headers, checksum included, unchanged).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
    "host",
}


@dataclass
class _Fault:
    method: str
    path: str  # exact, query aside
    mode: str
    times: int
    retry_after: str = "1"


class FlakyProxy:
    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.faults: list[_Fault] = []
        self.log: list[tuple[str, str, str]] = []  # (method, path, what the proxy did)
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=self.target, timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def fail(self, method: str, path: str, mode: str, times: int = 1, retry_after: str = "1") -> None:
        with self._lock:
            self.faults.append(_Fault(method, path, mode, times, retry_after))

    def outcomes(self, method: str, path: str) -> list[str]:
        """What the proxy did with each request to exactly this path (query aside), in order."""
        return [what for m, p, what in self.log if m == method and p.split("?")[0] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    def _fault_for(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method == method and path == f.path and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    return body
                body += h.rfile.read(size)
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        body = self._read_body(h)
        fault = self._fault_for(method, path.split("?")[0])
        if fault is not None and fault.mode == "503":
            self.log.append((method, path, "503"))
            payload = json.dumps(
                {
                    "type": "urn:secateurs:problem:unavailable",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": "injected by the test proxy",
                    "code": "unavailable",
                }
            )
            h.send_response(503)
            h.send_header("Content-Type", "application/problem+json")
            h.send_header("Retry-After", fault.retry_after)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload.encode())
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        req = self._upstream.build_request(method, path, headers=headers, content=body)
        resp = self._upstream.send(req, stream=True)
        try:
            if fault is not None and fault.mode == "drop":
                resp.read()  # the server has done the work; the client never hears of it
                self.log.append((method, path, "drop"))
                h.close_connection = True
                h.connection.shutdown(2)
                return
            self.log.append((method, path, fault.mode if fault else "forwarded"))
            h.send_response(resp.status_code)
            for k, v in resp.headers.multi_items():
                if k.lower() not in _HOP:
                    h.send_header(k, v)
            length = resp.headers.get("Content-Length")
            if length is not None:
                h.send_header("Content-Length", length)
            else:  # a stream (SSE): delimited by closing the connection
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            first = True
            for chunk in resp.iter_raw():
                if first and chunk and fault is not None and fault.mode == "corrupt":
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                first = first and not chunk
                h.wfile.write(chunk)
                h.wfile.flush()
        except OSError:
            h.close_connection = True
        finally:
            resp.close()

"""A webhook receiver that answers too slowly for any per-read timeout to notice (tests of the delivery deadline)."""

from __future__ import annotations

import socket
import threading


class TrickleReceiver:
    """A raw TCP server on 127.0.0.1 that reads a request, then answers one byte every `interval_s` seconds: each
    read of the client gets a byte well within any per-read timeout, so only a whole-request deadline ends it."""

    ANSWER = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 60 + b"\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.connections = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request (headers and the small body)
                for i in range(len(self.ANSWER)):
                    if self.stopped.wait(self.interval_s):
                        return
                    conn.sendall(self.ANSWER[i:i + 1])
            except OSError:
                return  # the client gave up

    def close(self) -> None:
        self.stopped.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

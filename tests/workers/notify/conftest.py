"""A resolver patched in the test, so that names resolve to chosen addresses without a DNS server."""

from __future__ import annotations

import socket

import pytest


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

"""The Python client's errors (`workers.client` exports them): every one derives from `ClientError`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """Root of the client's errors."""


class ApiError(ClientError):
    """The server answered an error: its RFC 9457 problem document, with the first field at fault."""

    def __init__(self, status: int, problem: Mapping[str, Any] | None = None, *, text: str = ""):
        self.status = status
        self.problem = dict(problem or {})
        self.code: str = self.problem.get("code") or "http_error"
        self.detail: str = self.problem.get("detail") or text.strip()[:500] or f"HTTP {status}"
        self.errors: list[dict] = list(self.problem.get("errors") or [])
        self.field: str | None = next((e.get("field") for e in self.errors if e.get("field")), None)
        super().__init__(f"{status} {self.code}: {self.detail}")


class ServerUnreachable(ClientError):
    """No answer from the server (connection refused, reset or timed out) after the retries."""


class WaitTimeout(ClientError):
    def __init__(self, job_id: str, status: str | None, timeout: float):
        self.job_id, self.status, self.timeout = job_id, status, timeout
        super().__init__(f"job {job_id} is still {status or 'unfinished'} after {timeout:g} s")


class JobNotFinished(ClientError):
    """Artifacts were asked for before the job succeeded."""

    def __init__(self, job_id: str, status: str):
        self.job_id, self.status = job_id, status
        super().__init__(f"job {job_id} is {status}: it has no results to download")


class ChecksumMismatch(ClientError):
    def __init__(self, name: str, expected: str | None, actual: str):
        self.name, self.expected, self.actual = name, expected, actual
        super().__init__(f"artifact {name}: sha256 {actual} does not match the server's {expected}")

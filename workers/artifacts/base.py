"""The artifact store protocol: a job's uploaded inputs and its outputs, written atomically, read as streams.

Outputs are fenced by attempt. Each attempt of a job writes its outputs under its own attempt number
(`<job>/attempts/<n>/<name>`) and never under another's, and the attempt's conditional `finish` in the job store is
what publishes them. Readers are served the newest attempt's outputs: the attempt that finished a job is always the
last one claimed (a claim needs a queued job, and a finished job is never queued again), while an attempt that lost
its claim (a worker cut off from the job store, whose job the sweep re-queued) has a lower number. So a stale
attempt that uploads late writes beside the served files, never over them, and the served bytes keep matching the
sha256 recorded at `finish`. (An attempt number is reused only after `release`, whose attempt publishes nothing.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from workers.errors import ResourceLimit
from workers.jobs import ArtifactInfo

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ATTEMPTS_DIR = "attempts"  # <job>/attempts/<n>/<name>: the outputs of attempt n


def attempt_dir_name(attempt: int) -> str:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"invalid attempt number {attempt!r}")
    return str(attempt)


def parse_attempt(name: str) -> int | None:
    """The attempt number a directory (or key prefix) name stands for; None for anything else."""
    return int(name) if name.isascii() and name.isdigit() and len(name) <= 9 and int(name) >= 1 else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def check_room(store: ArtifactStore, name: str, size: int) -> None:
    """Refuse an output of `size` bytes that would take the store past its max_total_bytes (0: no limit)."""
    if store.max_total_bytes:
        used = store.usage_bytes()
        if used + size > store.max_total_bytes:
            raise ResourceLimit(
                f"artifact store full while writing artifact {name} ({size} bytes): {used} of "
                f"{store.max_total_bytes} bytes used (artifacts.max_total_bytes)"
            )


def valid_name(name: str) -> bool:
    """Artifact and input names are plain file names: no separators, no leading dot, at most 128 characters."""
    return bool(NAME_RE.match(name)) and ".." not in name


class ArtifactStore(Protocol):
    max_total_bytes: int  # 0: no limit on the outputs' total size

    def adopt_input(self, job_id: str, name: str, src: Path) -> Path:
        """Move a finished upload (a temp file) into the job's inputs; atomic. Returns where a local copy lies."""

    def input_path(self, job_id: str, name: str) -> Path:
        """A local path a job process can read the input from."""

    def put_output(self, job_id: str, name: str, src: Path, *, attempt: int | None = None) -> ArtifactInfo:
        """Copy a file into the outputs of the job's attempt (atomically, hashing it); raises ResourceLimit when
        full. Without an attempt, into the legacy unfenced place (kept for tests and old jobs)."""

    def output_path(self, job_id: str, name: str, *, attempt: int | None = None) -> Path | None:
        """A local copy of an output; without an attempt, of the served one (the newest attempt's)."""

    def open_output(
        self, job_id: str, name: str, chunk_size: int = 1 << 20, *, attempt: int | None = None
    ) -> Iterator[bytes]:
        """The output's bytes in chunks; without an attempt, the served one (the newest attempt's)."""

    def output_attempts(self, job_id: str) -> list[int]:
        """The attempts that wrote outputs of the job, ascending."""

    def published_attempt(self, job_id: str) -> int | None:
        """The attempt whose outputs are served (the newest), None when no attempt wrote any."""

    def delete_outputs(self, job_id: str, *, attempt: int | None = None) -> None:
        """Remove one attempt's outputs (a failed or fenced-off publish leaves none behind), or, without an
        attempt, all of the job's outputs; inputs stay."""

    def delete_job(self, job_id: str) -> None: ...

    def job_ids(self) -> set[str]: ...

    def job_age_seconds(self, job_id: str) -> float | None:
        """Seconds since the job's directory last changed; None when it has none."""

    def usage_bytes(self) -> int: ...

    def check_writable(self) -> None: ...

"""The artifact store protocol: a job's uploaded inputs and its outputs, written atomically, read as streams."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from workers.engine.errors import ResourceLimit
from workers.jobs import ArtifactInfo
from workers.store.base import StoreUnavailable

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactStoreUnavailable(StoreUnavailable, OSError):
    """A remote artifact store (S3) cannot be reached or refused the request. An OSError, so a worker that fails to
    publish treats it like a full disk (the job fails with the reason); a StoreUnavailable, so the API answers 503
    (nothing was saved, retry later) when it happens during a submit."""


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
                f"{store.max_total_bytes} bytes used (artifacts.max_total_bytes)")


def valid_name(name: str) -> bool:
    """Artifact and input names are plain file names: no separators, no leading dot, at most 128 characters."""
    return bool(NAME_RE.match(name)) and ".." not in name


class ArtifactStore(Protocol):
    max_total_bytes: int  # 0: no limit on the outputs' total size

    def adopt_input(self, job_id: str, name: str, src: Path) -> Path:
        """Move a finished upload (a temp file) into the job's inputs; atomic. Returns where a local copy lies."""

    def input_path(self, job_id: str, name: str) -> Path:
        """A local path a job process can read the input from."""

    def put_output(self, job_id: str, name: str, src: Path) -> ArtifactInfo:
        """Copy a file into the job's outputs (atomically, hashing it); raises ResourceLimit when full."""

    def output_path(self, job_id: str, name: str) -> Path | None: ...

    def open_output(self, job_id: str, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def delete_outputs(self, job_id: str) -> None:
        """Remove a job's outputs (a failed publish leaves none behind); inputs stay."""

    def delete_job(self, job_id: str) -> None: ...

    def job_ids(self) -> set[str]: ...

    def job_age_seconds(self, job_id: str) -> float | None:
        """Seconds since the job's directory last changed; None when it has none."""

    def usage_bytes(self) -> int: ...

    def check_writable(self) -> None: ...

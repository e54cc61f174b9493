"""Artifacts in a local directory: `<root>/<job_id>/inputs/<name>` and each attempt's outputs in
`<root>/<job_id>/attempts/<attempt>/<name>` (`<root>/<job_id>/outputs/<name>` when written without an attempt, as
before attempts were fenced).

An attempt writes only under its own number, so an attempt that lost its claim (a stale worker) can never replace
the files of the attempt that finished the job; readers are served the newest attempt's files (see base.py).

Every write goes to a temp file in the destination directory, is fsynced and then renamed into place, so a
reader (or a restart) never sees half a file. A failed write (disk full, file-size limit, the store's own size
limit) removes its temp file and raises ResourceLimit naming what was being written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from workers.artifacts.base import ATTEMPTS_DIR, attempt_dir_name, check_room, parse_attempt, valid_name
from workers.engine.fileio import atomic_write, fsync_dir
from workers.errors import ResourceLimit
from workers.jobs import ArtifactInfo

_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class LocalArtifactStore:
    def __init__(self, root: str | Path, *, max_total_bytes: int = 0):
        self.root = Path(root)
        self.max_total_bytes = max_total_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        if not valid_name(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def _file(self, job_id: str, kind: str, name: str) -> Path:
        if not valid_name(name):
            raise ValueError(f"invalid artifact name {name!r}")
        return self._job_dir(job_id) / kind / name

    def _outputs_dir(self, job_id: str, attempt: int | None) -> Path:
        """Where an attempt's outputs go; None: the legacy (unfenced) directory."""
        if attempt is None:
            return self._job_dir(job_id) / "outputs"
        return self._job_dir(job_id) / ATTEMPTS_DIR / attempt_dir_name(attempt)

    def _output_file(self, job_id: str, name: str, attempt: int | None) -> Path:
        if not valid_name(name):
            raise ValueError(f"invalid artifact name {name!r}")
        if attempt is None:  # the reader's view: the newest attempt's outputs, else the legacy directory
            attempt = self.published_attempt(job_id)
        return self._outputs_dir(job_id, attempt) / name

    def output_attempts(self, job_id: str) -> list[int]:
        try:
            entries = list((self._job_dir(job_id) / ATTEMPTS_DIR).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in (parse_attempt(p.name) for p in entries if p.is_dir()) if n is not None)

    def published_attempt(self, job_id: str) -> int | None:
        attempts = self.output_attempts(job_id)
        return attempts[-1] if attempts else None

    # -- inputs -------------------------------------------------------------------------------------------------

    def adopt_input(self, job_id: str, name: str, src: Path) -> Path:
        dest = self._file(job_id, "inputs", name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dest)  # same file system: atomic, no copy
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._copy_atomic(Path(src), dest, what=f"input {name}")
            Path(src).unlink(missing_ok=True)
        fsync_dir(dest.parent)
        return dest

    def input_path(self, job_id: str, name: str) -> Path:
        return self._file(job_id, "inputs", name)

    # -- outputs ------------------------------------------------------------------------------------------------

    def put_output(self, job_id: str, name: str, src: Path, *, attempt: int | None = None) -> ArtifactInfo:
        if not valid_name(name):
            raise ValueError(f"invalid artifact name {name!r}")
        dest = self._outputs_dir(job_id, attempt) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = Path(src).stat().st_size
        check_room(self, name, size)
        digest = self._copy_atomic(Path(src), dest, what=f"artifact {name}")
        return ArtifactInfo(name=name, bytes=size, sha256=digest)

    def output_path(self, job_id: str, name: str, *, attempt: int | None = None) -> Path | None:
        try:
            path = self._output_file(job_id, name, attempt)
        except ValueError:
            return None
        return path if path.is_file() else None

    def open_output(
        self, job_id: str, name: str, chunk_size: int = 1 << 20, *, attempt: int | None = None
    ) -> Iterator[bytes]:
        path = self.output_path(job_id, name, attempt=attempt)
        if path is None:
            raise FileNotFoundError(name)
        f = open(path, "rb")  # opened now so a missing file fails before the response starts

        def chunks():
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return chunks()

    # -- housekeeping -------------------------------------------------------------------------------------------

    def delete_outputs(self, job_id: str, *, attempt: int | None = None) -> None:
        if attempt is not None:
            shutil.rmtree(self._outputs_dir(job_id, attempt), ignore_errors=True)
            return
        shutil.rmtree(self._outputs_dir(job_id, None), ignore_errors=True)
        shutil.rmtree(self._job_dir(job_id) / ATTEMPTS_DIR, ignore_errors=True)

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)

    def job_ids(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_dir() and valid_name(p.name)}

    def job_age_seconds(self, job_id: str) -> float | None:
        import time

        try:
            return time.time() - self._job_dir(job_id).stat().st_mtime
        except (OSError, ValueError):
            return None

    def usage_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
        return total

    def check_writable(self) -> None:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()

    # -- internals ----------------------------------------------------------------------------------------------

    def _copy_atomic(self, src: Path, dest: Path, *, what: str) -> str:
        h = hashlib.sha256()

        def copy(tmp: Path) -> None:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    h.update(chunk)
                    fout.write(chunk)

        try:
            atomic_write(dest, copy)
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                raise ResourceLimit(f"disk full while writing {what} to the artifact store: {e.strerror}") from e
            raise
        return h.hexdigest()

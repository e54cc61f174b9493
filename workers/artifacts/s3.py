"""Artifacts in an S3-compatible bucket (AWS S3, MinIO, ...): `s3://bucket/prefix` holds
`<prefix>/<job_id>/inputs/<name>` and each attempt's outputs in `<prefix>/<job_id>/attempts/<attempt>/<name>`
(`<prefix>/<job_id>/outputs/<name>` when written without an attempt, as before attempts were fenced).

- **Fenced by attempt.** An attempt uploads only under its own number, so a stale attempt (one that lost its claim)
  never replaces the objects of the attempt that finished the job; readers get the newest attempt's (base.py).

- **Atomic from the reader's view.** A PUT, and the completion of a multipart upload, make an object visible all at
  once: a reader sees the whole previous object, nothing, or the whole new one, never part of one. So files are
  uploaded straight to their final key (no temp key and copy, which would double the traffic); a failed multipart
  upload is aborted, and `delete_job` also aborts uploads a crash left unfinished.
- **Streamed both ways.** Uploads read the file in `part_bytes` parts (multipart above that size); downloads are
  iterated in chunks. Nothing is held whole in memory.
- **Hashed.** The sha256 of each file is computed before the upload (one extra local read) and kept in the object's
  metadata (`x-amz-meta-sha256`); a download into the local cache is checked against it.
- **Local cache.** A job process needs a local file: `input_path` downloads the input once into
  `<data dir>/cache/<job_id>/inputs/` (temp file, then rename). Cached jobs untouched for `cache_seconds` are
  removed (by default longer than a job attempt may run, so a running job never loses its files).
- **Errors.** A request the server refuses or cannot answer raises ArtifactStoreUnavailable (a
  StoreUnavailable) naming the bucket, the key and the operation; a missing object raises FileNotFoundError.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from workers.artifacts.base import (
    ATTEMPTS_DIR,
    attempt_dir_name,
    check_room,
    parse_attempt,
    sha256_file,
    valid_name,
)
from workers.engine.fileio import atomic_write
from workers.errors import ArtifactStoreUnavailable
from workers.jobs import ArtifactInfo

MiB = 2**20
SHA256_KEY = "sha256"  # object metadata key (x-amz-meta-sha256)
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_EVICT_EVERY_S = 60.0


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); the prefix is "" or ends with one slash."""
    if not url.lower().startswith("s3://"):
        raise ValueError(f"artifacts.url {url!r}: not an s3:// URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"artifacts.url {url!r}: no bucket name (s3://bucket/prefix)")
    prefix = "/".join(p for p in prefix.split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise ValueError(f"artifacts.url {url!r}: '.' and '..' are not allowed in the prefix")
    return bucket, f"{prefix}/" if prefix else ""


def _error_code(e: Exception) -> str:
    response = getattr(e, "response", None) or {}
    return str((response.get("Error") or {}).get("Code", ""))


class S3ArtifactStore:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        client,
        cache_dir: str | Path,
        max_total_bytes: int = 0,
        part_bytes: int = 16 * MiB,
        cache_seconds: float = 7200.0,
        create_bucket: bool = True,
    ):
        self.bucket, self.prefix = bucket, prefix
        self.client = client
        self.cache_dir = Path(cache_dir)
        self.max_total_bytes = max_total_bytes
        self.part_bytes = part_bytes
        self.cache_seconds = cache_seconds
        self._next_eviction = 0.0
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if create_bucket:
            self._ensure_bucket()

    @classmethod
    def from_settings(cls, settings) -> S3ArtifactStore:
        bucket, prefix = parse_s3_url(settings.artifacts.url)
        return cls(
            bucket,
            prefix,
            client=make_client(settings.artifacts.s3),
            cache_dir=settings.cache_dir,
            max_total_bytes=settings.artifacts.max_total_bytes,
            part_bytes=settings.artifacts.s3.part_bytes,
            cache_seconds=settings.limits.job_wall_seconds + 3600.0,
        )

    def __repr__(self) -> str:
        return f"S3ArtifactStore(s3://{self.bucket}/{self.prefix})"

    # -- keys -------------------------------------------------------------------------------------------------

    def _job_prefix(self, job_id: str) -> str:
        if not valid_name(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return f"{self.prefix}{job_id}/"

    def _key(self, job_id: str, kind: str, name: str) -> str:
        if not valid_name(name):
            raise ValueError(f"invalid artifact name {name!r}")
        return f"{self._job_prefix(job_id)}{kind}/{name}"

    def _outputs_kind(self, job_id: str, attempt: int | None) -> str:
        """The key part between the job and the name: 'outputs' (legacy) or 'attempts/<n>'; None: the served one."""
        if attempt is None:
            attempt = self.published_attempt(job_id)
        return "outputs" if attempt is None else f"{ATTEMPTS_DIR}/{attempt_dir_name(attempt)}"

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _cached(self, job_id: str, kind: str, name: str) -> Path:
        self._key(job_id, kind, name)  # validates both names
        return self.cache_dir / job_id / kind / name

    @contextmanager
    def _errors(self, what: str, key: str):
        """Translate boto errors: a missing object -> FileNotFoundError; anything else -> ArtifactStoreUnavailable."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            if _error_code(e) in _MISSING:
                raise FileNotFoundError(errno.ENOENT, f"{self._url(key)} does not exist", key) from None
            raise ArtifactStoreUnavailable(f"the artifact store refused to {what} {self._url(key)}: {e}") from e
        except (BotoCoreError, Boto3Error) as e:
            cause = e.__cause__ or e.__context__
            if cause is not None and _error_code(cause) in _MISSING:
                raise FileNotFoundError(errno.ENOENT, f"{self._url(key)} does not exist", key) from None
            raise ArtifactStoreUnavailable(f"the artifact store could not {what} {self._url(key)}: {e}") from e

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        with self._errors("open the bucket", ""):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as e:
                if _error_code(e) not in _MISSING:
                    raise
            region = self.client.meta.region_name
            kw = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            try:
                self.client.create_bucket(Bucket=self.bucket, **kw)
            except ClientError as e:  # created by another process in between
                if _error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # -- transfers --------------------------------------------------------------------------------------------

    def _upload(self, src: Path, key: str, digest: str) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.part_bytes,
            multipart_chunksize=self.part_bytes,
            max_concurrency=4,
            use_threads=True,
        )
        with self._errors("upload", key):
            self.client.upload_file(
                str(src), self.bucket, key, ExtraArgs={"Metadata": {SHA256_KEY: digest}}, Config=config
            )

    def _download(self, key: str, dest: Path) -> None:
        """Stream an object into `dest` (atomic_write: temp file, fsync, rename), checking its sha256 metadata."""

        def fetch(tmp: Path) -> None:
            with self._errors("download", key):
                obj = self.client.get_object(Bucket=self.bucket, Key=key)
                expected = (obj.get("Metadata") or {}).get(SHA256_KEY)
                h = hashlib.sha256()
                with open(tmp, "wb") as f:
                    for chunk in obj["Body"].iter_chunks(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
            if expected and h.hexdigest() != expected:
                raise ArtifactStoreUnavailable(
                    f"{self._url(key)} is corrupt: its sha256 is {h.hexdigest()}, its metadata says {expected}"
                )

        atomic_write(dest, fetch)

    def _list(self, prefix: str, **kw) -> Iterator[dict]:
        with self._errors("list", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, **kw):
                yield page

    def _delete_prefix(self, prefix: str) -> None:
        keys = [o["Key"] for page in self._list(prefix) for o in page.get("Contents", [])]
        with self._errors("delete", prefix):
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
                )

    def _abort_uploads(self, prefix: str) -> None:
        with self._errors("abort unfinished uploads under", prefix):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )

    # -- inputs -----------------------------------------------------------------------------------------------

    def adopt_input(self, job_id: str, name: str, src: Path) -> Path:
        """Upload a finished upload, then keep the file as this host's cached copy (the upload is consumed)."""
        key = self._key(job_id, "inputs", name)
        digest, _size = sha256_file(Path(src))
        self._upload(Path(src), key, digest)
        cached = self._cached(job_id, "inputs", name)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, cached)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(src, cached)
            Path(src).unlink(missing_ok=True)
        self._evict_cache(keep=job_id)
        return cached

    def input_path(self, job_id: str, name: str) -> Path:
        """A local copy of the input, downloaded on first use."""
        cached = self._cached(job_id, "inputs", name)
        if not cached.is_file():
            self._download(self._key(job_id, "inputs", name), cached)
        os.utime(cached.parent.parent)  # the job's cache entry is in use
        self._evict_cache(keep=job_id)
        return cached

    # -- outputs ----------------------------------------------------------------------------------------------

    def put_output(self, job_id: str, name: str, src: Path, *, attempt: int | None = None) -> ArtifactInfo:
        kind = "outputs" if attempt is None else f"{ATTEMPTS_DIR}/{attempt_dir_name(attempt)}"
        key = self._key(job_id, kind, name)
        check_room(self, name, Path(src).stat().st_size)
        digest, size = sha256_file(Path(src))
        self._upload(Path(src), key, digest)
        return ArtifactInfo(name=name, bytes=size, sha256=digest)

    def output_attempts(self, job_id: str) -> list[int]:
        prefix = f"{self._job_prefix(job_id)}{ATTEMPTS_DIR}/"
        found = set()
        for page in self._list(prefix, Delimiter="/"):
            for p in page.get("CommonPrefixes", []):
                n = parse_attempt(p["Prefix"][len(prefix) :].rstrip("/"))
                if n is not None:
                    found.add(n)
        return sorted(found)

    def published_attempt(self, job_id: str) -> int | None:
        attempts = self.output_attempts(job_id)
        return attempts[-1] if attempts else None

    def output_path(self, job_id: str, name: str, *, attempt: int | None = None) -> Path | None:
        """A local copy of the output (downloaded into the cache), or None when there is no such output."""
        try:
            if not valid_name(name):
                return None
            kind = self._outputs_kind(job_id, attempt)
            key = self._key(job_id, kind, name)
            cached = self._cached(job_id, kind, name)
        except ValueError:
            return None
        try:
            self._download(key, cached)
        except FileNotFoundError:
            return None
        return cached

    def output_sha256(self, job_id: str, name: str, *, attempt: int | None = None) -> str | None:
        """The sha256 kept in the object's metadata (None when the object has none); FileNotFoundError if missing."""
        key = self._key(job_id, self._outputs_kind(job_id, attempt), name)
        with self._errors("read", key):
            return (self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata") or {}).get(SHA256_KEY)

    def open_output(
        self, job_id: str, name: str, chunk_size: int = 1 << 20, *, attempt: int | None = None
    ) -> Iterator[bytes]:
        try:
            if not valid_name(name):
                raise ValueError(name)
            key = self._key(job_id, self._outputs_kind(job_id, attempt), name)
        except ValueError:
            raise FileNotFoundError(name) from None
        with self._errors("download", key):  # requested now, so a missing object fails before a response starts
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

        def chunks():
            try:
                with self._errors("download", key):
                    yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return chunks()

    # -- housekeeping -----------------------------------------------------------------------------------------

    def delete_outputs(self, job_id: str, *, attempt: int | None = None) -> None:
        if attempt is not None:
            kind = f"{ATTEMPTS_DIR}/{attempt_dir_name(attempt)}"
            self._delete_prefix(f"{self._job_prefix(job_id)}{kind}/")
            shutil.rmtree(self.cache_dir / job_id / kind, ignore_errors=True)
            return
        for kind in ("outputs", ATTEMPTS_DIR):
            self._delete_prefix(f"{self._job_prefix(job_id)}{kind}/")
            shutil.rmtree(self.cache_dir / job_id / kind, ignore_errors=True)

    def delete_job(self, job_id: str) -> None:
        prefix = self._job_prefix(job_id)
        self._abort_uploads(prefix)
        self._delete_prefix(prefix)
        shutil.rmtree(self.cache_dir / job_id, ignore_errors=True)

    def job_ids(self) -> set[str]:
        out = set()
        for page in self._list(self.prefix, Delimiter="/"):
            for p in page.get("CommonPrefixes", []):
                name = p["Prefix"][len(self.prefix) :].rstrip("/")
                if valid_name(name):
                    out.add(name)
        return out

    def job_age_seconds(self, job_id: str) -> float | None:
        try:
            prefix = self._job_prefix(job_id)
        except ValueError:
            return None
        newest = max((o["LastModified"] for page in self._list(prefix) for o in page.get("Contents", [])), default=None)
        if newest is None:
            return None
        return (datetime.now(timezone.utc) - newest).total_seconds()

    def usage_bytes(self) -> int:
        return sum(o["Size"] for page in self._list(self.prefix) for o in page.get("Contents", []))

    def check_writable(self) -> None:
        key = f"{self.prefix}.probe-{uuid.uuid4().hex}"
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _evict_cache(self, *, keep: str) -> list[str]:
        """Remove local copies of jobs untouched for cache_seconds (at most once a minute); returns their ids."""
        now = time.monotonic()
        if now < self._next_eviction:
            return []
        self._next_eviction = now + _EVICT_EVERY_S
        removed = []
        cutoff = time.time() - self.cache_seconds
        for entry in self.cache_dir.iterdir():
            try:
                if entry.name != keep and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                    removed.append(entry.name)
            except FileNotFoundError:
                pass
        return removed


def make_client(s3):
    """A boto3 S3 client from the `artifacts.s3` settings group (thread-safe; make one per process)."""
    import boto3
    from botocore.config import Config

    secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key is not None else None
    config = Config(
        s3={"addressing_style": s3.addressing_style},
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=secret,
        config=config,
    )

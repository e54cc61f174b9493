"""Stream a multipart/form-data body to temp files: nothing is held whole in memory.

Each file part is written chunk by chunk to its own temp file while its size and sha256 are computed; the whole
body is counted as it arrives and refused with 413 the moment it passes the limit (or at once when the declared
Content-Length already does). Text fields are small and kept in memory, each under its own limit.
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from service.errors import InsufficientStorage, PayloadTooLarge, Unavailable, Unprocessable, UnsupportedMediaType


@dataclass
class UploadedFile:
    field: str
    filename: str | None
    content_type: str | None
    path: Path
    bytes: int = 0
    sha256: str = ""


@dataclass
class ParsedUpload:
    """The parts of one request: files on disk under `tmp_dir`, text fields in memory."""

    tmp_dir: Path
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


@dataclass(frozen=True)
class FormRules:
    file_fields: frozenset[str]  # always stored as files (with or without a filename)
    text_fields: dict[str, int]  # name -> largest accepted size in bytes (a file part of that name is fine too)
    max_body_bytes: int
    limit_name: str = "limits.max_upload_bytes"
    text_limit_names: dict[str, str] = field(default_factory=dict)  # text field -> the setting behind its limit


class _PartSink:
    """Receives python-multipart callbacks for one request and routes part data to files or text buffers."""

    def __init__(self, upload: ParsedUpload, rules: FormRules):
        self.upload, self.rules = upload, rules
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[str, bytes] = {}
        self.name: str | None = None
        self.file: UploadedFile | None = None
        self.handle = None
        self.hash = None
        self.text: bytearray | None = None
        self.error: Exception | None = None

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc

    # headers
    def on_part_begin(self) -> None:
        self.headers, self.name, self.file, self.text = {}, None, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _kind, params = parse_options_header(self.headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        filename = filename.decode("utf-8", "replace") if filename is not None else None
        known = self.rules.file_fields | set(self.rules.text_fields)
        if not name:
            return self._fail(Unprocessable("a multipart part has no field name", field="form"))
        if name not in known:
            return self._fail(
                Unprocessable(f"unknown form field '{name}'; expected {', '.join(sorted(known))}", field=name)
            )
        if name in self.upload.files or name in self.upload.fields:
            return self._fail(Unprocessable(f"form field '{name}' was sent twice", field=name))
        self.name = name
        if name in self.rules.file_fields:
            ctype = self.headers.get("content-type")
            # named after the client's file (made safe) so that inspection messages name what the user sent
            (self.upload.tmp_dir / name).mkdir()
            path = self.upload.tmp_dir / name / _safe_filename(filename, name)
            self.file = UploadedFile(
                field=name, filename=filename, content_type=ctype.decode("latin-1") if ctype else None, path=path
            )
            self.handle = open(path, "wb")
            self.hash = hashlib.sha256()
        else:
            self.text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None or self.name is None:
            return
        chunk = data[start:end]
        if self.file is not None:
            self.handle.write(chunk)
            self.hash.update(chunk)
            self.file.bytes += len(chunk)
        else:
            self.text += chunk
            limit = self.rules.text_fields[self.name]
            if len(self.text) > limit:
                setting = self.rules.text_limit_names.get(self.name)
                self._fail(
                    PayloadTooLarge(
                        f"form field '{self.name}' is larger than the limit of {limit} bytes"
                        + (f" ({setting})" if setting else ""),
                        field=self.name,
                    )
                )

    def on_part_end(self) -> None:
        if self.name is None:
            return
        if self.file is not None:
            self.handle.close()
            self.handle = None
            self.file.sha256 = self.hash.hexdigest()
            self.upload.files[self.name] = self.file
        elif self.text is not None and self.error is None:
            try:
                self.upload.fields[self.name] = self.text.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(Unprocessable(f"form field '{self.name}' is not UTF-8 text", field=self.name))
        self.name = None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def callbacks(self) -> dict:
        return {
            n: getattr(self, n)
            for n in (
                "on_part_begin",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
                "on_part_data",
                "on_part_end",
            )
        }


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_filename(filename: str | None, fallback: str) -> str:
    base = _UNSAFE.sub("_", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")[:100]
    return base or fallback


def _storage_error(e: OSError) -> InsufficientStorage | Unavailable:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage(
            f"the server has no room to store the upload ({e.strerror}); nothing was kept, retry later", field="body"
        )
    return Unavailable(
        f"the server could not store the upload ({e.strerror or e}); nothing was kept, retry later", field="body"
    )


def _too_large(rules: FormRules, seen: int | None = None) -> PayloadTooLarge:
    got = f" (received {seen}+ bytes)" if seen is not None else ""
    return PayloadTooLarge(
        f"the upload is larger than the limit of {rules.max_body_bytes} bytes ({rules.limit_name}){got}", field="body"
    )


async def receive_multipart(request: Request, tmp_root: Path, rules: FormRules) -> ParsedUpload:
    """Stream the request body into a fresh directory under `tmp_root`. The caller must call `cleanup()`."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        data = " -F data=@d.npz" if "data" in rules.file_fields else ""
        raise UnsupportedMediaType(
            f"{request.method} {request.url.path} takes multipart/form-data (e.g. curl -F "
            f"model=@m.keras{data} -F spec=@spec.json)",
            field="content-type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > rules.max_body_bytes:
        raise _too_large(rules)
    tmp_dir = Path(tmp_root) / uuid.uuid4().hex
    try:
        tmp_dir.mkdir(parents=True)
    except OSError as e:
        raise _storage_error(e) from None
    upload = ParsedUpload(tmp_dir=tmp_dir)
    sink = _PartSink(upload, rules)
    parser = MultipartParser(params[b"boundary"], sink.callbacks())
    try:
        async for chunk in request.stream():
            upload.total_bytes += len(chunk)
            if upload.total_bytes > rules.max_body_bytes:
                raise _too_large(rules, upload.total_bytes)
            parser.write(chunk)
            if sink.error is not None:
                raise sink.error
        parser.finalize()
        if sink.error is not None:
            raise sink.error
    except (PayloadTooLarge, Unprocessable, UnsupportedMediaType):
        sink.close()
        upload.cleanup()
        raise
    except OSError as e:  # writing the temp file failed: the server's problem, not a bad request
        sink.close()
        upload.cleanup()
        raise _storage_error(e) from None
    except Exception as e:
        sink.close()
        upload.cleanup()
        raise Unprocessable(f"the multipart body could not be parsed: {e}", field="body") from None
    sink.close()
    return upload

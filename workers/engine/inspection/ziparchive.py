"""Zip archives (.keras models, .npz datasets), judged from their directory before any member is read.

`open_zip` reads the end records itself first (the member count and central-directory size bound what `zipfile`
will parse), then checks every directory entry: plainly named (no absolute paths, '..', backslashes or control
characters), unique (case-insensitively), unencrypted, stored or deflated, within the member-size, total-size and
compression-ratio limits. `read_member` never reads more than its limit whatever the directory claims;
`member_file` gives a seekable view of one member (a window into the archive when stored, a bounded temporary copy
when deflated) for parsers that need one (h5py).
"""

from __future__ import annotations

import io
import re
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workers.engine.errors import EngineError, ModelRejected
from workers.engine.inspection.limits import InspectLimits
from workers.engine.inspection.sniff import EMPTY_ZIP_SIGNATURE, ZIP_SIGNATURE

# A member that expands past this many bytes is judged by its compression ratio.
RATIO_FLOOR_BYTES = 1 << 20
# Central directory records are at least 46 bytes; this bounds what zipfile will parse.
MAX_CENTRAL_DIRECTORY_BYTES = 4 << 20

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


def _central_directory_size(path: Path, size: int, error: type[EngineError]) -> tuple[int, int]:
    """(entries, central directory bytes) read from the end records, before zipfile parses anything."""
    with open(path, "rb") as f:
        tail_len = min(size, _EOCD.size + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(EMPTY_ZIP_SIGNATURE)
        if at < 0 or at + _EOCD.size > len(tail):
            raise error(f"{path.name}: damaged zip archive (no end-of-central-directory record)")
        _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
            loc_at = size - tail_len + at - _ZIP64_LOCATOR.size
            if loc_at < 0:
                raise error(f"{path.name}: damaged zip64 archive")
            f.seek(loc_at)
            sig, _, eocd64_at, _ = _ZIP64_LOCATOR.unpack(f.read(_ZIP64_LOCATOR.size))
            if sig != b"PK\x06\x07" or eocd64_at + _ZIP64_EOCD.size > size:
                raise error(f"{path.name}: damaged zip64 archive")
            f.seek(eocd64_at)
            record = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
            if record[0] != b"PK\x06\x06":
                raise error(f"{path.name}: damaged zip64 archive")
            entries, cd_size = record[7], record[8]
    return entries, cd_size


def _unsafe_member_name(name: str) -> str | None:
    """Why a member name is unsafe, or None."""
    if not name:
        return "an empty name"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "control characters"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "a '..' component"
    if "\\" in name:
        return "a backslash"
    return None


def open_zip(
    path: Path, limits: InspectLimits, error: type[EngineError], what: str
) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a zip archive after checking its directory: names, count, sizes, ratios, encryption, duplicates."""
    size = path.stat().st_size
    entries, cd_size = _central_directory_size(path, size, error)
    if entries > limits.max_members:
        raise error(f"{path.name}: {what} has {entries} members; the limit is {limits.max_members} (max_members)")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise error(
            f"{path.name}: {what} has a {cd_size}-byte central directory; the limit is {MAX_CENTRAL_DIRECTORY_BYTES}"
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        raise error(f"{path.name}: damaged zip archive: {e}") from None
    try:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise error(
                f"{path.name}: {what} has {len(infos)} members; the limit is {limits.max_members} (max_members)"
            )
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            why = _unsafe_member_name(name)
            if why is not None:
                raise error(f"{path.name}: member {name!r} has an unsafe path ({why})")
            if name in seen or name.lower() in seen:
                raise error(f"{path.name}: member {name!r} appears more than once")
            seen.update((name, name.lower()))
            if info.flag_bits & 0x1:
                raise error(f"{path.name}: member {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise error(
                    f"{path.name}: member {name!r} uses compression method {info.compress_type}; "
                    "only stored and deflated members are accepted"
                )
            if info.file_size > limits.max_member_bytes:
                raise error(
                    f"{path.name}: member {name!r} expands to {info.file_size} bytes; the limit is "
                    f"{limits.max_member_bytes} (max_member_bytes)"
                )
            if info.file_size > RATIO_FLOOR_BYTES and (
                info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)
            ):
                ratio = info.file_size / max(info.compress_size, 1)
                raise error(
                    f"{path.name}: member {name!r} has compression ratio {ratio:.0f}:1 "
                    f"({info.compress_size} -> {info.file_size} bytes); the limit is "
                    f"{limits.max_compression_ratio:g}:1 (max_compression_ratio): a zip bomb?"
                )
            total += info.file_size
            if total > limits.max_total_bytes:
                raise error(
                    f"{path.name}: {what} expands to more than {limits.max_total_bytes} bytes (max_total_bytes)"
                )
    except BaseException:
        zf.close()
        raise
    return zf, infos


def read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, limit_name: str, error: type[EngineError]
) -> bytes:
    """Read one member, never more than `limit` bytes (whatever its directory entry claims)."""
    if info.file_size > limit:
        raise error(f"member {info.filename!r} is {info.file_size} bytes; the limit is {limit} ({limit_name})")
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise error(f"member {info.filename!r} is damaged: {e}") from None
    if len(data) > limit:
        raise error(f"member {info.filename!r} is larger than {limit} bytes ({limit_name})")
    return data


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start+length) of an open file (a stored zip member)."""

    def __init__(self, f, start: int, length: int):
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextmanager
def member_file(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: InspectLimits) -> Iterator[io.IOBase]:
    """A seekable file object over one member: a window into the archive if stored, a temp copy if deflated."""
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size:
                raise ModelRejected(f"{path.name}: member {info.filename!r} is damaged (truncated header)")
            fields = _LOCAL_HEADER.unpack(header)
            if fields[0] != ZIP_SIGNATURE:
                raise ModelRejected(f"{path.name}: member {info.filename!r} is damaged (bad local header)")
            name_len, extra_len = fields[-2], fields[-1]
            local_name = f.read(name_len)
            if (
                local_name.decode("utf-8", "replace") != info.filename
                and local_name.decode("cp437", "replace") != info.filename
            ):
                raise ModelRejected(f"{path.name}: member {info.filename!r} has a different name in its local header")
            start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            if start + info.file_size > path.stat().st_size:
                raise ModelRejected(f"{path.name}: member {info.filename!r} runs past the end of the file")
            yield _Window(f, start, info.file_size)
        return
    with tempfile.TemporaryFile() as tmp, zf.open(info) as src:
        copied = 0
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > limits.max_member_bytes:
                raise ModelRejected(
                    f"{path.name}: member {info.filename!r} is larger than "
                    f"{limits.max_member_bytes} bytes (max_member_bytes)"
                )
            tmp.write(chunk)
        tmp.seek(0)
        yield tmp

"""What an upload is, from its first bytes: the file kinds inspection reads, and names for the ones it refuses.

Callers decide by the signature, never by the uploaded name; anything that is not a zip or HDF5 file is refused
with `describe` saying what it looks like (a pickle, a TFLite flatbuffer, a SavedModel directory, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from workers.engine.errors import EngineError, UnsupportedFile
from workers.engine.inspection.limits import InspectLimits

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
EMPTY_ZIP_SIGNATURE = b"PK\x05\x06"


def is_zip(head: bytes) -> bool:
    return head.startswith(ZIP_SIGNATURE) or head.startswith(EMPTY_ZIP_SIGNATURE)


_SIGNATURES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda h: h[:1] == b"\x80" and h[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"), "a Python pickle"),
    (lambda h: h[4:8] == b"TFL3", "a TensorFlow Lite flatbuffer"),
    (lambda h: h.startswith(b"\x93NUMPY"), "a NumPy .npy array"),
    (lambda h: h.startswith(b"GGUF"), "a GGUF model"),
    (lambda h: h.startswith(b"\x1f\x8b"), "gzip-compressed data"),
    (lambda h: h[257:262] == b"ustar", "a tar archive"),
    (lambda h: h.lstrip()[:1] in (b"{", b"["), "a JSON document (a config without weights?)"),
    (lambda h: len(h) >= 9 and h[8:9] == b"{" and int.from_bytes(h[:8], "little") < 1 << 30, "a safetensors file"),
)


def describe(head: bytes) -> str:
    for matches, description in _SIGNATURES:
        if matches(head):
            return description
    return f"an unrecognised file (first bytes {head[:8].hex(' ')})"


def sniff(path: Path, limits: InspectLimits, error: type[EngineError]) -> bytes:
    """The first 512 bytes of an upload that is a regular, non-empty file within max_file_bytes (else `error`)."""
    if path.is_dir():
        saved_model = " (a TensorFlow SavedModel?)" if (path / "saved_model.pb").exists() else ""
        raise UnsupportedFile(f"{path.name} is a directory{saved_model}; upload a .keras or .h5 file")
    if not path.is_file():
        raise UnsupportedFile(f"{path.name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedFile(f"{path.name} is empty")
    if size > limits.max_file_bytes:
        raise error(f"{path.name} is {size} bytes; the limit is {limits.max_file_bytes} (max_file_bytes)")
    with open(path, "rb") as f:
        return f.read(512)

"""Artifact storage: the protocol (base.py), a local directory (local.py) and an S3-compatible bucket (s3.py).

`open_artifacts(settings)` picks the implementation from `artifacts.url` by its scheme: a path or `file://` URL is
a local directory, `s3://bucket/prefix` a bucket. `open_artifacts(path)` opens a local directory directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from workers.artifacts.base import ArtifactStore, valid_name
from workers.errors import ArtifactStoreUnavailable

if TYPE_CHECKING:
    from workers.settings import Settings


def _open_local(settings: Settings) -> ArtifactStore:
    from workers.artifacts.local import LocalArtifactStore

    return LocalArtifactStore(settings.artifacts_root, max_total_bytes=settings.artifacts.max_total_bytes)


def _open_s3(settings: Settings) -> ArtifactStore:
    from workers.artifacts.s3 import S3ArtifactStore

    return S3ArtifactStore.from_settings(settings)


OPENERS: dict[str, Callable[[Settings], ArtifactStore]] = {"file": _open_local, "s3": _open_s3}


def url_scheme(url: str | None) -> str:
    """'file' for no URL, a path or a file:// URL; otherwise the URL's scheme."""
    if not url or "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def open_artifacts(where: Settings | str | Path, *, max_total_bytes: int = 0) -> ArtifactStore:
    """The artifact store the settings describe (`artifacts.url`), or a local directory given as a path."""
    if isinstance(where, (str, Path)):
        from workers.artifacts.local import LocalArtifactStore

        return LocalArtifactStore(where, max_total_bytes=max_total_bytes)
    scheme = url_scheme(where.artifacts.url)
    try:
        opener = OPENERS[scheme]
    except KeyError:
        raise ValueError(
            f"artifacts.url {where.artifacts.url!r}: unsupported scheme {scheme!r}; use a local "
            f"directory or one of {sorted(k + '://' for k in OPENERS)}"
        ) from None
    return opener(where)


__all__ = ["OPENERS", "ArtifactStore", "ArtifactStoreUnavailable", "open_artifacts", "url_scheme", "valid_name"]

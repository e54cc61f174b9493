"""Artifact storage: the protocol (base.py) and a local directory implementation (local.py)."""

from __future__ import annotations

from workers.artifacts.base import ArtifactStore, valid_name


def open_artifacts(root, *, max_total_bytes: int = 0) -> ArtifactStore:
    from workers.artifacts.local import LocalArtifactStore

    return LocalArtifactStore(root, max_total_bytes=max_total_bytes)


__all__ = ["ArtifactStore", "open_artifacts", "valid_name"]

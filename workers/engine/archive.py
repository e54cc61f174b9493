"""Inspect untrusted model files before Keras touches them (work in progress: full checks follow)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from workers.engine.errors import ModelRejected, UnsupportedFile

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class InspectLimits:
    max_file_bytes: int = 512 * 2**20
    max_members: int = 16
    max_member_bytes: int = 512 * 2**20
    max_total_bytes: int = 576 * 2**20
    max_compression_ratio: float = 100.0
    max_config_bytes: int = 16 * 2**20
    max_json_depth: int = 100
    max_layers: int = 2000
    max_params: int = 100_000_000
    max_tensor_elements: int = 2**28


@dataclass(frozen=True)
class ModelInspection:
    format: str
    model_config: dict
    compile_config: dict | None
    layer_count: int
    weight_count: int
    keras_version: str | None
    class_names: frozenset = field(default_factory=frozenset)


def inspect_model_file(path: str | Path, limits: InspectLimits = InspectLimits()) -> ModelInspection:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(ZIP_SIGNATURE):
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
        return ModelInspection("keras", config, config.get("compile_config"), 0, 0, None, frozenset())
    if head == HDF5_SIGNATURE:
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            config = json.loads(f.attrs["model_config"])
        return ModelInspection("h5", config, None, 0, 0, None, frozenset())
    raise UnsupportedFile(f"{path.name}: not a .keras or .h5 model file")

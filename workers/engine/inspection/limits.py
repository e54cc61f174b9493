"""Bounds on what an uploaded file may declare: one frozen value, validated on construction.

Every check of the inspection package reads its limits from here; each refusal names the field it exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InspectLimits:
    """Bounds on what an uploaded file may declare. All are checked from metadata before any data is read."""

    max_file_bytes: int = 512 * 2**20
    max_members: int = 64  # zip members (a .keras file has 3; datasets may hold more arrays)
    max_member_bytes: int = 512 * 2**20  # uncompressed size of one zip member
    max_total_bytes: int = 576 * 2**20  # uncompressed total, and the declared bytes of all HDF5 datasets
    max_compression_ratio: float = 100.0  # for members over 1 MiB; Keras stores members uncompressed
    max_config_bytes: int = 16 * 2**20  # config.json / model_config / training_config
    max_json_depth: int = 100  # nesting of [ and { in any JSON document
    max_layers: int = 5_000  # layer objects in the config, nested models included
    max_params: int = 200_000_000  # declared model weights (elements)
    max_tensor_elements: int = 2**28  # elements of one HDF5 dataset or .npy array
    max_h5_objects: int = 100_000  # links walked in one HDF5 file

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"InspectLimits.{name} must be a positive number, got {value!r}")

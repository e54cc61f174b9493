"""Building blocks of the hostile files: a real model saved by Keras, zip rewriting, payloads."""

from __future__ import annotations

import base64
import copy
import functools
import json
import marshal
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from workers.engine.errors import EngineError


class Hostile(NamedTuple):
    generate: Callable[[Path, Path], Path]
    error: type[EngineError]
    fragment: str


# ---------------------------------------------------------------------------------------------------------------
# Building blocks: a real model saved by Keras, zip rewriting, payloads
# ---------------------------------------------------------------------------------------------------------------


def small_model(with_lambda: bool = False):
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
def saved_keras_members(with_lambda: bool = False) -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of every member of a small model saved by Keras as .keras (built once per process)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.keras"
        small_model(with_lambda).save(path)
        with zipfile.ZipFile(path) as zf:
            return tuple((info.filename, zf.read(info)) for info in zf.infolist())


@functools.cache
def saved_h5_bytes(with_lambda: bool = False) -> bytes:
    """A small model saved by Keras in the legacy HDF5 format (built once per process)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small_model(with_lambda).save(path)
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


def keras_with_config(
    tmp_dir: Path,
    name: str,
    edit: Callable[[dict], None],
    with_lambda: bool = False,
    extra: list[tuple[str, bytes]] = (),
) -> Path:
    """Save a real model, edit its config.json as an attacker would, and zip it back up."""
    members = []
    for member, data in saved_keras_members(with_lambda):
        if member == "config.json":
            config = json.loads(data)
            edit(config)
            data = json.dumps(config).encode()
        members.append((member, data))
    return write_zip(Path(tmp_dir) / name, members + list(extra))


def config_layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def payload_code(canary: Path) -> str:
    """Python bytecode for `lambda x: (open(canary, 'w').close(), x)[1]`, encoded as Keras encodes a Lambda."""
    fn = eval(compile(f"lambda x: (open({str(canary)!r}, 'w').close(), x)[1]", "<payload>", "eval"))
    return base64.b64encode(marshal.dumps(fn.__code__)).decode("ascii")


def arm_lambdas(config: dict, canary: Path) -> None:
    """Swap the bytecode of every Lambda in a config for the canary payload."""
    for layer in config_layers(config):
        if layer["class_name"] == "Lambda":
            layer["config"]["function"]["config"]["code"] = payload_code(canary)


def function_layer(module: str, function: str, name: str, args: list, kwargs: dict) -> dict:
    """A 'layer' entry that is really a reference to a function, called by Keras with attacker-chosen args."""
    return {
        "module": module,
        "class_name": "function",
        "config": function,
        "registered_name": function,
        "name": name,
        "inbound_nodes": [{"args": args, "kwargs": kwargs}],
    }


class OpenCanary:
    """Unpickling this object runs `open(canary, 'w')`."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


def secret_h5(tmp_dir: Path) -> Path:
    """An .h5 file of two small arrays: what an external link or external storage points at."""
    path = Path(tmp_dir) / "secret.h5"
    with h5py.File(path, "w") as f:
        f["vars/0"] = np.arange(12, dtype="float32").reshape(4, 3)
        f["vars/1"] = np.zeros(3, dtype="float32")
    return path


LOOP = "layers/dense/loop"  # a group hard-linked into itself


def self_linked_group(f: h5py.File, at: str = LOOP) -> None:
    group = f.create_group(at)
    group["loop"] = group

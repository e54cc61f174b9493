"""workers/engine/inspection/config.py: the config walk refuses anything off the allow-list, naming its path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.hostile import write_zip
from workers.engine.errors import ModelRejected
from workers.engine.inspection import inspect_model_file


def _edit_keras(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    out = []
    for name, data in members:
        if name == "config.json":
            config = json.loads(data)
            edit(config)
            data = json.dumps(config).encode()
        out.append((name, data))
    return write_zip(dst, out)


def _dense(config):
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")


EDITS = {
    "activation_name_off_list": (
        lambda c: _dense(c)["config"].update(activation="exec"),
        "activation 'exec' at config.layers[1].config.activation",
    ),
    "activation_as_foreign_function": (
        lambda c: _dense(c)["config"].update(
            activation={
                "module": "subprocess",
                "class_name": "function",
                "config": "getoutput",
                "registered_name": None,
            }
        ),
        "serialized function 'subprocess.getoutput'",
    ),
    "initializer_from_foreign_module": (
        lambda c: _dense(c)["config"].update(
            kernel_initializer={"module": "numpy", "class_name": "GlorotUniform", "config": {}, "registered_name": None}
        ),
        "class 'GlorotUniform' at config.layers[1].config.kernel_initializer names module 'numpy'",
    ),
    "python_lambda_as_activation": (
        lambda c: _dense(c)["config"].update(
            activation={"class_name": "__lambda__", "config": {"code": "AAAA", "defaults": None, "closure": None}}
        ),
        "'__lambda__' at config.layers[1].config.activation is not allowed",
    ),
    "file_path_in_layer_config": (
        lambda c: _dense(c)["config"].update(weights_file="/etc/shadow"),
        "'/etc/shadow' at config.layers[1].config.weights_file looks like a file path",
    ),
    "url_in_layer_config": (
        lambda c: _dense(c)["config"].update(origin="https://evil.example/x"),
        "looks like a file path or URL",
    ),
    "loss_name_off_list": (
        lambda c: c["compile_config"].update(loss="my_custom_loss"),
        "loss 'my_custom_loss' at compile_config.loss is not a stock Keras loss name",
    ),
    "metric_class_off_list": (
        lambda c: c["compile_config"].update(
            metrics=[{"module": "keras.metrics", "class_name": "Backdoor", "config": {}, "registered_name": None}]
        ),
        "object 'keras.metrics.Backdoor' at compile_config.metrics[0] is not allowed",
    ),
    "optimizer_registered_elsewhere": (
        lambda c: c["compile_config"]["optimizer"].update(registered_name="pkg>Adam"),
        "registered_name 'pkg>Adam'",
    ),
    "numpy_object_dtype": (
        lambda c: _dense(c)["config"].update(
            extra={"class_name": "__numpy__", "config": {"value": [1], "dtype": "object"}}
        ),
        "'__numpy__' at config.layers[1].config.extra has dtype 'object'",
    ),
    "top_level_is_a_layer": (
        lambda c: c.update(class_name="Dense", module="keras.layers", registered_name=None),
        "the top-level object is 'Dense'; expected a Keras model",
    ),
    "subclassed_model": (
        lambda c: c.update(module="__main__", class_name="MyModel", registered_name="MyModel"),
        "layer 'seq' (MyModel) is not allowed: not a stock Keras class",
    ),
    "object_without_class_name": (
        lambda c: _dense(c)["config"].update(kernel_initializer={"module": "os"}),
        "serialized object at config.layers[1].config.kernel_initializer has no class_name",
    ),
    "registered_name_string": (
        lambda c: _dense(c)["config"].update(kernel_initializer="evil_pkg>Init"),
        "'evil_pkg>Init' at config.layers[1].config.kernel_initializer names a registered",
    ),
    "nested_compile_config_loss": (
        lambda c: _dense(c).update(compile_config={"loss": "my_loss", "optimizer": "adam"}),
        "loss 'my_loss' at config.layers[1].compile_config.loss is not a stock Keras loss name",
    ),
    "huge_embedding": (
        lambda c: c["config"]["layers"].insert(
            1,
            {
                "module": "keras.layers",
                "class_name": "Embedding",
                "config": {"name": "emb", "input_dim": 2**20, "output_dim": 2**12},
                "registered_name": None,
            },
        ),
        "layer 'emb' (Embedding): the config declares a 4294967296-element weight",
    ),
    "units_out_of_range": (lambda c: _dense(c)["config"].update(units=-1), "units=-1 is out of range"),
    "hashing_salt_file": (
        lambda c: c["config"]["layers"].insert(
            1,
            {
                "module": "keras.layers",
                "class_name": "Hashing",
                "config": {"name": "hash", "num_bins": 3, "salt": "salt.txt"},
                "registered_name": None,
            },
        ),
        "layer 'hash' (Hashing): 'salt' must be inline salt",
    ),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_config_edit_is_refused_naming_the_path(case, saved, tmp_path):
    edit, fragment = EDITS[case]
    path = _edit_keras(saved["sequential", "keras"][0], tmp_path / f"{case}.keras", edit)
    with pytest.raises(ModelRejected) as info:
        inspect_model_file(path)
    assert fragment in info.value.message

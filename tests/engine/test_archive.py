"""workers/engine/archive.py: untrusted model and dataset files are inspected before Keras or numpy load them.

Hostile files come from tests/hostile.py (one generator per attack class, each with a canary payload); benign
files are real models saved by Keras 3 (.keras and .h5) and a committed legacy .h5 saved by tf_keras 2.x.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from tests import hostile
from tests.hostile import DATASET_ATTACKS, HOSTILE, MODEL_ATTACKS, write_zip
from workers.engine.inspection import InspectLimits, ModelInspection, inspect_model_file, inspect_npz
from workers.engine.inspection.jsontext import json_depth
from workers.engine.errors import DataError, EngineError, ModelRejected, UnsupportedFile

ROOT = Path(__file__).resolve().parents[2]
LEGACY_H5 = ROOT / "tests" / "fixtures" / "legacy_tf_keras.h5"
L = keras.layers


# --------------------------------------------------------------------------------------------------------------
# Benign models and what Keras itself says about them
# --------------------------------------------------------------------------------------------------------------


def _sequential():
    return keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="fc1"), L.Dropout(0.1),
                             L.Dense(3, activation="softmax", name="out")], name="seq")


def _functional_add_concat_bn():
    inputs = keras.Input((10, 10, 2))
    a = L.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    a = L.BatchNormalization(name="bn_a")(a)
    b = L.Conv2D(4, 1, name="conv_b")(inputs)
    x = L.Add(name="add")([a, b])
    x = L.Concatenate(name="concat")([x, b])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(5, activation="softmax")(x), name="branchy")


def _nested():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(6, activation="tanh"), L.BatchNormalization()],
                             name="inner_block")
    inputs = keras.Input((6,))
    x = inner(inputs)
    x = L.Add()([x, inputs])
    return keras.Model(inputs, L.Dense(2)(x), name="outer")


def _zoo():
    """Many stock layers, initializers, regularizers, constraints: the allow-list must cover what Keras writes."""
    image = keras.Input((16, 16, 3), name="image")
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    x = L.Rescaling(1 / 255.0)(image)
    x = L.Normalization(mean=[0.5, 0.5, 0.5], variance=[0.25, 0.25, 0.25])(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.Conv2D(4, 3, kernel_regularizer=keras.regularizers.L1L2(1e-4, 1e-4),
                 kernel_constraint=keras.constraints.MaxNorm(2.0),
                 kernel_initializer=keras.initializers.HeNormal(seed=1))(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = L.SeparableConv2D(4, 3, padding="same")(x)
    x = L.LeakyReLU(0.1)(x)
    x = L.Conv2DTranspose(4, 3, padding="same")(x)
    x = L.PReLU()(x)
    x = L.MaxPooling2D(2)(x)
    x = L.UpSampling2D()(x)
    x = L.Cropping2D(1)(x)
    x = L.AveragePooling2D(2)(x)
    x = L.SpatialDropout2D(0.1)(x)
    x = L.LayerNormalization()(x)
    x = L.ELU()(x)
    x = L.GaussianNoise(0.1)(x)
    x = L.Permute((2, 1, 3))(x)
    x = L.Reshape((-1, 4))(x)
    x = L.Conv1D(4, 3, padding="same", activation="gelu")(x)
    x = L.GlobalMaxPooling1D()(x)
    e = L.Embedding(50, 4)(tokens)
    e = L.Flatten()(e)
    e = L.Dense(4, activation="swish", bias_initializer=keras.initializers.Constant(0.1))(e)
    parts = [L.Add()([x, e]), L.Subtract()([x, e]), L.Multiply()([x, e]), L.Average()([x, e]),
             L.Maximum()([x, e]), L.Minimum()([x, e]), L.Dot(axes=1)([x, e])]
    x = L.Concatenate()(parts)
    x = L.Activation("relu")(x)
    x = L.Dense(3)(x)
    outputs = L.Softmax()(x)
    return keras.Model([image, tokens], outputs, name="zoo")


def _recurrent():
    inputs = keras.Input((5, 4))
    x = L.LSTM(3, return_sequences=True)(inputs)
    x = L.GRU(3, return_sequences=True)(x)
    x = L.MultiHeadAttention(num_heads=2, key_dim=2)(x, x)
    x = L.SimpleRNN(2)(x)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(x), name="recurrent")


BENIGN = {"sequential": _sequential, "functional": _functional_add_concat_bn, "nested": _nested, "zoo": _zoo,
          "recurrent": _recurrent}


def _compile(model, optimizer="adam"):
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _leaf_layers(model) -> int:
    """Layers that compute, as Keras sees them: leaves of nested models, InputLayer not counted."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += _leaf_layers(layer)
        elif not isinstance(layer, L.InputLayer):
            count += 1
    return count


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every benign model, compiled with adam + sparse_categorical_crossentropy + accuracy, saved both ways."""
    d = tmp_path_factory.mktemp("benign")
    out = {}
    keras.utils.set_random_seed(0)
    for name, build in BENIGN.items():
        model = _compile(build())
        for ext in ("keras", "h5"):
            path = d / f"{name}.{ext}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.save(path)
            out[name, ext] = (path, model)
    return out


@pytest.fixture
def canary(tmp_path):
    return tmp_path / "canary" / "CANARY"


# --------------------------------------------------------------------------------------------------------------
# Benign files pass with the right facts
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_model_saved_by_keras3_passes_with_keras_counts(saved, name, ext):
    path, model = saved[name, ext]
    result = inspect_model_file(path)
    assert isinstance(result, ModelInspection)
    assert result.format == ext
    assert result.layer_count == _leaf_layers(model)
    assert result.weight_count == model.count_params()
    assert result.keras_version == keras.__version__
    assert result.model_config["class_name"] in ("Functional", "Sequential")
    assert result.model_config["config"]["name"] == model.name
    assert {"InputLayer", "Dense"} <= result.class_names


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_sequential_layers_count_the_entries_of_every_sequential_model(saved, ext):
    """What a load will cost: Keras rebuilds a Sequential after each layer it adds, so its layers are counted."""
    counts = {name: inspect_model_file(saved[name, ext][0]).sequential_layers for name in BENIGN}
    assert counts == {"sequential": 4, "functional": 0, "nested": 3, "zoo": 0, "recurrent": 0}  # InputLayer too


def test_a_deep_sequential_passes_inspection_and_reports_its_depth(tmp_path, canary):
    path = hostile.keras_deep_sequential(tmp_path, canary, layers=600)
    found = inspect_model_file(path)
    assert (found.sequential_layers, found.layer_count) == (601, 600)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_compile_config_of_adam_sparse_crossentropy_accuracy_is_returned(saved, ext):
    path, _ = saved["functional", ext]
    cc = inspect_model_file(path).compile_config
    assert cc["loss"] == "sparse_categorical_crossentropy"
    assert cc["metrics"] == ["accuracy"]
    optimizer = cc["optimizer"] if ext == "keras" else cc["optimizer_config"]
    assert optimizer["class_name"] == "Adam"


def test_uncompiled_model_has_no_compile_config(tmp_path):
    path = tmp_path / "plain.keras"
    _sequential().save(path)
    assert inspect_model_file(path).compile_config is None


def test_legacy_h5_saved_by_tf_keras2_passes():
    result = inspect_model_file(LEGACY_H5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = keras.saving.load_model(LEGACY_H5)  # our own committed fixture: safe to load for the expectation
    assert result.format == "h5"
    assert result.keras_version.startswith("2.")
    assert result.layer_count == _leaf_layers(model)
    assert result.weight_count == model.count_params()
    assert result.compile_config["loss"] == "sparse_categorical_crossentropy"
    assert result.compile_config["optimizer_config"]["class_name"] == "Custom>Adam"
    assert {"Conv2D", "BatchNormalization", "Add", "Concatenate", "MeanMetricWrapper"} <= result.class_names


def test_keras_file_with_deflated_members_passes(saved, tmp_path):
    src, model = saved["functional", "keras"]
    with zipfile.ZipFile(src) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    dst = write_zip(tmp_path / "deflated.keras", members, compression=zipfile.ZIP_DEFLATED)
    assert inspect_model_file(dst).weight_count == model.count_params()


def test_optimizer_schedule_loss_and_metric_objects_pass(tmp_path):
    model = _sequential()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(), keras.metrics.sparse_top_k_categorical_accuracy,
                           "acc"])
    model.save(tmp_path / "objects.keras")
    cc = inspect_model_file(tmp_path / "objects.keras").compile_config
    assert cc["optimizer"]["config"]["learning_rate"]["class_name"] == "ExponentialDecay"


def test_soft_link_even_to_an_object_inside_the_file_is_refused(saved, tmp_path):
    """Keras writes no links: a soft link is refused wherever it points (its target is named when short)."""
    path = tmp_path / "soft.h5"
    path.write_bytes(saved["sequential", "h5"][0].read_bytes())
    with h5py.File(path, "r+") as f:
        f["alias"] = h5py.SoftLink("/model_weights/fc1")
    with pytest.raises(ModelRejected, match=r"HDF5 soft link '/alias' \(to '/model_weights/fc1'\) is not accepted"):
        inspect_model_file(path)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_a_second_hard_link_to_a_dataset_is_refused(saved, ext, tmp_path):
    path = tmp_path / f"alias.{ext}"
    src = saved["sequential", ext][0]
    if ext == "h5":
        path.write_bytes(src.read_bytes())
        with h5py.File(path, "r+") as f:
            f["alias"] = f["model_weights/fc1/seq/fc1/kernel"]
        expected = "'/model_weights/fc1/seq/fc1/kernel' is a second hard link to '/alias'"
    else:
        with zipfile.ZipFile(src) as zf:
            members = {info.filename: zf.read(info) for info in zf.infolist()}
        buf = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buf, "r+") as f:
            f["alias"] = f["layers/dense/vars/0"]
        members["model.weights.h5"] = buf.getvalue()
        write_zip(path, list(members.items()))
        expected = "'/layers/dense/vars/0' is a second hard link to '/alias'"
    with pytest.raises(ModelRejected) as info:
        inspect_model_file(path)
    assert expected in info.value.message


def test_a_link_maze_is_refused_without_walking_it(tmp_path, canary):
    """A self-linked group plus soft links 100,000 levels deep into it: refused from the link records alone, in
    well under a second (following the targets took 180 s per inspection)."""
    path = hostile.keras_weights_link_maze(tmp_path, canary)
    started = time.perf_counter()
    with pytest.raises(ModelRejected, match="HDF5 soft link '/maze_0' \\(to a 500019-byte target"):
        inspect_model_file(path)
    assert time.perf_counter() - started < 1.0


# --------------------------------------------------------------------------------------------------------------
# Hostile files are refused, name the offending thing, and never fire their canary
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODEL_ATTACKS))
def test_hostile_model_file_is_refused_naming_the_offender(name, tmp_path, canary):
    generate, error, fragment = MODEL_ATTACKS[name]
    canary.parent.mkdir()
    path = generate(tmp_path, canary)
    with pytest.raises(error) as info:
        inspect_model_file(path)
    assert fragment in info.value.message
    assert isinstance(info.value, EngineError) and info.value.http_status in (413, 415, 422)
    assert not canary.exists()


@pytest.mark.parametrize("name", sorted(DATASET_ATTACKS))
def test_hostile_dataset_is_refused_naming_the_offender(name, tmp_path, canary):
    generate, error, fragment = DATASET_ATTACKS[name]
    canary.parent.mkdir()
    path = generate(tmp_path, canary)
    with pytest.raises(error) as info:
        inspect_npz(path)
    assert fragment in info.value.message
    assert not canary.exists()


@pytest.mark.parametrize("generate, member", [(hostile.keras_escaped_quotes_config, "config.json"),
                                              (hostile.keras_escaped_quotes_metadata, "metadata.json")])
def test_unterminated_strings_of_escaped_quotes_are_refused_in_linear_time(generate, member, tmp_path, canary):
    """'"' + '\\"' * 64000 took a quadratic string pattern 48 s (12 s for 32,000 in metadata.json)."""
    path = generate(tmp_path, canary)
    started = time.perf_counter()
    with pytest.raises(ModelRejected, match=f"{member} is not valid JSON"):
        inspect_model_file(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("text, depth", [('{"a": [1, {"b": "x]]]\\"[["}]}', 3), ('"open [[[', 0),
                                         ('["a\\\\", [[]]]', 3), ('[["\\\\"]]', 2), ('"' + '\\"' * 10, 0),
                                         ('[' * 50 + '"\\', 50), ("{}", 1)])
def test_json_depth_counts_brackets_outside_strings_only(text, depth):
    assert json_depth(text) == depth


def test_json_depth_scales_linearly_with_unterminated_strings():
    """A megabyte of escaped quotes (an hour for the quadratic pattern) is scanned in well under a second."""
    text = '"' + '\\"' * 2**19
    started = time.perf_counter()
    assert json_depth(text) == 0
    assert time.perf_counter() - started < 1.0


def test_registry_covers_every_attack_class_with_an_engine_error():
    assert set(HOSTILE) == set(MODEL_ATTACKS) | set(DATASET_ATTACKS)
    for name, (generate, error, fragment) in HOSTILE.items():
        assert callable(generate) and issubclass(error, EngineError) and fragment, name


LIVENESS = textwrap.dedent("""
    import importlib, json, sys, warnings
    from pathlib import Path
    import keras
    warnings.simplefilter("ignore")
    fired = {}
    for kind, path, canary in json.loads(sys.argv[1]):
        try:
            if kind == "load_unsafe":
                keras.saving.load_model(path, safe_mode=False)
            elif kind in ("call_references", "unlock_then_load"):
                # What Keras < 3.9 did with these 'layers': resolve module.function, call it with the node args.
                config = json.loads(__import__("zipfile").ZipFile(path).read("config.json"))
                for layer in config["config"]["layers"]:
                    if layer.get("class_name") == "function":
                        fn = getattr(importlib.import_module(layer["module"]), layer["config"])
                        node = layer["inbound_nodes"][0]
                        fn(*node["args"], **node["kwargs"])
                if kind == "unlock_then_load":  # unsafe mode is now on: the Lambda loads with safe_mode=True
                    keras.saving.load_model(str(Path(path).with_name("lambda.keras")))
            elif kind == "unpickle":
                import numpy as np, pickle
                if path.endswith(".npz"):
                    np.load(path, allow_pickle=True)["x"]
                else:
                    pickle.loads(Path(path).read_bytes())
        except Exception:
            pass  # a payload that needs a working model may still fail after it fired
        fired[path] = Path(canary).exists()
    print(json.dumps(fired))
""")


def test_hostile_payloads_are_live_when_loaded_unsafely(tmp_path):
    """The canaries are real: loading without our inspection (unsafe) fires each one."""
    cases = {"keras_lambda": "load_unsafe", "h5_lambda": "load_unsafe", "keras_duplicate_config": "load_unsafe",
             "keras_builtins_exec": "call_references", "keras_os_system": "call_references",
             "keras_get_file": "call_references", "npz_object_array": "unpickle", "pickle_model": "unpickle"}
    tasks = []
    for name, kind in cases.items():
        d = tmp_path / name
        d.mkdir()
        canary = d / "canary" / "CANARY"
        canary.parent.mkdir()
        tasks.append((kind, str(HOSTILE[name].generate(d, canary)), str(canary)))
    # The enable_unsafe_deserialization chain: calling the referenced function unlocks the armed Lambda file.
    d = tmp_path / "chain"
    (d / "canary").mkdir(parents=True)
    chain = HOSTILE["keras_enable_unsafe_chain"].generate(d, d / "canary" / "CANARY")
    HOSTILE["keras_lambda"].generate(d, d / "canary" / "CANARY")
    tasks.append(("unlock_then_load", str(chain), str(d / "canary" / "CANARY")))

    out = subprocess.run([sys.executable, "-c", LIVENESS, json.dumps(tasks)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    fired = json.loads(out.stdout.strip().splitlines()[-1])
    assert fired == {path: True for _, path, _ in tasks}, out.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------------
# Config walking: the allow-list in detail
# --------------------------------------------------------------------------------------------------------------


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
    "activation_name_off_list": (lambda c: _dense(c)["config"].update(activation="exec"),
                                 "activation 'exec' at config.layers[1].config.activation"),
    "activation_as_foreign_function": (
        lambda c: _dense(c)["config"].update(
            activation={"module": "subprocess", "class_name": "function", "config": "getoutput",
                        "registered_name": None}),
        "serialized function 'subprocess.getoutput'"),
    "initializer_from_foreign_module": (
        lambda c: _dense(c)["config"].update(
            kernel_initializer={"module": "numpy", "class_name": "GlorotUniform", "config": {},
                                "registered_name": None}),
        "class 'GlorotUniform' at config.layers[1].config.kernel_initializer names module 'numpy'"),
    "python_lambda_as_activation": (
        lambda c: _dense(c)["config"].update(
            activation={"class_name": "__lambda__", "config": {"code": "AAAA", "defaults": None, "closure": None}}),
        "'__lambda__' at config.layers[1].config.activation is not allowed"),
    "file_path_in_layer_config": (lambda c: _dense(c)["config"].update(weights_file="/etc/shadow"),
                                  "'/etc/shadow' at config.layers[1].config.weights_file looks like a file path"),
    "url_in_layer_config": (lambda c: _dense(c)["config"].update(origin="https://evil.example/x"),
                            "looks like a file path or URL"),
    "loss_name_off_list": (lambda c: c["compile_config"].update(loss="my_custom_loss"),
                           "loss 'my_custom_loss' at compile_config.loss is not a stock Keras loss name"),
    "metric_class_off_list": (
        lambda c: c["compile_config"].update(metrics=[{"module": "keras.metrics", "class_name": "Backdoor",
                                                       "config": {}, "registered_name": None}]),
        "object 'keras.metrics.Backdoor' at compile_config.metrics[0] is not allowed"),
    "optimizer_registered_elsewhere": (
        lambda c: c["compile_config"]["optimizer"].update(registered_name="pkg>Adam"),
        "registered_name 'pkg>Adam'"),
    "numpy_object_dtype": (
        lambda c: _dense(c)["config"].update(extra={"class_name": "__numpy__", "config": {"value": [1],
                                                                                             "dtype": "object"}}),
        "'__numpy__' at config.layers[1].config.extra has dtype 'object'"),
    "top_level_is_a_layer": (lambda c: c.update(class_name="Dense", module="keras.layers", registered_name=None),
                             "the top-level object is 'Dense'; expected a Keras model"),
    "subclassed_model": (lambda c: c.update(module="__main__", class_name="MyModel", registered_name="MyModel"),
                         "layer 'seq' (MyModel) is not allowed: not a stock Keras class"),
    "object_without_class_name": (lambda c: _dense(c)["config"].update(kernel_initializer={"module": "os"}),
                                  "serialized object at config.layers[1].config.kernel_initializer has no "
                                  "class_name"),
    "registered_name_string": (lambda c: _dense(c)["config"].update(kernel_initializer="evil_pkg>Init"),
                               "'evil_pkg>Init' at config.layers[1].config.kernel_initializer names a registered"),
    "nested_compile_config_loss": (
        lambda c: _dense(c).update(compile_config={"loss": "my_loss", "optimizer": "adam"}),
        "loss 'my_loss' at config.layers[1].compile_config.loss is not a stock Keras loss name"),
    "huge_embedding": (
        lambda c: c["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "Embedding",
                                                   "config": {"name": "emb", "input_dim": 2**20,
                                                              "output_dim": 2**12},
                                                   "registered_name": None}),
        "layer 'emb' (Embedding): the config declares a 4294967296-element weight"),
    "units_out_of_range": (lambda c: _dense(c)["config"].update(units=-1), "units=-1 is out of range"),
    "hashing_salt_file": (
        lambda c: c["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "Hashing",
                                                   "config": {"name": "hash", "num_bins": 3, "salt": "salt.txt"},
                                                   "registered_name": None}),
        "layer 'hash' (Hashing): 'salt' must be inline salt"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_config_edit_is_refused_naming_the_path(case, saved, tmp_path):
    edit, fragment = EDITS[case]
    path = _edit_keras(saved["sequential", "keras"][0], tmp_path / f"{case}.keras", edit)
    with pytest.raises(ModelRejected) as info:
        inspect_model_file(path)
    assert fragment in info.value.message


def test_duplicate_json_keys_are_refused(saved, tmp_path):
    src = saved["sequential", "keras"][0]
    with zipfile.ZipFile(src) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["config.json"] = b'{"class_name": "Sequential", "class_name": "Lambda", ' + members["config.json"][1:]
    path = write_zip(tmp_path / "dupkeys.keras", list(members.items()))
    with pytest.raises(ModelRejected, match="duplicate key 'class_name'"):
        inspect_model_file(path)


# --------------------------------------------------------------------------------------------------------------
# Limits: every bound is enforced and named
# --------------------------------------------------------------------------------------------------------------

LIMIT_CASES = {
    "max_file_bytes": 1000,
    "max_members": 2,
    "max_member_bytes": 1000,
    "max_total_bytes": 500,
    "max_config_bytes": 500,
    "max_json_depth": 5,
    "max_layers": 2,
    "max_params": 100,
    "max_tensor_elements": 100,
    "max_h5_objects": 3,
}


ZIP_ONLY_LIMITS = {"max_members", "max_member_bytes"}


@pytest.mark.parametrize("limit, ext", [(limit, ext) for limit in sorted(LIMIT_CASES) for ext in ("keras", "h5")
                                        if ext == "keras" or limit not in ZIP_ONLY_LIMITS])
def test_each_limit_refuses_a_benign_model_that_exceeds_it(limit, ext, saved):
    path, _ = saved["sequential", ext]
    limits = dataclasses.replace(InspectLimits(), **{limit: LIMIT_CASES[limit]})
    with pytest.raises(ModelRejected) as info:
        inspect_model_file(path, limits)
    assert limit in info.value.message


def test_compression_ratio_limit_applies_to_large_members_only(saved, tmp_path):
    src, _ = saved["sequential", "keras"]
    limits = InspectLimits(max_compression_ratio=1.0)
    with zipfile.ZipFile(src) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    small = write_zip(tmp_path / "small.keras", members, compression=zipfile.ZIP_DEFLATED)
    assert inspect_model_file(small, limits).format == "keras"  # members under 1 MiB are not judged by ratio
    padded = members + [("padding.bin", bytes(2 << 20))]
    with pytest.raises(ModelRejected, match="compression ratio"):
        inspect_model_file(write_zip(tmp_path / "big.keras", padded, zipfile.ZIP_DEFLATED), limits)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(InspectLimits)])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        InspectLimits(**{field: 0})


# --------------------------------------------------------------------------------------------------------------
# Structure of the archive and the file kind
# --------------------------------------------------------------------------------------------------------------


def _members(saved):
    with zipfile.ZipFile(saved["sequential", "keras"][0]) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_keras_archive_without_weights_is_refused(saved, tmp_path):
    members = _members(saved)
    del members["model.weights.h5"]
    with pytest.raises(ModelRejected, match="no model.weights.h5 member"):
        inspect_model_file(write_zip(tmp_path / "noweights.keras", list(members.items())))


@pytest.mark.parametrize("member", ["assets/vocab.txt", "model.weights.npz"])
def test_assets_and_npz_weights_are_refused_with_a_reason(member, saved, tmp_path):
    members = list(_members(saved).items()) + [(member, b"x")]
    with pytest.raises(ModelRejected, match=f"unexpected member '{member}'.*not accepted"):
        inspect_model_file(write_zip(tmp_path / "extra.keras", members))


def test_zip_without_config_is_not_a_keras_model(tmp_path):
    path = write_zip(tmp_path / "torch.pt", [("archive/data.pkl", b"\x80\x02}q\x00."), ("archive/version", b"3")])
    with pytest.raises(UnsupportedFile, match="zip archive without config.json"):
        inspect_model_file(path)


def test_weights_only_h5_is_refused(tmp_path):
    model = _sequential()
    model.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(ModelRejected, match="no model_config attribute"):
        inspect_model_file(tmp_path / "only.weights.h5")


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"\x00\x01garbage bytes here", "an unrecognised file (first bytes 00 01 67"),
    (b'{"class_name": "Sequential"}', "a JSON document"),
    (b"\x93NUMPY\x01\x00", "a NumPy .npy array"),
    (b"\x1f\x8b\x08\x00", "gzip-compressed data"),
])
def test_unsupported_files_are_named(content, fragment, tmp_path):
    path = tmp_path / "upload.bin"
    path.write_bytes(content)
    with pytest.raises(UnsupportedFile) as info:
        inspect_model_file(path)
    assert fragment in info.value.message
    assert info.value.http_status == 415


def test_format_follows_magic_bytes_not_the_file_name(saved, tmp_path):
    disguised = tmp_path / "model.h5"
    disguised.write_bytes(saved["sequential", "keras"][0].read_bytes())
    assert inspect_model_file(disguised).format == "keras"


def test_truncated_archive_is_refused(saved, tmp_path):
    data = saved["sequential", "keras"][0].read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelRejected, match="damaged zip archive"):
        inspect_model_file(path)


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_damaged_files_raise_engine_errors_only(ext, saved, tmp_path):
    """Random byte flips anywhere in a real file: inspection passes or refuses, it never crashes otherwise."""
    data = saved["functional", ext][0].read_bytes()
    rng = np.random.default_rng(7)
    outcomes = set()
    for i in range(60):
        mutated = bytearray(data)
        for at in rng.integers(0, len(data), size=rng.integers(1, 9)):
            mutated[at] = int(rng.integers(0, 256))
        path = tmp_path / f"m{i}.{ext}"
        path.write_bytes(bytes(mutated))
        try:
            inspect_model_file(path)
            outcomes.add("passed")
        except EngineError as e:
            outcomes.add(type(e).__name__)
    assert "ModelRejected" in outcomes


def test_inspection_does_not_import_keras_or_tensorflow(saved):
    path, _ = saved["functional", "keras"]
    code = ("import sys; from workers.engine.inspection import inspect_model_file as i; "
            f"r = i({str(path)!r}); print(r.layer_count, 'keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split()[1:] == ["False", "False"], out.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------------
# Datasets (.npz)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_benign_npz_reports_shapes_and_dtypes_without_loading(save, tmp_path, mnist):
    x_train, y_train, _, _ = mnist
    path = tmp_path / "data.npz"
    save(path, x_train=x_train[:100], y_train=y_train[:100], mask=np.ones(3, dtype=bool),
         half=np.zeros((2, 2), dtype="float16"))
    arrays = inspect_npz(path)
    assert arrays == {"x_train": ((100, 28, 28), np.dtype("float32")), "y_train": ((100,), np.dtype("int64")),
                      "mask": ((3,), np.dtype(bool)), "half": ((2, 2), np.dtype("float16"))}
    with np.load(path, allow_pickle=False) as loaded:
        assert {k: (v.shape, v.dtype) for k, v in loaded.items()} == arrays


@pytest.mark.parametrize("array, fragment", [
    (np.array(["a", "b"]), "has dtype <U1"),
    (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), "has dtype"),
    (np.zeros(2, dtype="complex64"), "has dtype complex64"),
    (np.zeros(2, dtype="longdouble"), "has dtype float128"),
    (np.zeros(2, dtype="datetime64[s]"), "has dtype datetime64[s]"),
])
def test_npz_non_numeric_dtypes_are_refused(array, fragment, tmp_path):
    np.savez(tmp_path / "d.npz", x=array)
    with pytest.raises(DataError) as info:
        inspect_npz(tmp_path / "d.npz")
    assert "array 'x'" in info.value.message and fragment in info.value.message


@pytest.mark.parametrize("member, fragment", [
    ("dir/x.npy", "not a plain NAME.npy"),
    ("x.pkl", "not a plain NAME.npy"),
    ("C:\\x.npy", "an absolute path"),
])
def test_npz_member_names_must_be_plain(member, fragment, tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros(2))
    with pytest.raises(DataError, match=fragment):
        inspect_npz(write_zip(tmp_path / "d.npz", [(member, buf.getvalue())]))


def test_npz_header_must_match_member_size(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros(10, dtype="float32"))
    path = write_zip(tmp_path / "d.npz", [("x.npy", buf.getvalue()[:-8])])
    with pytest.raises(DataError, match="array 'x' declares shape \\(10,\\) float32"):
        inspect_npz(path)


def test_npz_negative_dimensions_are_refused(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (-1, -1)})
    path = write_zip(tmp_path / "d.npz", [("x.npy", buf.getvalue() + bytes(8))])
    with pytest.raises(DataError, match="array 'x' declares shape \\(-1, -1\\)"):
        inspect_npz(path)


def test_npz_member_count_limit(tmp_path):
    np.savez(tmp_path / "d.npz", **{f"a{i}": np.zeros(1) for i in range(5)})
    with pytest.raises(DataError, match="5 members; the limit is 4 \\(max_members\\)"):
        inspect_npz(tmp_path / "d.npz", InspectLimits(max_members=4))

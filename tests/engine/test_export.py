"""Export: every format keeps the zeros, is written atomically, and computes what the Keras model computes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

from workers.engine.errors import SpecError
from workers.engine.export import FORMATS, HeldOut, export_model, save_model_file
from workers.engine.registry import prunable_weights
from workers.engine.tflite import tflite_interpreter, tflite_kernels

L = keras.layers
SPARSITY = 0.9


def _prune(model: keras.Model, sparsity: float) -> None:
    """Zero the smallest `sparsity` fraction of every prunable kernel (exactly, ties broken by position)."""
    for w in prunable_weights(model):
        k = np.asarray(w.variable.numpy()).copy()
        order = np.argsort(np.abs(k), axis=None, kind="stable")
        k.reshape(-1)[order[: int(round(sparsity * k.size))]] = 0.0
        w.variable.assign(k)


def _mlp():
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            L.Flatten(),
            L.Dense(128, activation="relu", name="fc1"),
            L.Dense(10, activation="softmax", name="out"),
        ],
        name="mlp",
    )


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """A dense MLP trained briefly on real digits, a 90%-sparse copy, and both exported in every format, each file
    evaluated on held-out digits (int8 calibrated on training digits)."""
    x_train, y_train, x_test, y_test = mnist
    keras.utils.set_random_seed(0)
    dense = _mlp()
    dense.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    dense.fit(x_train[:3000], y_train[:3000], epochs=1, batch_size=64, verbose=0)
    sparse = keras.models.clone_model(dense)
    sparse.set_weights(dense.get_weights())
    _prune(sparse, SPARSITY)
    sparse.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    sparse.fit(x_train[:3000], y_train[:3000], epochs=1, batch_size=64, verbose=0)  # trained: optimizer state
    _prune(sparse, SPARSITY)
    held_out = HeldOut(x_test[:2000], y_test[:2000])
    root = tmp_path_factory.mktemp("export")
    out = {
        "sparse": (
            root / "sparse",
            export_model(sparse, root / "sparse", list(FORMATS), calibration=x_train[:500], held_out=held_out),
        ),
        "dense": (root / "dense", export_model(dense, root / "dense", ["keras", "tflite"], held_out=held_out)),
    }
    return {
        "dense": dense,
        "sparse": sparse,
        "x": x_test[:256],
        "out": out,
        "held_out": held_out,
        "keras_eval": {
            name: m.evaluate(held_out.x, held_out.y, verbose=0, return_dict=True)
            for name, m in (("dense", dense), ("sparse", sparse))
        },
    }


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_keeps_the_zeros_it_was_given(trained, fmt):
    out_dir, artifacts = trained["out"]["sparse"]
    info = artifacts[fmt]
    path = out_dir / info.file
    assert info.file == FORMATS[fmt].file_name and path.is_file()
    assert info.sparsity_preserved is True
    assert info.sparsity >= SPARSITY - 1e-6
    if fmt != "tflite_int8":  # int8 rounding may only add zeros
        assert info.sparsity == pytest.approx(SPARSITY, abs=1e-4)
    assert info.params > 0 and info.nonzero_params < (1 - SPARSITY + 0.02) * info.params + 200
    assert info.bytes == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.note == ""
    assert info.to_dict()["sparsity_preserved"] is True


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_files_reload_with_the_stock_loader_and_the_same_weights(trained, fmt):
    out_dir, artifacts = trained["out"]["sparse"]
    reloaded = keras.saving.load_model(out_dir / artifacts[fmt].file, safe_mode=True)
    for a, b in zip(trained["sparse"].get_weights(), reloaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reloaded.compiled  # the compile config (loss, metrics) travels with the file
    x = trained["x"][:32]
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), trained["sparse"].predict(x, verbose=0), atol=1e-6)
    assert artifacts[fmt].params == trained["sparse"].count_params()


def test_the_keras_file_of_a_trained_model_loads_without_any_warning_in_a_fresh_process(trained):
    out_dir, artifacts = trained["out"]["sparse"]
    assert trained["sparse"].optimizer.built  # trained: Adam holds 2 moments per variable in memory
    code = (
        "import warnings; warnings.simplefilter('error'); import keras; "
        f"m = keras.saving.load_model({str(out_dir / 'model.keras')!r}); "
        "assert m.compiled and m.optimizer.built; print('loaded', m.count_params())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"loaded {trained['sparse'].count_params()}"
    assert "Warning" not in done.stderr and "warn" not in done.stderr.lower().replace("warning: all log", "")


def test_optimizer_state_is_not_exported(trained, tmp_path):
    out_dir, artifacts = trained["out"]["sparse"]
    with zipfile.ZipFile(out_dir / "model.keras") as z, z.open("model.weights.h5") as f, h5py.File(f) as h5:
        stored, room = {}, {}
        h5.visititems(lambda name, obj: stored.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        h5.visititems(
            lambda name, obj: (
                room.__setitem__(name, obj.id.get_storage_size()) if isinstance(obj, h5py.Dataset) else None
            )
        )
    optimizer_vars = {n: v for n, v in stored.items() if n.startswith("optimizer")}
    slots = [n for n, v in optimizer_vars.items() if v.ndim]
    assert len(slots) == 2 * len(trained["sparse"].trainable_variables)  # Adam: what the loader builds
    assert all(room[n] == 0 for n in slots)  # the zero slots take no room in the file
    learning_rate = float(trained["sparse"].optimizer.learning_rate.numpy())
    # a fresh optimizer: no step taken, every moment zero (the trained model's moments are not)
    assert optimizer_vars and all(
        np.all(v == 0) or np.all(v == np.float32(learning_rate)) for v in optimizer_vars.values()
    )
    trained["sparse"].save(tmp_path / "with_optimizer.keras")
    assert artifacts["keras"].bytes < 0.5 * (tmp_path / "with_optimizer.keras").stat().st_size


def test_a_sparse_tflite_file_is_much_smaller_than_the_dense_encoded_one_and_scores_like_the_keras_model(trained):
    sparse, dense = trained["out"]["sparse"][1]["tflite"], trained["out"]["dense"][1]["tflite"]
    assert "sparse" in sparse.encoding and dense.encoding == "float32, dense"
    assert sparse.bytes < 0.3 * dense.bytes  # 90% zeros: only the non-zeros and their indices are stored
    keras_eval = trained["keras_eval"]["sparse"]
    assert sparse.evaluation["samples"] == len(trained["held_out"].y)
    assert sparse.evaluation["accuracy"] == pytest.approx(keras_eval["accuracy"], abs=1e-3)
    assert sparse.evaluation["loss"] == pytest.approx(keras_eval["loss"], rel=1e-3)


def test_gzip_of_a_sparse_keras_file_is_much_smaller_than_of_the_dense_one(trained):
    sparse, dense = trained["out"]["sparse"][1]["keras"], trained["out"]["dense"][1]["keras"]
    assert sparse.bytes == pytest.approx(dense.bytes, rel=0.02)  # Keras stores zeros densely
    assert sparse.gzip_bytes < 0.35 * dense.gzip_bytes
    assert dense.sparsity < 0.01


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_artifact_is_evaluated_by_running_the_file(trained, fmt):
    evaluation = trained["out"]["sparse"][1][fmt].evaluation
    expected = trained["keras_eval"]["sparse"]
    assert evaluation["samples"] == len(trained["held_out"].y) and set(expected) <= set(evaluation)
    tolerance = 0.02 if fmt == "tflite_int8" else 1e-3  # int8 rounding moves a few predictions
    assert evaluation["accuracy"] == pytest.approx(expected["accuracy"], abs=tolerance)
    if fmt in ("keras", "h5"):
        assert evaluation["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_a_keras_file_is_scored_with_the_loss_and_metrics_its_own_config_stores(trained, tmp_path):
    model = trained["dense"]
    held_out = trained["held_out"]
    uncompiled = type(model).from_config(model.get_config())  # clone_model would compile the copy
    uncompiled.set_weights(model.get_weights())
    bare = export_model(uncompiled, tmp_path / "bare", ["keras"], held_out=held_out)["keras"].evaluation
    assert bare == {"samples": 0, "note": "not evaluated: the file holds no compile config (loss, metrics)"}

    recompiled = keras.models.clone_model(model)
    recompiled.set_weights(model.get_weights())
    recompiled.compile(loss="sparse_categorical_crossentropy", metrics=["sparse_top_k_categorical_accuracy"])
    scored = export_model(recompiled, tmp_path / "top_k", ["keras"], held_out=held_out)["keras"].evaluation
    expected = recompiled.evaluate(held_out.x, held_out.y, verbose=0, return_dict=True)
    assert set(expected) <= set(scored) and "accuracy" not in scored
    assert scored["sparse_top_k_categorical_accuracy"] == pytest.approx(
        expected["sparse_top_k_categorical_accuracy"], abs=1e-6
    )
    assert scored["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def _tflite_predict(path, x):
    runner = tflite_interpreter(path).get_signature_runner()
    ((name, detail),) = runner.get_input_details().items()
    return next(iter(runner(**{name: x.astype(detail["dtype"])}).values()))


def test_float_tflite_computes_the_keras_predictions(trained):
    out_dir, artifacts = trained["out"]["sparse"]
    x = trained["x"]
    expected = trained["sparse"].predict(x, verbose=0)
    np.testing.assert_allclose(_tflite_predict(out_dir / artifacts["tflite"].file, x), expected, atol=1e-5)


def test_int8_tflite_is_full_integer_calibrated_smaller_and_close_to_the_keras_predictions(trained):
    out_dir, artifacts = trained["out"]["sparse"]
    path = out_dir / artifacts["tflite_int8"].file
    x = trained["x"]
    expected = trained["sparse"].predict(x, verbose=0)
    got = _tflite_predict(path, x)
    assert np.abs(got - expected).mean() < 0.01 and np.abs(got - expected).max() < 0.2  # softmax steps of 1/256
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.95
    assert artifacts["tflite_int8"].bytes < 0.4 * trained["out"]["dense"][1]["tflite"].bytes
    assert artifacts["tflite_int8"].encoding.startswith("int8 weights and activations")
    interpreter = tflite_interpreter(path)
    dtypes = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    fully_connected = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert len(fully_connected) == 2
    for op in fully_connected:  # activations in, weights and activations out: all int8
        assert [dtypes[int(i)] for i in op["inputs"][:2]] == [np.int8, np.int8]
        assert dtypes[int(op["outputs"][0])] == np.int8


def test_int8_without_training_data_falls_back_to_dynamic_range_and_says_so(trained, tmp_path):
    info = export_model(trained["dense"], tmp_path, ["tflite_int8"])["tflite_int8"]
    assert "dynamic range" in info.encoding and "no training data" in info.note
    assert info.evaluation is None  # no held-out data given
    got = _tflite_predict(tmp_path / info.file, trained["x"])
    assert np.mean(got.argmax(1) == trained["dense"].predict(trained["x"], verbose=0).argmax(1)) >= 0.95


def test_the_evaluation_of_a_big_model_is_bounded_by_its_macs(trained, tmp_path):
    model = trained["dense"]  # 784*128 + 128*10 = 101,632 MACs per sample
    held_out = HeldOut(trained["held_out"].x, trained["held_out"].y, min_samples=100, mac_budget=101_632 * 300)
    info = export_model(model, tmp_path, ["tflite"], held_out=held_out)["tflite"]
    assert info.evaluation["samples"] == 300
    small = HeldOut(held_out.x, held_out.y, min_samples=500, mac_budget=1.0)
    assert export_model(model, tmp_path, ["keras"], held_out=small)["keras"].evaluation["samples"] == 500


def test_tflite_kernels_of_a_cnn_match_the_model_kernels_after_batchnorm_folding(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            L.Conv2D(16, 3, name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.DepthwiseConv2D(3, name="dw"),
            L.Flatten(),
            L.Dense(10, name="fc"),
        ]
    )
    bn = model.get_layer("bn")
    bn.set_weights([np.linspace(0.5, 1.5, 16), np.zeros(16), np.zeros(16), np.linspace(0.5, 2, 16)])
    _prune(model, 0.8)
    info = export_model(model, tmp_path, ["tflite"])["tflite"]
    total = sum(int(np.prod(w.shape)) for w in prunable_weights(model))
    assert info.params == total and info.note == ""  # every kernel found, nothing else counted
    assert info.sparsity_preserved and info.sparsity == pytest.approx(0.8, abs=1e-3)
    kernels = tflite_kernels(tflite_interpreter(tmp_path / info.file))
    assert sorted(k.size for k in kernels.values()) == sorted(int(np.prod(w.shape)) for w in prunable_weights(model))
    assert all(k.sparse for k in kernels.values()) and "sparse" in info.encoding
    x = np.random.default_rng(0).standard_normal((8, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(_tflite_predict(tmp_path / info.file, x), model.predict(x, verbose=0), atol=1e-4)


def test_export_writes_only_the_requested_files_and_replaces_old_ones(trained, tmp_path):
    stale = tmp_path / "model.keras"
    stale.write_bytes(b"an old artifact")
    artifacts = export_model(trained["dense"], tmp_path, ["keras"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # no temporary file left behind
    assert artifacts["keras"].sha256 != hashlib.sha256(b"an old artifact").hexdigest()
    assert keras.saving.load_model(stale).count_params() == trained["dense"].count_params()


def test_save_model_file_drops_optimizer_state_and_is_loadable(trained, tmp_path):
    path = save_model_file(trained["sparse"], tmp_path / "m.keras")
    reloaded = keras.saving.load_model(path, compile=False)
    assert reloaded.count_params() == trained["sparse"].count_params()
    with pytest.raises(ValueError, match="writes .keras or .h5"):
        save_model_file(trained["sparse"], tmp_path / "m.tflite")


def test_unknown_formats_are_refused_naming_the_field(tmp_path):
    with pytest.raises(SpecError, match="onnx") as err:
        export_model(_mlp(), tmp_path, ["keras", "onnx"])
    assert err.value.field == "export.formats"
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


def test_the_engines_steps_per_execution_is_not_exported(trained, tmp_path):
    """The engine trains several steps per call (model_io.STEPS_PER_EXECUTION); the file keeps the user's 1."""
    from workers.engine import model_io

    model = keras.models.clone_model(trained["dense"])
    model.set_weights(trained["dense"].get_weights())
    model_io.compile_model(model, model_io.TrainingSettings(), "sparse_categorical_crossentropy", ["accuracy"])
    assert model.get_compile_config()["steps_per_execution"] == model_io.STEPS_PER_EXECUTION > 1
    path = save_model_file(model, tmp_path / "m.keras")  # compiled, optimizer not built: no training ran
    reloaded = keras.saving.load_model(path)
    assert reloaded.get_compile_config()["steps_per_execution"] == 1
    assert reloaded.get_compile_config()["loss"] == model.get_compile_config()["loss"]
    np.testing.assert_array_equal(reloaded.predict(trained["x"], verbose=0), model.predict(trained["x"], verbose=0))


def test_saving_leaves_the_callers_model_and_its_trained_optimizer_untouched(trained, tmp_path):
    model = trained["sparse"]
    optimizer = model.optimizer
    state = [np.array(v.numpy()) for v in optimizer.variables]
    assert int(optimizer.iterations.numpy()) > 0
    save_model_file(model, tmp_path / "m.keras")
    assert model.optimizer is optimizer
    for before, v in zip(state, optimizer.variables, strict=True):
        np.testing.assert_array_equal(before, v.numpy())


def test_the_h5_file_carries_no_optimizer_moments(trained, tmp_path):
    path = save_model_file(trained["sparse"], tmp_path / "m.h5")
    weights = sum(w.nbytes for w in trained["sparse"].get_weights())
    assert path.stat().st_size < 1.5 * weights  # Adam's two moments would triple it
    with h5py.File(path) as h5:
        stored = []
        h5["optimizer_weights"].visititems(lambda n, obj: stored.append(n) if isinstance(obj, h5py.Dataset) else None)
    assert len(stored) <= 2  # its step and learning rate at most: no moments

"""Export: every format keeps the zeros, is written atomically, and computes what the Keras model computes."""

from __future__ import annotations

import hashlib
import zipfile

import h5py
import keras
import numpy as np
import pytest

from workers.engine import export
from workers.engine.errors import SpecError
from workers.engine.export import FORMATS, export_model, save_model_file, tflite_interpreter, tflite_kernels
from workers.engine.registry import prunable_weights

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
    return keras.Sequential([keras.Input((28, 28)), L.Flatten(), L.Dense(128, activation="relu", name="fc1"),
                             L.Dense(10, activation="softmax", name="out")], name="mlp")


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """A dense MLP trained briefly on real digits, a 90%-sparse copy, and both exported in every format."""
    x_train, y_train, x_test, _ = mnist
    keras.utils.set_random_seed(0)
    dense = _mlp()
    dense.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    dense.fit(x_train[:3000], y_train[:3000], epochs=1, batch_size=64, verbose=0)
    sparse = keras.models.clone_model(dense)
    sparse.set_weights(dense.get_weights())
    _prune(sparse, SPARSITY)
    sparse.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    sparse.optimizer.build(sparse.trainable_variables)  # as after fine-tuning: optimizer state in memory
    root = tmp_path_factory.mktemp("export")
    out = {
        "sparse": (root / "sparse", export_model(sparse, root / "sparse", list(FORMATS))),
        "dense": (root / "dense", export_model(dense, root / "dense", ["keras", "tflite"])),
    }
    return {"dense": dense, "sparse": sparse, "x": x_test[:256], "out": out}


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


def test_optimizer_state_is_not_exported(trained, tmp_path):
    out_dir, artifacts = trained["out"]["sparse"]
    with zipfile.ZipFile(out_dir / "model.keras") as z, z.open("model.weights.h5") as f, h5py.File(f) as h5:
        stored = []
        h5.visititems(lambda name, obj: stored.append(name) if isinstance(obj, h5py.Dataset) else None)
    optimizer_vars = [n for n in stored if n.startswith("optimizer")]
    assert len(optimizer_vars) <= 2  # iterations and learning rate at most: no Adam moments
    trained["sparse"].save(tmp_path / "with_optimizer.keras")
    assert artifacts["keras"].bytes < 0.5 * (tmp_path / "with_optimizer.keras").stat().st_size


@pytest.mark.parametrize("fmt", ["keras", "tflite"])
def test_gzip_of_a_sparse_model_is_much_smaller_than_of_the_dense_one(trained, fmt):
    sparse = trained["out"]["sparse"][1][fmt]
    dense = trained["out"]["dense"][1][fmt]
    assert sparse.bytes == pytest.approx(dense.bytes, rel=0.02)  # zeros are still stored densely
    assert sparse.gzip_bytes < 0.35 * dense.gzip_bytes
    assert dense.sparsity < 0.01


def _tflite_predict(path, x):
    interpreter = tflite_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_float_tflite_computes_the_keras_predictions(trained):
    out_dir, artifacts = trained["out"]["sparse"]
    x = trained["x"]
    expected = trained["sparse"].predict(x, verbose=0)
    np.testing.assert_allclose(_tflite_predict(out_dir / artifacts["tflite"].file, x), expected, atol=1e-5)


def test_int8_tflite_is_smaller_and_close_to_the_keras_predictions(trained):
    out_dir, artifacts = trained["out"]["sparse"]
    x = trained["x"]
    expected = trained["sparse"].predict(x, verbose=0)
    got = _tflite_predict(out_dir / artifacts["tflite_int8"].file, x)
    assert np.abs(got - expected).max() < 0.05
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.97
    assert artifacts["tflite_int8"].bytes < 0.4 * artifacts["tflite"].bytes


def test_tflite_kernels_of_a_cnn_match_the_model_kernels_after_batchnorm_folding(tmp_path):
    model = keras.Sequential([
        keras.Input((12, 12, 3)), L.Conv2D(16, 3, name="conv"), L.BatchNormalization(name="bn"), L.ReLU(),
        L.DepthwiseConv2D(3, name="dw"), L.Flatten(), L.Dense(10, name="fc"),
    ])
    bn = model.get_layer("bn")
    bn.set_weights([np.linspace(0.5, 1.5, 16), np.zeros(16), np.zeros(16), np.linspace(0.5, 2, 16)])
    _prune(model, 0.8)
    info = export_model(model, tmp_path, ["tflite"])["tflite"]
    total = sum(int(np.prod(w.shape)) for w in prunable_weights(model))
    assert info.params == total and info.note == ""  # every kernel found, nothing else counted
    assert info.sparsity_preserved and info.sparsity == pytest.approx(0.8, abs=1e-3)
    kernels = tflite_kernels(tflite_interpreter(tmp_path / info.file))
    assert sorted(k.size for k in kernels.values()) == sorted(int(np.prod(w.shape)) for w in prunable_weights(model))


def test_export_writes_only_the_requested_files_and_replaces_old_ones(trained, tmp_path):
    stale = tmp_path / "model.keras"
    stale.write_bytes(b"an old artifact")
    artifacts = export_model(trained["dense"], tmp_path, ["keras"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # no temporary file left behind
    assert artifacts["keras"].sha256 != hashlib.sha256(b"an old artifact").hexdigest()
    assert keras.saving.load_model(stale).count_params() == trained["dense"].count_params()


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    final = tmp_path / "model.tflite"
    final.write_bytes(b"previous")

    def crash(tmp):
        tmp.write_bytes(b"half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export._atomic_write(final, crash)
    assert final.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


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
    from workers.spec import TrainingSpec

    model = keras.models.clone_model(trained["dense"])
    model.set_weights(trained["dense"].get_weights())
    model_io.compile_model(model, TrainingSpec(), "sparse_categorical_crossentropy", ["accuracy"])
    assert model.get_compile_config()["steps_per_execution"] == model_io.STEPS_PER_EXECUTION > 1
    path = save_model_file(model, tmp_path / "m.keras")  # compiled, optimizer not built: no training ran
    reloaded = keras.saving.load_model(path)
    assert reloaded.get_compile_config()["steps_per_execution"] == 1
    assert reloaded.get_compile_config()["loss"] == model.get_compile_config()["loss"]
    np.testing.assert_array_equal(reloaded.predict(trained["x"], verbose=0), model.predict(trained["x"], verbose=0))

"""Dataset loading: arrays, held-out split, and validation against the model and the loss."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from tests import hostile
from workers.engine import model_io
from workers.engine.data import ARRAY_NAMES, load_dataset
from workers.engine.errors import DataError, SpecError
from workers.engine.names import ALLOWED_LOSSES

L = keras.layers
SPARSE = "sparse_categorical_crossentropy"


def _model(inputs, *layers, name="m"):
    x = inp = keras.Input(**inputs) if isinstance(inputs, dict) else keras.Input(inputs)
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x, name=name)


@pytest.fixture(scope="module")
def models():
    """Small untrained models, one per output kind the label checks distinguish."""
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    return {
        "digits": _model((28, 28), L.Flatten(), L.Dense(10, activation="softmax")),
        "logits": _model((28, 28), L.Flatten(), L.Dense(10)),
        "cnn": _model((28, 28, 1), L.Flatten(), L.Dense(10, activation="softmax")),
        "binary": _model((4,), L.Dense(1, activation="sigmoid")),
        "multilabel": _model((4,), L.Dense(3, activation="sigmoid")),
        "regression": _model((8,), L.Dense(1)),
        "regression2": _model((8,), L.Dense(2)),
        "tokens": _model(
            dict(shape=(5,), dtype="int32"), L.Embedding(20, 4), L.Flatten(), L.Dense(3, activation="softmax")
        ),
        "per_step": _model((6, 4), L.Dense(5, activation="softmax")),
        "any_length": _model((None, 4), L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")),
        "two_inputs": keras.Model([a, b], L.Dense(1)(L.Concatenate()([a, b])), name="two_inputs"),
    }


def _npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _load(path, model, loss=SPARSE, fraction=0.2, seed=0):
    return load_dataset(path, model, loss, fraction, seed)


def test_given_validation_arrays_are_used_as_given(tmp_path, mnist, models):
    x_train, y_train, x_test, y_test = mnist
    ds = _load(
        _npz(tmp_path, x_train=x_train[:500], y_train=y_train[:500], x_val=x_test[:100], y_val=y_test[:100]),
        models["digits"],
    )
    assert ds.split == "given" and ds.label_form == "sparse" and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.x_val.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train, x_train[:500])
    np.testing.assert_array_equal(ds.y_val, y_test[:100])
    assert ds.x_test is None and ds.y_test is None  # no test arrays in the file


def test_test_arrays_are_kept_apart_from_the_held_out_split(tmp_path, mnist, models):
    x_train, y_train, x_test, y_test = mnist
    path = _npz(tmp_path, x_train=x_train[:500], y_train=y_train[:500], x_test=x_test[:50], y_test=y_test[:50])
    ds = _load(path, models["digits"], fraction=0.2)
    # the held-out set is still taken from x_train; the test arrays are neither trained on nor held out
    assert ds.split == "held_out" and (len(ds.x_train), len(ds.x_val)) == (400, 100)
    assert ds.x_test.dtype == np.float32 and len(ds.x_test) == 50
    np.testing.assert_array_equal(ds.y_test, y_test[:50])
    np.testing.assert_array_equal(np.sort(np.concatenate([ds.y_train, ds.y_val])), np.sort(y_train[:500]))


@pytest.mark.parametrize(
    "n, fraction, n_val", [(100, 0.2, 20), (101, 0.25, 25), (10, 0.01, 1), (2, 0.99, 1), (7, 0.5, 4)]
)
def test_held_out_split_is_seeded_disjoint_and_complete(tmp_path, models, n, fraction, n_val):
    x = np.arange(n * 8, dtype="float32").reshape(n, 8)  # row i starts with 8*i: identifies the sample
    y = np.arange(n, dtype="float32")
    path = _npz(tmp_path, x_train=x, y_train=y)
    ds = _load(path, models["regression"], loss="mse", fraction=fraction, seed=3)
    assert ds.split == "held_out"
    assert (len(ds.x_train), len(ds.x_val)) == (n - n_val, n_val)
    train_ids, val_ids = ds.x_train[:, 0] / 8, ds.x_val[:, 0] / 8
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == list(range(n))
    np.testing.assert_array_equal(ds.y_train[:, 0], train_ids)  # labels stay with their samples
    np.testing.assert_array_equal(ds.y_val[:, 0], val_ids)
    assert np.all(np.diff(train_ids) > 0) and np.all(np.diff(val_ids) > 0)  # file order kept
    again = _load(path, models["regression"], loss="mse", fraction=fraction, seed=3)
    np.testing.assert_array_equal(again.x_val, ds.x_val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, True])
def test_a_validation_fraction_outside_zero_to_one_is_refused(tmp_path, models, fraction):
    path = _npz(tmp_path, x_train=np.zeros((10, 8), dtype="float32"), y_train=np.zeros(10))
    with pytest.raises(SpecError) as err:
        _load(path, models["regression"], loss="mse", fraction=fraction)
    assert err.value.field == "training.validation_fraction"


def test_a_different_seed_holds_out_different_samples(tmp_path, models):
    path = _npz(tmp_path, x_train=np.arange(800, dtype="float32").reshape(100, 8), y_train=np.zeros(100))
    a = _load(path, models["regression"], loss="mse", seed=0).x_val[:, 0]
    b = _load(path, models["regression"], loss="mse", seed=1).x_val[:, 0]
    assert set(a.tolist()) != set(b.tolist())


def test_uint8_images_are_cast_to_float32_without_rescaling(tmp_path, models):
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28, 1)).astype("uint8")
    x[0, 0, 0, 0] = 255
    ds = _load(_npz(tmp_path, x_train=x, y_train=np.arange(20) % 10), models["cnn"])
    assert ds.x_train.dtype == np.float32
    assert ds.x_train.max() == 255.0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ds.x_train, ds.x_val]).ravel()), np.sort(x.astype("float32").ravel())
    )


# loss -> (model, y for 12 samples, label form, number of classes)
LABELS = {
    "sparse_categorical_crossentropy": ("digits", np.arange(12) % 10, "sparse", 10),
    "categorical_crossentropy": ("digits", np.eye(10)[np.arange(12) % 10], "onehot", 10),
    "binary_crossentropy": ("binary", (np.arange(12) % 2).astype(bool), "binary", 2),
    "mse": ("regression", np.linspace(-3, 3, 12), "regression", None),
    "mean_squared_error": ("regression", np.linspace(-3, 3, 12)[:, None], "regression", None),
    "mae": ("regression", np.arange(12), "regression", None),
    "mean_absolute_error": ("regression", np.linspace(-3, 3, 12).astype("float16"), "regression", None),
    "huber": ("regression", np.linspace(-3, 3, 12), "regression", None),
}


def test_every_allowed_loss_has_a_label_form():
    assert set(LABELS) == set(ALLOWED_LOSSES) == set(model_io.LOSSES)


@pytest.mark.parametrize("loss", sorted(LABELS))
def test_labels_are_checked_and_typed_by_loss(tmp_path, models, loss):
    model_name, y, form, num_classes = LABELS[loss]
    model = models[model_name]
    x = np.random.default_rng(0).random((12, *model.inputs[0].shape[1:]), dtype="float32")
    ds = _load(_npz(tmp_path, x_train=x, y_train=y), model, loss=loss, fraction=0.25)
    assert (ds.label_form, ds.num_classes) == (form, num_classes)
    assert len(ds.y_train) == 9 and len(ds.y_val) == 3
    expected_kind = "i" if form == "sparse" else "f"
    assert ds.y_train.dtype.kind == expected_kind
    if form in ("regression", "binary"):
        assert ds.y_train.shape[1:] == (1,)  # (n,) targets take the output's shape (n, 1)
    model_io.compile_model(model, model_io.TrainingSettings(), loss, [])
    assert np.isfinite(model.evaluate(ds.x_val, ds.y_val, verbose=0))  # Keras accepts what we produce


def test_multilabel_sigmoid_targets_and_per_position_classes(tmp_path, models):
    y = np.random.default_rng(0).integers(0, 2, (10, 3))
    ds = _load(_npz(tmp_path, x_train=np.zeros((10, 4)), y_train=y), models["multilabel"], "binary_crossentropy")
    assert (ds.label_form, ds.num_classes, ds.y_train.shape[1:]) == ("binary", 3, (3,))
    y = np.random.default_rng(0).integers(0, 5, (10, 6))
    ds = _load(_npz(tmp_path, "steps.npz", x_train=np.zeros((10, 6, 4)), y_train=y), models["per_step"])
    assert ds.y_train.shape[1:] == (6,) and ds.num_classes == 5


def test_integer_inputs_of_embedding_models_stay_integers(tmp_path, models):
    x = np.random.default_rng(0).integers(0, 20, (10, 5)).astype("int64")
    ds = _load(_npz(tmp_path, x_train=x, y_train=np.arange(10) % 3), models["tokens"])
    assert ds.x_train.dtype.kind == "i"
    assert np.isin(ds.x_train, x).all()


def test_none_dimensions_of_the_model_input_match_any_size(tmp_path, models):
    ds = _load(_npz(tmp_path, x_train=np.zeros((4, 17, 4)), y_train=np.arange(4) % 3), models["any_length"])
    assert ds.x_train.shape[1:] == (17, 4)


def test_whole_number_float_labels_are_accepted_as_class_ids(tmp_path, models):
    ds = _load(
        _npz(tmp_path, x_train=np.zeros((10, 28, 28)), y_train=(np.arange(10) % 10).astype("float64")), models["digits"]
    )
    assert ds.y_train.dtype == np.int64


def _digits(n=10, **override):
    arrays = {"x_train": np.zeros((n, 28, 28), "float32"), "y_train": np.arange(n) % 10}
    arrays.update(override)
    return arrays


def _with(base: dict, name: str, index, value) -> dict:
    a = base[name].copy()
    a[index] = value
    return {**base, name: a}


# id -> (arrays, model, loss, message fragment)
BAD = {
    "label-out-of-range": (
        lambda: _with(_digits(20), "y_train", 17, 12),
        "digits",
        SPARSE,
        "y_train[17] = 12 is outside 0..9 for a 10-unit softmax output",
    ),
    "negative-label-in-val": (
        lambda: _with(_digits(x_val=np.zeros((5, 28, 28)), y_val=np.arange(5)), "y_val", 3, -1),
        "digits",
        SPARSE,
        "y_val[3] = -1 is outside 0..9",
    ),
    "logits-output-named": (
        lambda: _with(_digits(), "y_train", 2, 10),
        "logits",
        SPARSE,
        "10-unit linear (logits) output",
    ),
    "fractional-label": (
        lambda: _digits(y_train=np.array([0, 1, 2.5, 3, 4, 5, 6, 7, 8, 9])),
        "digits",
        SPARSE,
        "y_train[2] = 2.5 is not a whole class id",
    ),
    "bool-sparse-label": (
        lambda: _digits(y_train=np.ones(10, bool)),
        "digits",
        SPARSE,
        "y_train has dtype bool; sparse_categorical_crossentropy needs integer class ids",
    ),
    "one-hot-with-sparse-loss": (lambda: _digits(y_train=np.eye(10)), "digits", SPARSE, "looks one-hot encoded"),
    "ids-with-categorical-loss": (
        lambda: _digits(),
        "digits",
        "categorical_crossentropy",
        "holds one value per sample (class ids?)",
    ),
    "row-not-summing-to-one": (
        lambda: _with(_digits(y_train=np.eye(10)), "y_train", (4, 7), 1.0),
        "digits",
        "categorical_crossentropy",
        "y_train[4] sums to 2; categorical_crossentropy needs",
    ),
    "sparse-on-one-unit": (
        lambda: {"x_train": np.zeros((4, 8)), "y_train": np.zeros(4, "int64")},
        "regression",
        SPARSE,
        "needs an output with one unit per class (at least 2); the model has a 1-unit",
    ),
    "binary-target-above-one": (
        lambda: {"x_train": np.zeros((4, 4)), "y_train": np.array([0, 2.0, 1, 0])},
        "binary",
        "binary_crossentropy",
        "y_train[1] = 2.0 is outside [0, 1]",
    ),
    "regression-shape": (
        lambda: {"x_train": np.zeros((4, 8)), "y_train": np.zeros((4, 3))},
        "regression",
        "mse",
        "y_train has sample shape (3,) but the model output has shape (1,)",
    ),
    "regression-needs-two-targets": (
        lambda: {"x_train": np.zeros((4, 8)), "y_train": np.zeros(4)},
        "regression2",
        "huber",
        "y_train has sample shape () but the model output has shape (2,)",
    ),
    "regression-bool-targets": (
        lambda: {"x_train": np.zeros((4, 8)), "y_train": np.ones(4, bool)},
        "regression",
        "mae",
        "y_train has dtype bool; mae needs numeric targets",
    ),
    "input-shape": (
        lambda: _digits(x_train=np.zeros((10, 28, 29))),
        "digits",
        SPARSE,
        "x_train has sample shape (28, 29) but model input",
    ),
    "missing-channel-axis": (lambda: _digits(), "cnn", SPARSE, "add a channel axis (x[..., None])"),
    "nan-in-x": (
        lambda: _with(_digits(), "x_train", (5, 3, 4), np.nan),
        "digits",
        SPARSE,
        "x_train contains 1 NaN/Inf value(s); the first is x_train[5, 3, 4] = nan",
    ),
    "inf-in-y-val": (
        lambda: {
            "x_train": np.zeros((4, 8)),
            "y_train": np.zeros(4),
            "x_val": np.zeros((2, 8)),
            "y_val": np.array([1.0, np.inf]),
        },
        "regression",
        "mse",
        "y_val contains 1 NaN/Inf",
    ),
    "float64-beyond-float32": (
        lambda: _with(_digits(x_train=np.zeros((10, 28, 28), "float64")), "x_train", (1, 0, 0), 1e300),
        "digits",
        SPARSE,
        "x_train (as float32) contains",
    ),
    "sample-count": (
        lambda: _digits(y_train=np.arange(9) % 10),
        "digits",
        SPARSE,
        "x_train has 10 samples but y_train has 9",
    ),
    "val-sample-count": (
        lambda: _digits(x_val=np.zeros((3, 28, 28)), y_val=np.arange(4)),
        "digits",
        SPARSE,
        "x_val has 3 samples but y_val has 4",
    ),
    "one-sample": (lambda: _digits(1), "digits", SPARSE, "x_train has 1 sample; at least 2 are needed"),
    "empty-val": (
        lambda: _digits(x_val=np.zeros((0, 28, 28)), y_val=np.zeros(0, "int64")),
        "digits",
        SPARSE,
        "x_val is empty (shape (0, 28, 28))",
    ),
    "scalar": (lambda: _digits(y_train=np.array(3)), "digits", SPARSE, "y_train is a scalar"),
    "missing-y-train": (lambda: {"x_train": np.zeros((4, 28, 28))}, "digits", SPARSE, "has no array 'y_train'"),
    "x-val-without-y-val": (
        lambda: _digits(x_val=np.zeros((2, 28, 28))),
        "digits",
        SPARSE,
        "has 'x_val' but no 'y_val'; give both or neither",
    ),
    "x-test-without-y-test": (
        lambda: _digits(y_test=np.arange(2)),
        "digits",
        SPARSE,
        "has 'y_test' but no 'x_test'; give both or neither",
    ),
    "test-sample-count": (
        lambda: _digits(x_test=np.zeros((3, 28, 28)), y_test=np.arange(4)),
        "digits",
        SPARSE,
        "x_test has 3 samples but y_test has 4",
    ),
    "test-label-out-of-range": (
        lambda: _digits(x_test=np.zeros((3, 28, 28)), y_test=np.array([0, 10, 2])),
        "digits",
        SPARSE,
        "y_test[1] = 10 is outside 0..9",
    ),
    "test-shape": (
        lambda: _digits(x_test=np.zeros((3, 27, 28)), y_test=np.arange(3)),
        "digits",
        SPARSE,
        "x_test has sample shape (27, 28) but model input",
    ),
    "unknown-array": (
        lambda: _digits(x_valid=np.zeros((2, 28, 28))),
        "digits",
        SPARSE,
        "'x_valid' (did you mean 'x_val'?)",
    ),
    "bool-inputs": (
        lambda: _digits(x_train=np.zeros((10, 28, 28), bool)),
        "digits",
        SPARSE,
        "x_train has dtype bool; inputs must be integer or float arrays",
    ),
    "float-tokens": (
        lambda: {"x_train": np.zeros((4, 5)), "y_train": np.zeros(4, "int64")},
        "tokens",
        SPARSE,
        "x_train has dtype float64 but model input",
    ),
    "two-inputs": (
        lambda: {"x_train": np.zeros((4, 3)), "y_train": np.zeros(4)},
        "two_inputs",
        "mse",
        "model 'two_inputs' has 2 inputs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_refused_naming_the_array_and_the_problem(tmp_path, models, case):
    arrays_fn, model, loss, fragment = BAD[case]
    path = _npz(tmp_path, **arrays_fn())
    with pytest.raises(DataError, match=re.escape(fragment)):
        _load(path, models[model], loss=loss)


def test_only_the_six_documented_array_names_are_accepted():
    assert ARRAY_NAMES == ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@pytest.mark.parametrize("attack", sorted(hostile.DATASET_ATTACKS))
def test_hostile_dataset_files_are_refused_before_numpy_reads_them(tmp_path, models, attack):
    spec = hostile.DATASET_ATTACKS[attack]
    canary = tmp_path / "canary"
    path = spec.generate(tmp_path, canary)
    with pytest.raises(spec.error) as err:
        _load(path, models["digits"])
    assert spec.fragment in err.value.message
    assert not canary.exists()

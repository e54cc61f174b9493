"""Loading untrusted models (.keras, Keras 3 .h5, tf_keras 2.x .h5), reading their task, compiling them."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import hostile
from workers.engine import model_io
from workers.engine.errors import ModelRejected, SpecError, UnsupportedFile
from workers.engine.inspection import InspectLimits
from workers.engine.model_io import (
    CompileInfo,
    TrainingSettings,
    compile_model,
    load_model,
    read_compile_info,
    resolve_training,
)

L = keras.layers
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _sequential():
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, activation="relu", name="hidden"),
            L.Dense(3, activation="softmax", name="probs"),
        ],
        name="seq",
    )


def _functional_logits():
    inp = keras.Input((6,), name="features")
    h = L.Dense(8, activation="relu", name="hidden")(inp)
    h = L.BatchNormalization(name="bn")(h)
    return keras.Model(inp, L.Dense(3, name="logits")(h), name="func")


def _nested():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(4, activation="relu", name="inner_dense")], name="inner")
    inp = keras.Input((6,))
    h = L.Dense(8, name="outer_dense")(inp)
    return keras.Model(inp, L.Dense(1, name="out")(inner(h)), name="nested")


# name -> (builder, compile kwargs or None, expected (loss, metrics, from_logits))
MODELS = {
    "sequential": (
        _sequential,
        dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"]),
        ("sparse_categorical_crossentropy", ("accuracy",), None),
    ),
    "functional": (
        _functional_logits,
        dict(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy()],
        ),
        ("sparse_categorical_crossentropy", ("sparse_categorical_accuracy",), True),
    ),
    "nested": (_nested, dict(loss="mse", metrics=["mae"]), ("mse", ("mae",), None)),
    "uncompiled": (_sequential, None, None),
    "poisson": (_sequential, dict(loss="poisson"), None),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every model of MODELS saved as .keras and .h5, with its reference predictions."""
    keras.utils.set_random_seed(1)
    d = tmp_path_factory.mktemp("models")
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    out = {}
    for name, (build, compile_kwargs, _) in MODELS.items():
        model = build()
        if compile_kwargs is not None:
            model.compile(optimizer="adam", **compile_kwargs)
        for ext in ("keras", "h5"):
            model.save(d / f"{name}.{ext}")
        out[name] = (d, model.predict(x, verbose=0))
    return out, x


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("name", ["sequential", "functional", "nested"])
def test_loads_sequential_functional_and_nested_models_with_identical_predictions(saved, name, ext):
    models, x = saved
    d, expected = models[name]
    loaded = load_model(d / f"{name}.{ext}")
    assert loaded.format == ext
    assert loaded.inspection.format == ext
    assert not loaded.model.compiled  # compile=False: no saved loss/metric/optimizer object was deserialized
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("name", ["sequential", "functional", "nested"])
def test_saved_loss_and_metric_names_are_read_from_the_config(saved, name, ext):
    models, _ = saved
    loss, metrics, from_logits = MODELS[name][2]
    info = load_model(models[name][0] / f"{name}.{ext}").compile
    assert info is not None and info.usable
    assert (info.loss, info.metrics, info.from_logits) == (loss, metrics, from_logits)


def test_legacy_tf_keras_h5_loads_with_its_training_config():
    loaded = load_model(FIXTURES / "legacy_tf_keras.h5")
    assert loaded.format == "h5"
    assert loaded.inspection.keras_version.startswith("2.")
    assert loaded.model.name == "legacy_cnn"
    assert loaded.compile == CompileInfo(
        loss="sparse_categorical_crossentropy", metrics=("accuracy",), saved_loss="sparse_categorical_crossentropy"
    )
    x = np.random.default_rng(0).random((4, 12, 12, 1), dtype="float32")
    probs = loaded.model.predict(x, verbose=0)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model_io.output_activation(loaded.model) == "softmax"


@pytest.mark.parametrize("source, name", [("keras", "upload.bin"), ("h5", "upload.keras"), ("keras", "model.h5")])
def test_the_inspected_format_chooses_the_loader_not_the_file_name(saved, tmp_path, source, name):
    models, x = saved
    d, expected = models["sequential"]
    renamed = tmp_path / name
    shutil.copyfile(d / f"sequential.{source}", renamed)
    loaded = load_model(renamed)
    assert loaded.format == source
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary link left behind


def test_uncompiled_model_needs_a_loss_in_the_spec(saved):
    models, _ = saved
    loaded = load_model(models["uncompiled"][0] / "uncompiled.keras")
    assert loaded.compile is None
    with pytest.raises(SpecError, match="saved without a loss; set training.loss") as err:
        resolve_training(loaded, TrainingSettings())
    assert err.value.field == "training.loss"
    assert resolve_training(loaded, TrainingSettings(loss="categorical_crossentropy")) == (
        "categorical_crossentropy",
        ["accuracy"],
    )
    assert resolve_training(loaded, TrainingSettings(loss="huber")) == ("huber", ["mae"])


@pytest.mark.parametrize("ext", ["keras", "h5"])
def test_a_stock_loss_outside_the_allow_list_is_marked_unusable(saved, ext):
    models, _ = saved
    loaded = load_model(models["poisson"][0] / f"poisson.{ext}")
    assert loaded.compile is not None and not loaded.compile.usable
    assert "poisson" in loaded.compile.reason
    with pytest.raises(SpecError, match="poisson.*set training.loss"):
        resolve_training(loaded, TrainingSettings())
    assert resolve_training(loaded, TrainingSettings(loss="mse"))[0] == "mse"


def test_spec_overrides_the_saved_loss_and_metrics(saved):
    models, _ = saved
    loaded = load_model(models["sequential"][0] / "sequential.keras")
    assert resolve_training(loaded, TrainingSettings()) == ("sparse_categorical_crossentropy", ["accuracy"])
    spec = TrainingSettings(loss="categorical_crossentropy", metrics=["categorical_accuracy", "mae"])
    assert resolve_training(loaded, spec) == ("categorical_crossentropy", ["categorical_accuracy", "mae"])
    # a new loss alone keeps the saved metrics
    assert resolve_training(loaded, TrainingSettings(loss="mse")) == ("mse", ["accuracy"])


def _fn(name):
    return {"module": "builtins", "class_name": "function", "config": name, "registered_name": "function"}


@pytest.mark.parametrize(
    "config, loss, metrics, from_logits, reason",
    [
        (
            {"loss": "mean_absolute_error", "metrics": ["mse", "acc"]},
            "mean_absolute_error",
            ("mse", "accuracy"),
            None,
            None,
        ),
        ({"loss": _fn("huber_loss"), "metrics": [_fn("mae")]}, "huber", ("mae",), None, None),
        (
            {
                "loss": {"class_name": "BinaryCrossentropy", "config": {"from_logits": False, "label_smoothing": 0.0}},
                "metrics": [{"class_name": "AUC", "config": {}}, {"class_name": "BinaryAccuracy", "config": {}}],
            },
            "binary_crossentropy",
            ("binary_accuracy",),
            False,
            None,
        ),
        (
            {
                "loss": {"class_name": "Huber", "config": {"delta": 1.0}},
                "metrics": [
                    [{"class_name": "MeanMetricWrapper", "config": {"name": "acc", "fn": "categorical_accuracy"}}]
                ],
            },
            "huber",
            ("accuracy",),
            None,
            None,
        ),
        (
            {"loss": {"class_name": "MeanMetricWrapper", "config": {}}, "metrics": None},
            None,
            (),
            None,
            "'MeanMetricWrapper' is not supported",
        ),
        (
            {"loss": {"class_name": "CategoricalCrossentropy", "config": {"label_smoothing": 0.1}}, "metrics": []},
            None,
            (),
            None,
            "label_smoothing",
        ),
        (
            {"loss": {"out_a": "mse", "out_b": "mae"}, "metrics": {"out_a": ["mae"]}},
            None,
            ("mae",),
            None,
            "one loss per output",
        ),
        (
            {"loss": "kl_divergence", "metrics": ["accuracy", "accuracy"]},
            None,
            ("accuracy",),
            None,
            "'kl_divergence' is not supported",
        ),
    ],
    ids=[
        "strings",
        "functions",
        "loss-object",
        "tf-keras-wrapper",
        "not-a-loss",
        "label-smoothing",
        "multi-output",
        "stock-unsupported",
    ],
)
def test_compile_config_is_reduced_to_stock_names(config, loss, metrics, from_logits, reason):
    info = read_compile_info(config)
    assert (info.loss, info.metrics, info.from_logits) == (loss, metrics, from_logits)
    if reason is None:
        assert info.usable and info.reason is None
    else:
        assert not info.usable and reason in info.reason


def test_dropped_metrics_are_listed():
    info = read_compile_info({"loss": "mse", "metrics": [{"class_name": "AUC", "config": {}}, "mae"]})
    assert info.metrics == ("mae",) and info.dropped_metrics == ("AUC",)


@pytest.mark.parametrize("config", [None, {}, {"loss": None, "metrics": ["accuracy"]}])
def test_a_config_without_loss_means_uncompiled(config):
    assert read_compile_info(config) is None


@pytest.mark.parametrize(
    "attack",
    [
        "keras_lambda",
        "keras_builtins_exec",
        "keras_os_system",
        "h5_lambda",
        "h5_training_config_function",
        "pickle_model",
    ],
)
def test_hostile_model_files_are_refused_before_keras_loads_them(tmp_path, attack):
    spec = hostile.MODEL_ATTACKS[attack]
    canary = tmp_path / "canary"
    path = spec.generate(tmp_path, canary)
    with pytest.raises(spec.error) as err:
        load_model(path)
    assert spec.fragment in err.value.message
    assert not canary.exists()


def test_inspection_limits_are_applied(saved):
    path = saved[0]["sequential"][0] / "sequential.keras"
    with pytest.raises(ModelRejected, match="max_file_bytes"):
        load_model(path, limits=InspectLimits(max_file_bytes=1000))


def test_a_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("hello")
    with pytest.raises(UnsupportedFile, match="not a Keras model"):
        load_model(path)


def test_a_file_keras_cannot_build_is_rejected_with_the_reason(tmp_path):
    a = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")])
    b = keras.Sequential([keras.Input((4,)), L.Dense(5, name="d")])
    a.save(tmp_path / "a.keras")
    b.save(tmp_path / "b.keras")
    with (
        zipfile.ZipFile(tmp_path / "a.keras") as za,
        zipfile.ZipFile(tmp_path / "b.keras") as zb,
        zipfile.ZipFile(tmp_path / "mixed.keras", "w") as out,
    ):
        out.writestr("config.json", za.read("config.json"))
        out.writestr("model.weights.h5", zb.read("model.weights.h5"))  # weights of another model
    with pytest.raises(ModelRejected, match="mixed.keras: Keras could not load the model"):
        load_model(tmp_path / "mixed.keras")


# --------------------------------------------------------------------------- compiling


@pytest.mark.parametrize("optimizer", sorted(model_io.OPTIMIZERS))
def test_compile_model_builds_the_spec_optimizer_and_trains(optimizer):
    model = _sequential()
    spec = TrainingSettings(optimizer=optimizer, learning_rate=0.05)
    compile_model(model, spec, "sparse_categorical_crossentropy", ["accuracy"])
    assert isinstance(model.optimizer, model_io.OPTIMIZERS[optimizer])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = np.arange(32) % 3
    before = model.get_weights()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("loss", sorted(model_io.LOSSES))
def test_compile_model_accepts_every_allowed_loss(loss):
    units = 1 if model_io.LOSSES[loss].label_form in ("regression", "binary") else 3
    model = keras.Sequential([keras.Input((4,)), L.Dense(units, activation="sigmoid" if units == 1 else "softmax")])
    compile_model(model, TrainingSettings(), loss, list(model_io.LOSSES[loss].default_metrics))
    x = np.random.default_rng(0).random((8, 4), dtype="float32")
    labels = {
        "sparse": np.arange(8) % 3,
        "onehot": np.eye(3, dtype="float32")[np.arange(8) % 3],
        "binary": (np.arange(8) % 2).astype("float32")[:, None],
        "regression": np.linspace(0, 1, 8, dtype="float32")[:, None],
    }
    y = labels[model_io.LOSSES[loss].label_form]
    assert np.isfinite(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])


@pytest.mark.parametrize(
    "build, activation, from_logits",
    [
        (lambda: keras.Sequential([keras.Input((4,)), L.Dense(3, activation="softmax")]), "softmax", False),
        (lambda: keras.Sequential([keras.Input((4,)), L.Dense(3)]), "linear", True),
        (lambda: keras.Sequential([keras.Input((4,)), L.Dense(3), L.Softmax(), L.Dropout(0.1)]), "softmax", False),
        (lambda: keras.Sequential([keras.Input((4,)), L.Dense(3), L.Activation("sigmoid")]), "sigmoid", False),
        (_nested, "linear", True),
        (lambda: _two_branch_add(), None, False),
    ],
    ids=["softmax", "logits", "softmax-then-dropout", "activation-layer", "nested", "add"],
)
def test_cross_entropy_from_logits_follows_the_output_activation(build, activation, from_logits):
    model = build()
    assert model_io.output_activation(model) == activation
    compile_model(model, TrainingSettings(), "categorical_crossentropy", ["accuracy"])
    assert model.loss.get_config()["from_logits"] is from_logits
    compile_model(model, TrainingSettings(), "categorical_crossentropy", [], from_logits=not from_logits)
    assert model.loss.get_config()["from_logits"] is (not from_logits)


def _two_branch_add():
    inp = keras.Input((4,))
    return keras.Model(inp, L.Add()([L.Dense(3)(inp), L.Dense(3)(inp)]))


@pytest.mark.parametrize(
    "loss, metrics, field", [("poisson", [], "training.loss"), ("mse", ["auc"], "training.metrics")]
)
def test_compile_model_refuses_names_off_the_allow_list(loss, metrics, field):
    with pytest.raises(SpecError) as err:
        compile_model(_sequential(), TrainingSettings(), loss, metrics)
    assert err.value.field == field


def test_compile_model_refuses_an_optimizer_off_the_list():
    with pytest.raises(SpecError, match="'lion' is not supported.*adam") as err:
        compile_model(_sequential(), TrainingSettings(optimizer="lion"), "mse", [])
    assert err.value.field == "training.optimizer"


@pytest.mark.parametrize(
    "values, field",
    [
        ({"batch_size": 0}, "training.batch_size"),
        ({"batch_size": 2.0}, "training.batch_size"),
        ({"learning_rate": 0.0}, "training.learning_rate"),
        ({"validation_fraction": 1.0}, "training.validation_fraction"),
        ({"batchnorm_samples": True}, "training.batchnorm_samples"),
    ],
)
def test_training_settings_refuse_values_out_of_range_naming_the_field(values, field):
    with pytest.raises(SpecError) as err:
        TrainingSettings(**values)
    assert err.value.field == field and field in err.value.message


def test_training_settings_hold_metrics_as_a_tuple():
    assert TrainingSettings(metrics=["accuracy", "mae"]).metrics == ("accuracy", "mae")
    assert TrainingSettings().metrics is None and TrainingSettings().loss is None

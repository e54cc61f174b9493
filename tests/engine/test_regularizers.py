"""Penalties on prunable weights: the loss really includes them, group lasso empties units, configs stay clean."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from workers.engine.errors import SpecError
from workers.engine.registry import prunable_weights
from workers.engine.regularizers import GroupLasso, WeightPenalty, attach_regularization

L = keras.layers

# the unit axis of each kind of weight, as the issue defines it (independent of the registry's table)
UNIT_AXIS = {
    ("Dense", "kernel"): -1,
    ("Conv2D", "kernel"): -1,
    ("Conv2DTranspose", "kernel"): -2,
    ("DepthwiseConv2D", "depthwise_kernel"): -2,
    ("SeparableConv2D", "depthwise_kernel"): -2,
    ("SeparableConv2D", "pointwise_kernel"): -1,
}


def conv_model() -> keras.Model:
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="out")(x))


def numpy_penalty(weights, l1, l2, gl) -> float:
    total = 0.0
    for w in weights:
        a = w.variable.numpy().astype(np.float64)
        axis = UNIT_AXIS[(w.layer_type, w.role)] % a.ndim
        other = tuple(i for i in range(a.ndim) if i != axis)
        total += l1 * np.abs(a).sum() + l2 * np.square(a).sum() + gl * np.sqrt(np.square(a).sum(axis=other)).sum()
    return total


PENALTIES = [(1e-3, 0.0, 0.0), (0.0, 1e-2, 0.0), (0.0, 0.0, 1e-2), (1e-3, 2e-3, 5e-3)]


@pytest.mark.parametrize("l1, l2, gl", PENALTIES, ids=["l1", "l2", "group_lasso", "all"])
def test_model_losses_equal_the_numpy_penalty_on_every_kernel_kind(l1, l2, gl):
    model = conv_model()
    weights = prunable_weights(model)
    assert {(w.layer_type, w.role) for w in weights} == set(UNIT_AXIS)
    assert model.losses == []
    handle = attach_regularization(weights, l1=l1, l2=l2, group_lasso=gl)
    got = float(sum(keras.ops.convert_to_numpy(x) for x in model.losses))
    assert got == pytest.approx(numpy_penalty(weights, l1, l2, gl), rel=1e-5)
    handle.detach()
    assert model.losses == []


@pytest.mark.parametrize("l1, l2, gl", PENALTIES, ids=["l1", "l2", "group_lasso", "all"])
def test_compiled_loss_includes_the_penalty_until_detached_and_recompiled(l1, l2, gl):
    model = conv_model()
    weights = prunable_weights(model)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    y = np.arange(32) % 3
    handle = attach_regularization(weights, l1=l1, l2=l2, group_lasso=gl)
    model.compile("sgd", "sparse_categorical_crossentropy")
    with_penalty = model.evaluate(x, y, batch_size=32, verbose=0)
    direct = model.compute_loss(x, y, model(x))
    handle.detach()
    model.compile("sgd", "sparse_categorical_crossentropy")
    without = model.evaluate(x, y, batch_size=32, verbose=0)
    expected = numpy_penalty(weights, l1, l2, gl)
    assert with_penalty - without == pytest.approx(expected, rel=1e-3)
    assert float(direct) - without == pytest.approx(expected, rel=1e-3)


def test_an_existing_kernel_regularizer_is_kept_summed_and_restored():
    own = keras.regularizers.L2(0.5)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, kernel_regularizer=own, name="fc")])
    (w,) = prunable_weights(model)
    a = w.variable.numpy()
    handle = attach_regularization([w], l1=0.1)
    assert float(sum(model.losses)) == pytest.approx(0.5 * np.square(a).sum() + 0.1 * np.abs(a).sum(), rel=1e-5)
    handle.detach()
    assert w.variable.regularizer is own
    handle.detach()  # idempotent


def test_zero_penalties_attach_nothing():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    handle = attach_regularization(prunable_weights(model))
    assert handle.weights == [] and model.losses == []


@pytest.mark.parametrize(
    "field, kwargs",
    [("l1", {"l1": -1.0}), ("l2", {"l2": float("nan")}), ("group_lasso", {"group_lasso": float("inf")})],
)
def test_invalid_penalty_weights_are_a_spec_error_naming_the_field(field, kwargs):
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    with pytest.raises(SpecError, match=f"{field} must be a finite number >= 0") as err:
        attach_regularization(prunable_weights(model), **kwargs)
    assert err.value.field == field


def test_group_lasso_value_gradient_and_config():
    w = np.zeros((4, 3), "float32")
    w[:, 0] = [3.0, 4.0, 0.0, 0.0]  # norm 5
    w[:, 1] = [1.0, 0.0, 0.0, 0.0]  # norm 1, unit 2 all zero (as after pruning)
    reg = GroupLasso(0.5, axis=-1)
    assert float(reg(tf.constant(w))) == pytest.approx(0.5 * 6.0)
    assert float(GroupLasso(1.0, axis=0)(tf.constant(w))) == pytest.approx(np.sqrt(np.square(w).sum(axis=1)).sum())
    v = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = reg(v)
    grad = tape.gradient(loss, v).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[:, 2] == 0)
    np.testing.assert_allclose(grad[:, 0], 0.5 * w[:, 0] / 5.0, rtol=1e-6)
    again = GroupLasso.from_config(reg.get_config())
    assert (again.weight, again.axis) == (0.5, -1)
    assert WeightPenalty(0.1, 0.2, 0.3, axis=-2).get_config() == {"l1": 0.1, "l2": 0.2, "group_lasso": 0.3, "axis": -2}
    with pytest.raises(SpecError, match="axis must be an integer"):
        GroupLasso(0.1, axis="last")


def test_exported_config_carries_no_regularizer_even_while_attached(tmp_path):
    model = conv_model()
    handle = attach_regularization(prunable_weights(model), l1=1e-4, l2=1e-4, group_lasso=1e-3)
    path = tmp_path / "regularized.keras"
    model.save(path)
    handle.detach()
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    layers = {layer["config"]["name"]: layer["config"] for layer in config["config"]["layers"]}
    for name in ("conv", "dw", "sep", "up", "out"):
        regs = {k: v for k, v in layers[name].items() if k.endswith("regularizer")}
        assert regs and all(v is None for v in regs.values()), (name, regs)
    text = json.dumps(config)
    assert "GroupLasso" not in text and "WeightPenalty" not in text
    loaded = keras.saving.load_model(path)  # stock loader, no custom objects
    assert loaded.losses == []


@pytest.mark.slow
def test_group_lasso_drives_many_hidden_units_to_near_zero_norm_on_mnist(mnist):
    x, y, x_test, y_test = mnist

    def build():
        return keras.Sequential(
            [
                keras.Input((28, 28)),
                L.Flatten(),
                L.Dense(64, activation="relu", name="fc1"),
                L.Dense(10, activation="softmax", name="out"),
            ]
        )

    keras.utils.set_random_seed(0)
    base = build()
    base.compile("adam", "sparse_categorical_crossentropy")
    base.fit(x, y, epochs=1, batch_size=128, verbose=0)
    start = base.get_weights()
    start_norms = np.linalg.norm(start[0], axis=0)

    def finetune(group_lasso: float) -> tuple[np.ndarray, float]:
        model = build()
        model.set_weights(start)
        weights = [w for w in prunable_weights(model) if w.path == "fc1"]
        handle = attach_regularization(weights, group_lasso=group_lasso) if group_lasso else None
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=2, batch_size=128, verbose=0)
        if handle is not None:
            handle.detach()
        acc = model.evaluate(x_test, y_test, verbose=0)[1]
        return np.linalg.norm(model.get_layer("fc1").kernel.numpy(), axis=0), acc

    plain_norms, plain_acc = finetune(0.0)
    lasso_norms, lasso_acc = finetune(3e-2)
    small = 0.1 * np.median(start_norms)
    print(
        f"\nunits with norm < {small:.3f}: plain {np.sum(plain_norms < small)}/64, "
        f"group lasso {np.sum(lasso_norms < small)}/64; accuracy {plain_acc:.3f} vs {lasso_acc:.3f}"
    )
    assert np.sum(plain_norms < small) <= 2
    assert np.sum(lasso_norms < small) >= 16
    assert lasso_acc > 0.85

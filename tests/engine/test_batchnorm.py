"""BatchNorm re-estimation: exact population statistics, inference accuracy restored, every BN layer reached.

The accuracy tests train small BN / depthwise / residual-Add / squeeze-excite (Multiply) CNNs on the real digits
(downsampled to 14x14) with BN momentum 0.999, so the moving statistics barely leave their initial values (mean 0,
variance 1) while the weights learn: the model is good in training mode and poor in inference mode, which is what
pruning, a structured rebuild or a short fine-tune do to real BN networks. Re-estimation must bring held-out
inference accuracy back to the training accuracy.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from workers.engine.batchnorm import batchnorm_layers, reestimate_batchnorm

L = keras.layers


def _digits(mnist, n_train=3000, n_val=1000):
    x_train, y_train, x_val, y_val = mnist

    def small(x):
        return x.reshape(len(x), 14, 2, 14, 2).mean(axis=(2, 4))[..., None].astype("float32")

    return small(x_train[:n_train]), y_train[:n_train], small(x_val[:n_val]), y_val[:n_val]


def _bn(name):
    return L.BatchNormalization(momentum=0.999, name=name)


def _cnn(kind: str) -> keras.Model:
    inp = keras.Input((14, 14, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU()(_bn("stem_bn")(x))
    if kind == "depthwise":
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
        x = L.ReLU()(_bn("dw_bn")(x))
        x = _bn("pw_bn")(L.Conv2D(16, 1, use_bias=False, name="pw")(x))
    elif kind == "residual":
        y = L.ReLU()(_bn("a_bn")(L.Conv2D(16, 3, padding="same", use_bias=False, name="conv_a")(x)))
        y = _bn("b_bn")(L.Conv2D(16, 3, padding="same", use_bias=False, name="conv_b")(y))
        x = L.ReLU()(L.Add()([x, y]))
    elif kind == "squeeze_excite":
        x = L.Activation("swish")(_bn("c_bn")(L.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(x)))
        s = L.GlobalAveragePooling2D(keepdims=True)(x)
        s = L.Conv2D(4, 1, activation="swish", name="se_reduce")(s)
        s = L.Conv2D(16, 1, activation="sigmoid", name="se_expand")(s)
        x = L.Multiply()([x, s])
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.3)(x)
    out = L.Dense(10, activation="softmax", name="out")(x)
    return keras.Model(inp, out, name=kind)


def _accuracy(model, x, y) -> float:
    p = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(p, axis=1) == y))


@pytest.mark.parametrize("kind", ["depthwise", "residual", "squeeze_excite"])
def test_reestimation_restores_inference_accuracy_to_training_accuracy(mnist, kind):
    x, y, x_val, y_val = _digits(mnist, n_train=2500)
    model = _cnn(kind)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    train_accuracy = history.history["accuracy"][-1]  # measured in training mode: batch statistics
    lagging = _accuracy(model, x_val, y_val)
    info = reestimate_batchnorm(model, x, batch_size=128, max_samples=2048)
    restored = _accuracy(model, x_val, y_val)
    assert info == {"layers": len(batchnorm_layers(model)), "samples": 2048, "batches": 16}
    # measured (seed 0): training 0.87 / 0.85 / 0.89, lagging 0.21 / 0.83 / 0.88, restored 0.95 / 0.95 / 0.97
    assert train_accuracy > 0.8  # the weights learned the task
    assert restored >= train_accuracy - 0.02, (restored, train_accuracy, lagging)
    assert restored >= lagging + 0.05, (restored, lagging)  # the lag was real and re-estimation removed it


def _tiny(dropout: float = 0.0) -> keras.Model:
    """Dense -> Dropout -> BN -> ReLU -> Dense -> BN; the second BN's input depends on the first BN."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(5, name="fc1"),
            L.Dropout(dropout, name="drop"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(),
            L.Dense(4, name="fc2"),
            L.BatchNormalization(name="bn2"),
        ]
    )


def _bn_inputs(model, x) -> dict[str, np.ndarray]:
    """Each BN layer's input in inference mode, by running the layers one by one in numpy-checked order."""
    inputs, h = {}, x
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            inputs[layer.name] = np.asarray(h, dtype=np.float64)
        h = layer(h, training=False)
    return inputs


def test_statistics_equal_the_exact_population_statistics_of_the_bn_inputs():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (50, 6)).astype("float32")
    model = _tiny()
    info = reestimate_batchnorm(model, x, batch_size=64)  # one batch: the pass normalizes with population stats
    assert info["layers"] == 2 and info["samples"] == 50
    for name, h in _bn_inputs(model, x).items():
        bn = model.get_layer(name)
        np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-5)


def test_batches_are_combined_exactly_not_by_momentum():
    """The first BN's input does not depend on other BNs: 7 uneven batches must give the exact statistics."""
    rng = np.random.default_rng(2)
    x = rng.normal(-1.0, 5.0, (50, 6)).astype("float32")
    model = _tiny()
    info = reestimate_batchnorm(model, x, batch_size=8)
    assert info["batches"] == 7
    h = _bn_inputs(model, x)["bn1"]
    bn = model.get_layer("bn1")
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-5)


def test_conv_statistics_are_per_channel_over_batch_and_positions():
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 1.5, (20, 5, 5, 2)).astype("float32")
    conv = L.Conv2D(3, 3, name="conv")
    model = keras.Sequential([keras.Input((5, 5, 2)), conv, L.BatchNormalization(name="bn")])
    reestimate_batchnorm(model, x, batch_size=6)
    h = np.asarray(conv(x), dtype=np.float64)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_dropout_stays_in_inference_mode():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, (64, 6)).astype("float32")
    model = _tiny(dropout=0.8)  # training-mode dropout would scale kept inputs by 5 and the variance with them
    reestimate_batchnorm(model, x, batch_size=64)
    h = np.asarray(model.get_layer("fc1")(x), dtype=np.float64)
    np.testing.assert_allclose(model.get_layer("bn1").moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-5)


def test_nested_models_are_reestimated_and_layers_restored():
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, (40, 6)).astype("float32")
    inner_in = keras.Input((6,))
    inner = keras.Model(
        inner_in, L.BatchNormalization(name="inner_bn")(L.Dense(5, name="inner_fc")(inner_in)), name="inner"
    )
    model = keras.Sequential([keras.Input((6,)), inner, L.Dense(3, name="fc"), L.BatchNormalization(name="outer_bn")])
    info = reestimate_batchnorm(model, x, batch_size=64)
    assert info["layers"] == 2
    h_inner = np.asarray(inner.get_layer("inner_fc")(x), dtype=np.float64)
    np.testing.assert_allclose(
        inner.get_layer("inner_bn").moving_mean.numpy(), h_inner.mean(axis=0), rtol=1e-5, atol=1e-5
    )
    h_outer = np.asarray(model.get_layer("fc")(inner(x, training=False)), dtype=np.float64)
    np.testing.assert_allclose(
        model.get_layer("outer_bn").moving_variance.numpy(), h_outer.var(axis=0), rtol=1e-4, atol=1e-5
    )
    # the layers behave as before afterwards: inference uses the (new) moving statistics
    bn = model.get_layer("outer_bn")
    assert "call" not in vars(bn)
    expected = (h_outer - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    expected = expected * bn.gamma.numpy() + bn.beta.numpy()
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_model_without_batchnorm_is_left_untouched():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4), L.Dropout(0.5), L.Dense(2)])
    weights = [w.copy() for w in model.get_weights()]
    info = reestimate_batchnorm(model, np.ones((10, 6), "float32"))
    assert info["layers"] == 0 and info["samples"] == 0
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_samples_are_bounded_by_max_samples():
    x = np.random.default_rng(6).normal(size=(300, 6)).astype("float32")
    info = reestimate_batchnorm(_tiny(), x, batch_size=32, max_samples=100)
    assert info["samples"] == 100 and info["batches"] == 4

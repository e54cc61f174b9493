"""Benign models for the inspection tests: real models saved by Keras 3, and what Keras itself says about them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras

ROOT = Path(__file__).resolve().parents[3]
LEGACY_H5 = ROOT / "tests" / "fixtures" / "legacy_tf_keras.h5"  # saved by tf_keras 2.x, committed
L = keras.layers


def sequential():
    return keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(16, activation="relu", name="fc1"),
            L.Dropout(0.1),
            L.Dense(3, activation="softmax", name="out"),
        ],
        name="seq",
    )


def functional_add_concat_bn():
    inputs = keras.Input((10, 10, 2))
    a = L.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    a = L.BatchNormalization(name="bn_a")(a)
    b = L.Conv2D(4, 1, name="conv_b")(inputs)
    x = L.Add(name="add")([a, b])
    x = L.Concatenate(name="concat")([x, b])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(5, activation="softmax")(x), name="branchy")


def nested():
    inner = keras.Sequential(
        [keras.Input((6,)), L.Dense(6, activation="tanh"), L.BatchNormalization()], name="inner_block"
    )
    inputs = keras.Input((6,))
    x = inner(inputs)
    x = L.Add()([x, inputs])
    return keras.Model(inputs, L.Dense(2)(x), name="outer")


def zoo():
    """Many stock layers, initializers, regularizers, constraints: the allow-list must cover what Keras writes."""
    image = keras.Input((16, 16, 3), name="image")
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    x = L.Rescaling(1 / 255.0)(image)
    x = L.Normalization(mean=[0.5, 0.5, 0.5], variance=[0.25, 0.25, 0.25])(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.Conv2D(
        4,
        3,
        kernel_regularizer=keras.regularizers.L1L2(1e-4, 1e-4),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        kernel_initializer=keras.initializers.HeNormal(seed=1),
    )(x)
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
    parts = [
        L.Add()([x, e]),
        L.Subtract()([x, e]),
        L.Multiply()([x, e]),
        L.Average()([x, e]),
        L.Maximum()([x, e]),
        L.Minimum()([x, e]),
        L.Dot(axes=1)([x, e]),
    ]
    x = L.Concatenate()(parts)
    x = L.Activation("relu")(x)
    x = L.Dense(3)(x)
    outputs = L.Softmax()(x)
    return keras.Model([image, tokens], outputs, name="zoo")


def recurrent():
    inputs = keras.Input((5, 4))
    x = L.LSTM(3, return_sequences=True)(inputs)
    x = L.GRU(3, return_sequences=True)(x)
    x = L.MultiHeadAttention(num_heads=2, key_dim=2)(x, x)
    x = L.SimpleRNN(2)(x)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(x), name="recurrent")


BENIGN = {
    "sequential": sequential,
    "functional": functional_add_concat_bn,
    "nested": nested,
    "zoo": zoo,
    "recurrent": recurrent,
}


def compile_model(model, optimizer="adam"):
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def leaf_layers(model) -> int:
    """Layers that compute, as Keras sees them: leaves of nested models, InputLayer not counted."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += leaf_layers(layer)
        elif not isinstance(layer, L.InputLayer):
            count += 1
    return count


def keras_members(saved) -> dict[str, bytes]:
    """The members of the saved benign Sequential .keras file, by name."""
    with zipfile.ZipFile(saved["sequential", "keras"][0]) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}

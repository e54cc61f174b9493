"""Model measurements checked against hand counts on small models."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib

import keras
import numpy as np
import pytest

from workers.engine import metrics

L = keras.layers


def _seq(input_shape, *layers, name="m"):
    return keras.Sequential([keras.Input(input_shape), *layers], name=name)


def test_latency_reports_positive_median_and_spread_per_batch_size():
    model = _seq((28, 28, 1), L.Conv2D(4, 3), L.Flatten(), L.Dense(10))
    result = metrics.latency(model, batch_sizes=(1, 8), runs=5)
    assert set(result) == {"batch_1", "batch_8"}
    for key, b in (("batch_1", 1), ("batch_8", 8)):
        r = result[key]
        assert r["batch_size"] == b and r["runs"] == 5
        assert 0 < r["min"] <= r["p10"] <= r["p25"] <= r["median"] <= r["p75"] <= r["p90"]
        assert r["mean"] > 0


def test_latency_stops_at_its_time_budget_once_enough_runs_are_in_and_records_how_many():
    model = _seq((64, 64, 3), L.Conv2D(32, 3), L.Conv2D(32, 3), L.Flatten(), L.Dense(10))
    budgeted = metrics.latency(model, batch_sizes=(8,), runs=1000, budget_s=0.0)["batch_8"]
    assert budgeted["runs"] == metrics.LATENCY_MIN_RUNS  # a zero budget still takes enough runs for a spread
    assert budgeted["p25"] <= budgeted["median"] <= budgeted["p75"]
    unbounded = metrics.latency(model, batch_sizes=(8,), runs=12, budget_s=60.0)["batch_8"]
    assert unbounded["runs"] == 12  # within its budget every requested run is taken


def test_latency_handles_integer_and_multiple_inputs():
    a = keras.Input((5,), dtype="int32")
    b = keras.Input((None, 2))
    h = L.Flatten()(L.Embedding(10, 3)(a))
    model = keras.Model([a, b], L.Concatenate()([h, L.GlobalAveragePooling1D()(b)]))
    result = metrics.latency(model, batch_sizes=(2,), runs=3)
    assert result["batch_2"]["median"] > 0


def test_cpu_copy_has_host_variables_and_computes_the_same_outputs():
    model = _seq((6,), L.Dense(4, activation="relu"), L.BatchNormalization(), L.Dense(2))
    copy = metrics.cpu_copy(model)
    assert copy is not model
    assert all("CPU" in v.value.device for v in copy.weights)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_file_size_is_the_gzip_stream_size_at_gzips_default_level(tmp_path):
    rng = np.random.default_rng(0)
    zeros, noise = tmp_path / "zeros.bin", tmp_path / "noise.bin"
    zeros.write_bytes(bytes(1 << 20))
    noise.write_bytes(rng.bytes(1 << 18))
    z, n = metrics.file_size(zeros), metrics.file_size(noise)
    assert z["bytes"] == 1 << 20 and n["bytes"] == 1 << 18
    assert z["gzip_bytes"] < 0.01 * z["bytes"]
    assert n["gzip_bytes"] >= n["bytes"]  # random bytes do not compress
    for path, result in ((zeros, z), (noise, n)):
        reference = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
        assert abs(result["gzip_bytes"] - len(reference)) <= 8  # same deflate stream; headers may differ slightly


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    data = np.random.default_rng(1).bytes(3 << 20)  # several read chunks
    path.write_bytes(data)
    assert metrics.sha256_file(path) == hashlib.sha256(data).hexdigest()


def _bn_net(activation="softmax"):
    return _seq(
        (6,),
        L.Dense(16, name="d1"),
        L.BatchNormalization(),
        L.ReLU(),
        L.Dropout(0.5),
        L.Dense(4, activation=activation, name="out"),
    )


@pytest.mark.parametrize(
    "loss, activation, metric_names",
    [
        ("sparse_categorical_crossentropy", "softmax", ["accuracy"]),
        (
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            None,
            ["accuracy", "sparse_top_k_categorical_accuracy"],
        ),
        ("mse", None, ["mae"]),
    ],
)
def test_evaluate_gives_what_keras_evaluate_gives(loss, activation, metric_names):
    keras.utils.set_random_seed(1)
    model = _bn_net(activation)
    model.compile("adam", loss, metrics=metric_names)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype("float32")
    y = rng.integers(0, 4, 300) if loss != "mse" else rng.standard_normal((300, 4)).astype("float32")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # moving statistics and dropout matter at inference
    expected = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    got = metrics.evaluate(model, x, y, batch_size=64)  # 300 = 4 full batches and a short one
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name


def test_evaluate_includes_the_models_own_regularization_losses():
    model = _seq((6,), L.Dense(4, activation="softmax", kernel_regularizer=keras.regularizers.L2(1.0)))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).standard_normal((50, 6)).astype("float32")
    y = np.zeros(50, dtype="int64")
    expected = model.evaluate(x, y, verbose=0, return_dict=True)
    got = metrics.evaluate(model, x, y)
    assert got["loss"] == pytest.approx(float(expected["loss"]), rel=1e-6)
    plain = keras.losses.sparse_categorical_crossentropy(y, model.predict(x, verbose=0)).numpy().mean()
    assert got["loss"] > plain + 0.1  # the L2 penalty is in


def test_predict_batched_handles_lists_of_inputs_and_a_short_last_batch():
    a, b = np.arange(10.0).reshape(10, 1), np.ones((10, 1))
    out = metrics.predict_batched(lambda batch: batch[0] + batch[1], [a, b], batch_size=4)
    np.testing.assert_array_equal(out, a + 1)
    assert out.dtype == np.float32


def _gzip_blocks(path) -> bytes:
    """The whole gzip stream whose size `file_size` gives for a file of several blocks: header, the blocks' deflate
    data (`metrics._deflate_block`), CRC-32 and length."""
    data = path.read_bytes()
    blocks = max(1, -(-len(data) // metrics.GZIP_BLOCK))
    body = b"".join(metrics._deflate_block(path, i, blocks) for i in range(blocks))
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def test_file_size_of_a_file_in_several_blocks_is_a_valid_gzip_stream_near_the_serial_size(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "GZIP_BLOCK", 1 << 18)  # 5 blocks of a 1.1 MiB half-sparse float file
    rng = np.random.default_rng(2)
    w = rng.standard_normal(300_000).astype("float32")
    w[rng.random(w.size) < 0.5] = 0.0
    path = tmp_path / "w.bin"
    path.write_bytes(w.tobytes())
    stream = _gzip_blocks(path)
    assert gzip.decompress(stream) == path.read_bytes()  # header, blocks and trailer form one gzip file
    result = metrics.file_size(path)
    assert result["gzip_bytes"] == len(stream)
    serial = len(gzip.compress(path.read_bytes(), compresslevel=metrics.GZIP_LEVEL, mtime=0))
    assert abs(result["gzip_bytes"] - serial) <= 0.001 * serial  # primed blocks lose next to nothing


def test_forward_is_traced_once_for_every_batch_size_and_shared_by_evaluate_and_latency():
    model = _seq((6,), L.Dense(4, activation="relu"), L.Dense(3, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(70, 6)), rng.integers(0, 3, 70)  # float64 inputs: cast to the model's float32
    got = metrics.evaluate(model, x, y, batch_size=32)  # batches of 32, 32 and 6
    metrics.latency(model, batch_sizes=(1, 5), runs=3)
    fn = metrics.forward(model)
    assert fn.experimental_get_tracing_count() == 1
    expected = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert got == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-5)
    model.layers[0].kernel.assign(np.zeros((6, 4), "float32"))  # weights changed in place: the trace reads them
    np.testing.assert_allclose(fn(np.asarray(x[:4], "float32")), model.predict(x[:4], verbose=0), rtol=1e-6)
    assert metrics.forward(model) is fn


def test_weights_fingerprint_is_equal_for_equal_weights_only():
    model = _seq((6,), L.Dense(4), L.BatchNormalization(), L.Dense(2))
    first = metrics.weights_fingerprint(model)
    assert metrics.weights_fingerprint(model) == first
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    assert metrics.weights_fingerprint(clone) == first
    moving_mean = model.layers[1].moving_mean
    moving_mean.assign(moving_mean.numpy() + np.float32(1e-7))  # one statistic, the smallest change
    assert metrics.weights_fingerprint(model) != first


def test_the_cached_inference_function_does_not_keep_a_model_alive():
    import gc
    import weakref

    model = _seq((6,), L.Dense(4), L.Dense(2))
    metrics.forward(model)(np.zeros((2, 6), "float32"))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None

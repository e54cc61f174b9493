"""workers/engine/inspection/model.py: .keras and .h5 model files pass with Keras's own facts or are refused.

Benign files are real models saved by Keras 3 (.keras and .h5) and a committed legacy .h5 saved by tf_keras 2.x;
hostile files come from tests/hostile/ (one generator per attack class, each with a canary payload).
"""

from __future__ import annotations

import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest

from tests import hostile
from tests.engine.inspection.benign import BENIGN, LEGACY_H5, ROOT, keras_members, leaf_layers, sequential
from tests.hostile import MODEL_ATTACKS, write_zip
from workers.engine.errors import EngineError, ModelRejected, UnsupportedFile
from workers.engine.inspection import ModelInspection, inspect_model_file

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
    assert result.layer_count == leaf_layers(model)
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
    sequential().save(path)
    assert inspect_model_file(path).compile_config is None


def test_legacy_h5_saved_by_tf_keras2_passes():
    result = inspect_model_file(LEGACY_H5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = keras.saving.load_model(LEGACY_H5)  # our own committed fixture: safe to load for the expectation
    assert result.format == "h5"
    assert result.keras_version.startswith("2.")
    assert result.layer_count == leaf_layers(model)
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
    model = sequential()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(), keras.metrics.sparse_top_k_categorical_accuracy, "acc"],
    )
    model.save(tmp_path / "objects.keras")
    cc = inspect_model_file(tmp_path / "objects.keras").compile_config
    assert cc["optimizer"]["config"]["learning_rate"]["class_name"] == "ExponentialDecay"


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
    assert isinstance(info.value, EngineError) and info.value.code in (
        "resource_limit",
        "unsupported_file",
        "model_rejected",
    )
    assert not canary.exists()


# --------------------------------------------------------------------------------------------------------------
# Structure of the archive and the file kind
# --------------------------------------------------------------------------------------------------------------


def test_keras_archive_without_weights_is_refused(saved, tmp_path):
    members = keras_members(saved)
    del members["model.weights.h5"]
    with pytest.raises(ModelRejected, match="no model.weights.h5 member"):
        inspect_model_file(write_zip(tmp_path / "noweights.keras", list(members.items())))


@pytest.mark.parametrize("member", ["assets/vocab.txt", "model.weights.npz"])
def test_assets_and_npz_weights_are_refused_with_a_reason(member, saved, tmp_path):
    members = list(keras_members(saved).items()) + [(member, b"x")]
    with pytest.raises(ModelRejected, match=f"unexpected member '{member}'.*not accepted"):
        inspect_model_file(write_zip(tmp_path / "extra.keras", members))


def test_zip_without_config_is_not_a_keras_model(tmp_path):
    path = write_zip(tmp_path / "torch.pt", [("archive/data.pkl", b"\x80\x02}q\x00."), ("archive/version", b"3")])
    with pytest.raises(UnsupportedFile, match="zip archive without config.json"):
        inspect_model_file(path)


def test_weights_only_h5_is_refused(tmp_path):
    model = sequential()
    model.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(ModelRejected, match="no model_config attribute"):
        inspect_model_file(tmp_path / "only.weights.h5")


def test_format_follows_magic_bytes_not_the_file_name(saved, tmp_path):
    disguised = tmp_path / "model.h5"
    disguised.write_bytes(saved["sequential", "keras"][0].read_bytes())
    assert inspect_model_file(disguised).format == "keras"


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
    code = (
        "import sys; from workers.engine.inspection import inspect_model_file as i; "
        f"r = i({str(path)!r}); print(r.layer_count, 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split()[1:] == ["False", "False"], out.stderr[-2000:]

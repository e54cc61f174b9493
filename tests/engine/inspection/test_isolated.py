"""workers/engine/inspection/isolated.py: an inspection runs in a child process that is killed at its deadline.

The child reports what the in-process inspection would (a summary without the configs), its refusals come back as
the same engine errors with the same messages, and an inspection that outlives its deadline is stopped, leaves no
process behind and refuses the file naming the limit.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import hostile
from workers.engine.errors import DataError, EngineError, ModelRejected
from workers.engine.inspection import inspect_model_file, inspect_npz
from workers.engine.inspection.isolated import (
    INSPECTOR_NICE,
    ModelSummary,
    inspect_model_isolated,
    inspect_npz_isolated,
)

L = keras.layers


def _children() -> list[int]:
    """Live child processes of this test process."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    inner = keras.Sequential([keras.Input((6,)), L.Dense(6, activation="tanh")], name="inner")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(2)(L.Add()([inner(inputs), inputs])), name="outer")
    model.compile("adam", "mse")
    path = tmp_path_factory.mktemp("isolated") / "nested.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def big_config(tmp_path_factory) -> Path:
    """A model that passes inspection but whose config.json is about 9 MiB (see hostile.big_config_model)."""
    return hostile.big_config_model(tmp_path_factory.mktemp("big"))


def test_a_model_summary_is_what_the_in_process_inspection_finds(model_path):
    found = inspect_model_file(model_path)
    summary = inspect_model_isolated(model_path, timeout_s=60)
    assert summary == ModelSummary(
        format="keras",
        layer_count=found.layer_count,
        weight_count=found.weight_count,
        sequential_layers=2,
        keras_version=keras.__version__,
        class_names=found.class_names,
    )
    assert summary.weight_count == 6 * 6 + 6 + 6 * 2 + 2


def test_npz_arrays_are_what_the_in_process_inspection_finds(tmp_path):
    np.savez(
        tmp_path / "d.npz",
        x_train=np.zeros((5, 3), "float32"),
        y_train=np.arange(5, dtype="uint8"),
        mask=np.ones(2, bool),
    )
    arrays = inspect_npz_isolated(tmp_path / "d.npz", timeout_s=60)
    assert arrays == inspect_npz(tmp_path / "d.npz")
    assert arrays["x_train"] == ((5, 3), np.dtype("float32"))


@pytest.mark.parametrize("name", ["keras_lambda", "keras_weights_link_maze", "pickle_model", "npz_object_array"])
def test_refusals_come_back_as_the_same_engine_error_and_message(name, tmp_path):
    generate, error, fragment = hostile.HOSTILE[name]
    canary = tmp_path / "canary"
    path = generate(tmp_path, canary)
    inspect = inspect_npz_isolated if name in hostile.DATASET_ATTACKS else inspect_model_isolated
    with pytest.raises(EngineError) as info:
        inspect(path, timeout_s=60)
    assert type(info.value) is error
    assert fragment in info.value.message
    assert not canary.exists()


def test_limits_are_passed_to_the_child(model_path):
    from workers.engine.inspection import InspectLimits

    with pytest.raises(ModelRejected, match="max_layers"):
        inspect_model_isolated(model_path, InspectLimits(max_layers=2), timeout_s=60)


# the model takes a second or more to inspect; no child starts Python and numpy within 10 ms
@pytest.mark.parametrize(
    "inspect, error, timeout_s", [(inspect_model_isolated, ModelRejected, 0.3), (inspect_npz_isolated, DataError, 0.01)]
)
def test_an_inspection_past_its_deadline_is_killed_and_the_file_refused_naming_the_limit(
    inspect, error, timeout_s, big_config
):
    started = time.perf_counter()
    with pytest.raises(error) as info:
        inspect(big_config, timeout_s=timeout_s, limit_name="limits.inspection_seconds")
    elapsed = time.perf_counter() - started
    assert f"took longer than the limit of {timeout_s:g} s (limits.inspection_seconds)" in info.value.message
    assert elapsed < 2.0, f"the caller waited {elapsed:.1f} s past a 0.3 s deadline"
    assert _children() == []


def test_the_big_config_passes_when_given_time(big_config):
    """The deadline test above refuses a file that is valid: it is the deadline that stops it."""
    assert inspect_model_isolated(big_config, timeout_s=120).format == "keras"


def _nice(pid: int) -> int | None:
    """The nice value of a live process (field 19 of /proc/PID/stat), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_inspector_reads_the_upload_below_the_callers_priority(big_config):
    """The child lowers itself by INSPECTOR_NICE as it starts (before its imports are done it still runs at the
    caller's level), and reads the file there, so the API it serves keeps the CPU."""
    ours, lowered = os.nice(0), min(19, os.nice(0) + INSPECTOR_NICE)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(inspect_model_isolated, big_config, timeout_s=120)
        samples: list[int] = []
        while not pending.done():  # the big config takes a second or more to read
            samples += [n for n in map(_nice, _children()) if n is not None]
            time.sleep(0.01)
        assert pending.result().format == "keras"
    assert set(samples) <= {ours, lowered} and samples[-1] == lowered
    assert samples.count(lowered) > samples.count(ours)  # the reading, most of its time, is at the lower priority


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf")])
def test_the_deadline_must_be_a_positive_finite_number(timeout_s, model_path):
    with pytest.raises(ValueError, match="timeout_s"):
        inspect_model_isolated(model_path, timeout_s=timeout_s)


def test_the_child_inherits_no_credentials_from_the_caller(monkeypatch):
    from workers.engine.inspection.isolated import _child_env

    monkeypatch.setenv("SECATEURS_STORE__URL", "postgresql+psycopg://user:secret@db/jobs")
    monkeypatch.setenv("HDF5_PLUGIN_PATH", "/tmp/plugins")
    env = _child_env()
    assert "SECATEURS_STORE__URL" not in env and "HDF5_PLUGIN_PATH" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(__file__).resolve().parents[3])

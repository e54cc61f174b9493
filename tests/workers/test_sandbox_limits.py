"""The job process's own defences: it inspects its inputs again before TensorFlow is even imported, it writes only
inside its scratch directory, and a memory failure is reported with the configured limit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import hostile
from tests.workers.jobfiles import QUICK_SPEC
from workers.engine.errors import EngineError
from workers.jobs import JobStatus
from workers.sandbox import SandboxJob, SandboxLimits, child_environment, run_sandboxed
from workers.sandbox_child import classify_exception, inspect_inputs

# `import tensorflow` fails under this address-space limit (its shared libraries alone map more), while plain
# Python inspection needs a fraction of it: a job process that fails for anything but memory under it never
# reached TensorFlow. test_tensorflow_cannot_start_under_the_inspection_limit checks the premise.
NO_TENSORFLOW = SandboxLimits(memory_bytes=2**30, wall_seconds=60)

# one attack per class for a real job process (each start costs about a second); every attack of the registry goes
# through the same function in-process below
CHILD_ATTACKS = [
    "keras_lambda",
    "keras_enable_unsafe_chain",
    "keras_get_file",
    "keras_zip_bomb",
    "h5_external_link",
    "h5_lambda",
    "pickle_model",
    "npz_object_array",
    "npz_bomb",
]


def _inputs(name: str, tmp_path: Path, job_files) -> tuple[Path, Path, Path]:
    """(model, data, canary) with the attack in the role its registry says."""
    canary = tmp_path / "canary"
    attack_dir = tmp_path / "attack"
    attack_dir.mkdir()
    path = hostile.HOSTILE[name].generate(attack_dir, canary)
    if name in hostile.MODEL_ATTACKS:
        return path, job_files.data, canary
    return job_files.model, path, canary


def test_the_job_environment_keeps_every_writable_place_inside_the_scratch_directory(tmp_path):
    scratch = tmp_path / "scratch"
    env = child_environment(
        scratch,
        {
            "HOME": "/home/user",
            "TMPDIR": "/tmp",
            "TEMP": "/tmp",
            "TMP": "/tmp",
            "KERAS_HOME": "/home/user/.keras",
            "PATH": "/usr/bin",
        },
    )
    for name in ("HOME", "KERAS_HOME", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"):
        assert Path(env[name]).is_relative_to(scratch) and Path(env[name]).is_dir(), name
    assert "TEMP" not in env and "TMP" not in env
    assert env["PATH"] == "/usr/bin"
    assert str(Path(__file__).resolve().parents[2]) in env["PYTHONPATH"].split(os.pathsep)


@pytest.mark.parametrize("name", sorted(hostile.HOSTILE))
def test_the_job_process_inspection_refuses_every_hostile_input(name, tmp_path, job_files):
    model, data, canary = _inputs(name, tmp_path, job_files)
    attack = hostile.HOSTILE[name]
    role = "model" if name in hostile.MODEL_ATTACKS else "data"
    with pytest.raises(EngineError) as e:
        inspect_inputs(str(model), str(data))
    assert type(e.value) is attack.error and e.value.field == role
    assert e.value.message.startswith(f"{role}: ") and attack.fragment in e.value.message
    assert not canary.exists()


def test_tensorflow_cannot_start_under_the_inspection_limit(tmp_path, job_files):
    result = run_sandboxed(
        SandboxJob(str(job_files.model), str(job_files.data), QUICK_SPEC, str(tmp_path / "s")), NO_TENSORFLOW
    )
    assert result.status is JobStatus.FAILED
    assert (
        result.error["code"] in ("resource_limit", "crashed") and "limits.job_memory_bytes" in result.error["message"]
    )


@pytest.mark.parametrize("name", CHILD_ATTACKS)
def test_the_job_process_refuses_a_hostile_input_before_tensorflow_is_imported(name, tmp_path, job_files):
    model, data, canary = _inputs(name, tmp_path, job_files)
    attack = hostile.HOSTILE[name]
    started = time.monotonic()
    result = run_sandboxed(SandboxJob(str(model), str(data), QUICK_SPEC, str(tmp_path / "s")), NO_TENSORFLOW)
    assert result.status is JobStatus.FAILED, result.log_tail
    assert result.error["code"] == attack.error.code, result.error  # not a memory failure: TensorFlow never loaded
    assert attack.fragment in result.error["message"]
    assert result.error["field"] == ("model" if name in hostile.MODEL_ATTACKS else "data")
    assert not canary.exists()
    assert time.monotonic() - started < 30


def test_a_tensorflow_out_of_memory_error_is_reported_with_the_allocation_and_the_limit():
    import tensorflow as tf

    message = (
        "Graph execution error:\n\nDetected at node sequential_1/inflate_1/Repeat_1/Tile defined at (most "
        'recent call last):\n  File "<frozen runpy>", line 198, in _run_module_as_main\n\nOOM when allocating '
        "tensor with shape[1024,896,896,1] and type float on /job:localhost/replica:0/task:0/device:CPU:0 by "
        "allocator mklcpu\n\t [[{{node sequential_1/inflate_1/Repeat_1/Tile}}]]"
    )
    error = classify_exception(tf.errors.ResourceExhaustedError(None, None, message), {"memory_bytes": 3 * 2**30})
    assert error["code"] == "resource_limit"
    assert error["message"] == (
        "the job ran out of memory under the limit of 3221225472 bytes (3.00 GiB) "
        "(limits.job_memory_bytes): OOM when allocating tensor with shape[1024,896,896,1] "
        "and type float"
    )

"""The job sandbox: how a child's death is explained, how exceptions are classified, and that a job process
dies with its worker."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from workers.engine.errors import DataError, ModelRejected, SpecError
from workers.sandbox import JOB_NICE, SandboxLimits, explain_death, threads_per_job
from workers.sandbox_child import classify_exception

LIMITS = SandboxLimits(memory_bytes=2 * 2**30, file_bytes=1000, cpu_seconds=60)


@pytest.mark.parametrize(
    "sig, kind, says",
    [
        (signal.SIGKILL, "crashed", "peak memory is not known"),  # nothing known: maybe the OOM killer
        (signal.SIGSEGV, "crashed", "limits.job_memory_bytes"),
        (signal.SIGABRT, "crashed", "SIGABRT"),
        (signal.SIGBUS, "crashed", "SIGBUS"),
        (signal.SIGXCPU, "resource_limit", "limits.job_cpu_seconds"),
        (signal.SIGXFSZ, "resource_limit", "limits.job_file_bytes"),
        (signal.SIGTERM, "crashed", "SIGTERM"),
    ],
)
def test_a_child_killed_by_a_signal_is_explained(sig, kind, says):
    error = explain_death(-int(sig), LIMITS)
    assert error["code"] == kind and says in error["message"]


def test_a_child_exiting_without_a_result_is_explained():
    assert "status 3" in explain_death(3, LIMITS)["message"]
    assert explain_death(70, LIMITS)["code"] == "interrupted"


@pytest.mark.parametrize(
    "exc, kind, says",
    [
        (DataError("x_train has 3 rows"), "data_error", "x_train"),
        (SpecError("unknown layer 'dense_9'"), "spec_error", "dense_9"),
        (ModelRejected("Lambda layers are refused"), "model_rejected", "Lambda"),
        (MemoryError(), "resource_limit", "limits.job_memory_bytes"),
        (
            ImportError("libtensorflow_framework.so.2: failed to map segment from shared object"),
            "resource_limit",
            "memory",
        ),
        (OSError(errno.EFBIG, "File too large"), "resource_limit", "limits.job_file_bytes"),
        (OSError(errno.ENOSPC, "No space left on device"), "resource_limit", "disk full"),
        (RuntimeError("boom"), "internal_error", "RuntimeError: boom"),
    ],
)
def test_exceptions_in_the_child_are_classified(exc, kind, says):
    error = classify_exception(exc, {"memory_bytes": 2**30, "file_bytes": 1000})
    assert error["code"] == kind and says in error["message"]


def test_a_wrapped_disk_full_error_is_found_in_the_exception_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        error = classify_exception(outer, {"memory_bytes": 2**30})
    assert error["code"] == "resource_limit" and "disk full" in error["message"]


@pytest.mark.slow
def test_a_job_process_exits_when_its_worker_dies(tmp_path, job_files):
    """A worker (here a plain Python process) starts a long job and is SIGKILLed; the job process follows."""
    spec = {
        "steps": [{"kind": "finetune", "epochs": 500}],
        "training": {"batch_size": 8},
        "evaluation": {"latency": False},
    }
    code = f"""
import json, sys
from workers.sandbox import Hooks, SandboxJob, SandboxLimits, run_sandboxed
job = SandboxJob(model_path={str(job_files.model)!r}, data_path={str(job_files.data)!r}, spec={spec!r},
                 scratch={str(tmp_path / "scratch")!r})
def progress(p):
    print(json.dumps(p), flush=True)
run_sandboxed(job, SandboxLimits(), Hooks(on_progress=progress))
"""
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for line in worker.stdout:  # wait until the job trains
        if json.loads(line).get("step"):
            break
    request = str(tmp_path / "scratch" / "request.json")
    child = int(subprocess.run(["pgrep", "-f", request], capture_output=True, text=True).stdout.split()[0])
    with open(f"/proc/{child}/stat") as f:  # the job trains at the lowest CPU priority (field 19: nice)
        assert int(f.read().split(") ")[1].split()[16]) == JOB_NICE == 19
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split(") ")[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"job process {child} outlived its worker")


def test_tensorflow_threads_divide_the_cores_among_the_concurrent_jobs(settings):
    cores = len(os.sched_getaffinity(0))
    assert threads_per_job(1) == cores
    assert threads_per_job(2) == max(1, cores // 2)
    assert threads_per_job(64) == 1 and threads_per_job(0) == cores
    assert SandboxLimits.from_settings(settings).tf_threads == threads_per_job(settings.worker.concurrency)
    explicit = settings.model_copy(update={"worker": settings.worker.model_copy(update={"tf_threads": 3})})
    assert SandboxLimits.from_settings(explicit).tf_threads == 3


@pytest.mark.parametrize("nice", [0, 7, JOB_NICE])
def test_a_job_process_runs_at_the_configured_nice_level(settings, nice):
    """worker.job_nice reaches the job process's limits, and lower_priority sets exactly that nice (0: unchanged)."""
    chosen = settings.model_copy(update={"worker": settings.worker.model_copy(update={"job_nice": nice})})
    limits = SandboxLimits.from_settings(chosen)
    assert limits.job_nice == nice
    code = (
        "import os; from workers.engine.priority import lower_priority; before = os.nice(0); "
        f"lower_priority({limits.job_nice}); print(before, os.nice(0))"
    )
    before, after = map(
        int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert after == min(19, before + nice)

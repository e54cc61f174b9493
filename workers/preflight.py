"""Preflight of a model file: load it the way a job loads it, then run the engine's preflight (`engine.preflight`).

    preflight_file(model_path, spec=None) -> dict          in this process (the CLI)
    run_isolated(model_path, spec, limits, scratch) -> dict in a child process bounded in time and memory (the API)
    PreflightLimits.from_settings(settings)

`preflight_file` loads through `model_io.load_model` (the upload inspection first, then Keras with safe_mode), and
with a spec checks what a job checks before its first step (`model_io.resolve_training`: a loss to train with; the
layer selection's names) and estimates each step; a model or spec a job would refuse raises the same EngineError
with the same message.

`run_isolated` is how the API answers POST /v1/preflight without importing TensorFlow: a fresh
`python -m workers.preflight` child, in its own session, with an address-space limit (RLIMIT_AS,
limits.preflight_memory_bytes) and a deadline (limits.preflight_seconds; the child is killed on expiry and arms an
alarm of its own, so it ends even if its parent dies first). It runs in a scratch directory that is its home and
temp directory, with none of the caller's SECATEURS_* or cloud credentials in its environment, and writes its
answer as JSON into that directory. Errors come back as the engine's classes with the child's message.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workers import errors

RESULT_NAME = "preflight.json"
_RETURNED = {
    cls.__name__: cls
    for cls in (errors.ModelRejected, errors.UnsupportedFile, errors.SpecError, errors.DataError, errors.ResourceLimit)
}
# what the child keeps of the caller's environment (child_environment then moves home, temp and caches into the
# scratch directory): Python's and TensorFlow's own settings, no credentials
_ENV_NAMES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE")
_ENV_PREFIXES = ("TF_", "KERAS_", "CUDA_", "OMP_")
# a failed allocation under RLIMIT_AS, as it surfaces from TensorFlow's shared libraries or the C++ runtime
_MEMORY_MESSAGES = re.compile(r"failed to map segment|cannot allocate memory|std::bad_alloc|out of memory", re.I)


@dataclass(frozen=True)
class PreflightLimits:
    wall_seconds: float = 60.0
    memory_bytes: int = 8 * 2**30

    @classmethod
    def from_settings(cls, settings) -> PreflightLimits:
        lim = settings.limits
        return cls(wall_seconds=lim.preflight_seconds, memory_bytes=lim.preflight_memory_bytes)


def preflight_file(model_path: str | Path, spec=None) -> dict:
    """Load the model at `model_path` as a job does and return the engine's preflight (with `spec`: its checks and
    per-step estimates). `spec` is a workers.spec.JobSpec or None."""
    from workers.engine import config, model_io
    from workers.engine.preflight import StepTarget, preflight

    started = time.perf_counter()
    path = Path(model_path)
    loaded = model_io.load_model(path)
    steps, selection, task = (), None, None
    if spec is not None:
        # a job's first check: what it trains for
        loss, metrics = model_io.resolve_training(loaded, config.training_settings(spec.training))
        task = {"loss": loss, "metrics": list(metrics)}
        steps = [StepTarget.of({**step.model_dump(), "levels": _sweep_levels(step)}) for step in spec.steps]
        selection = config.layer_selection(spec.layers)
    result = preflight(loaded.model, steps, selection)
    saved = loaded.compile
    result["model"].update(
        file=path.name, bytes=path.stat().st_size, format=loaded.format, saved_loss=saved.loss if saved else None
    )
    if task is not None:
        result["task"] = task
        if spec.trains:
            result["notes"].append(
                "this spec trains (or ranks units on activations): a job with it needs a "
                "dataset (.npz with x_train, y_train)"
            )
    elif saved is None or not saved.usable:
        result["notes"].append(
            "the model holds no loss a job can train with: a job's spec must set training.loss"
            + (f" ({saved.reason})" if saved is not None and saved.reason else "")
        )
    result["wall_time_s"] = time.perf_counter() - started
    return result


def _sweep_levels(step) -> list[float] | None:
    """The levels of the sensitivity sweep `step` would run, as the job chooses them (`StepTarget.sweeps` says
    whether it runs one)."""
    from workers.engine.pipeline.search import sweep_levels

    if step.kind == "sensitivity":
        return step.effective_levels
    method = "structured" if step.kind == "structured" else getattr(step, "method", None)
    return sweep_levels(method) if method in ("magnitude", "structured") else None


# --------------------------------------------------------------------------- the isolated child (the API's path)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}


def run_isolated(model_path: str | Path, spec: dict | None, limits: PreflightLimits, scratch: str | Path) -> dict:
    """`preflight_file` in a child process (see the module docstring). `spec`: a validated JobSpec as JSON data.
    Raises the child's EngineError; ModelRejected when the limit of time ran out; ResourceLimit when memory did."""
    from workers.sandbox import child_environment

    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    name = Path(model_path).name
    request = {
        "model_path": str(Path(model_path).resolve()),
        "spec": spec,
        "memory_bytes": int(limits.memory_bytes),
        "alarm_s": math.ceil(limits.wall_seconds) + 1,
    }
    env = child_environment(scratch, base=_env())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "workers.preflight"],
            input=json.dumps(request),
            text=True,
            capture_output=True,
            timeout=limits.wall_seconds,
            env=env,
            cwd=scratch,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed (SIGKILL) and reaped the child
        raise errors.ModelRejected(
            f"{name}: preflight took longer than the limit of {limits.wall_seconds:g} s (limits.preflight_seconds); "
            "it was stopped",
            field="limits.preflight_seconds",
        ) from None
    answer_path = scratch / RESULT_NAME
    if proc.returncode == 0 and answer_path.is_file():
        answer = json.loads(answer_path.read_text())
        if "error" in answer:
            error = answer["error"]
            raise _RETURNED.get(error["class"], errors.EngineError)(error["message"], field=error["field"])
        return answer["result"]
    if proc.returncode < 0:
        sig = -proc.returncode
        what = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        raise errors.ResourceLimit(
            f"{name}: preflight stopped on {what} (memory limit {limits.memory_bytes} bytes, "
            "limits.preflight_memory_bytes)",
            field="limits.preflight_memory_bytes",
        )
    tail = " ".join(proc.stderr.split()[-60:])[-600:]
    raise errors.EngineError(f"{name}: preflight failed (exit status {proc.returncode}): {tail}")


def _error(exc: BaseException, memory_bytes: int) -> dict:
    if isinstance(exc, errors.EngineError):
        return {"class": type(exc).__name__, "message": exc.message, "field": exc.field}
    if (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "ResourceExhaustedError"
        or _MEMORY_MESSAGES.search(str(exc))
    ):
        return {
            "class": "ResourceLimit",
            "field": "limits.preflight_memory_bytes",
            "message": f"preflight ran out of memory under the limit of {memory_bytes} bytes "
            f"(limits.preflight_memory_bytes): {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
        }
    return {
        "class": "EngineError",
        "field": None,
        "message": f"preflight failed: {type(exc).__name__}: {str(exc)[:600]}",
    }


def _child() -> int:
    request = json.loads(sys.stdin.read())
    signal.alarm(int(request["alarm_s"]))  # default action: the process ends, even inside a C call
    from workers.sandbox_child import _set_limits

    _set_limits({"memory_bytes": request["memory_bytes"]})
    try:
        spec = None
        if request["spec"] is not None:
            from workers.spec import JobSpec

            spec = JobSpec.model_validate(request["spec"])
        answer: dict = {"result": preflight_file(request["model_path"], spec)}
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        answer = {"error": _error(e, int(request["memory_bytes"]))}
    tmp = Path(RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(answer))
    os.replace(tmp, RESULT_NAME)
    return 0


if __name__ == "__main__":
    code = _child()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TensorFlow's can hang or crash

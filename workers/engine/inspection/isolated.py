"""Inspect an upload in a child Python process under a deadline, so that no file can hold the caller for longer.

Inspection parses attacker bytes (JSON in Python, zip directories, HDF5 object headers in C through h5py). Each
parser is bounded, but a caller that serves other requests (the API's event loop, its GIL) must not depend on that
alone: `inspect_model_isolated` and `inspect_npz_isolated` run the inspection in a fresh `python -m` child (it
imports numpy and h5py, never TensorFlow or Keras: a start costs a few tenths of a second), wait at most
`timeout_s`, and kill it on expiry. The child reports a small JSON summary on stdout (never the parsed config, and
never a pickle); whatever it allocated is returned to the system when it exits. The child also arms an alarm of its
own, so it ends even if its caller dies first, it inherits none of the caller's environment but what Python needs
to start (no credentials), and it lowers its CPU priority to INSPECTOR_NICE before it reads the file: below the
API it serves, above the jobs (nice 19 by default), so that one upload's inspection neither slows the API's answers
to other requests nor waits behind training.

Errors come back as the engine's own classes with the child's message: ModelRejected / UnsupportedFile for models,
DataError / UnsupportedFile for datasets; a deadline or a crash (a signal) raises the kind's refusal class naming
what happened; anything else the child raised is an EngineError (an internal error, code engine_error).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.engine import errors
from workers.engine.priority import lower_priority

PACKAGE_ROOT = Path(__file__).resolve().parents[3]
INSPECTOR_NICE = 10  # CPU weight about 1/9 of the API's (nice 0) and about 7x a job's (nice 19)
_KIND_ERROR = {"model": errors.ModelRejected, "npz": errors.DataError}
_RETURNED_ERRORS = {cls.__name__: cls for cls in (errors.ModelRejected, errors.UnsupportedFile, errors.DataError)}


@dataclass(frozen=True)
class ModelSummary:
    """What `inspect_model_file` learned, without the parsed configs (see `ModelInspection`)."""

    format: str  # "keras" or "h5": load the file as this format
    layer_count: int
    weight_count: int
    sequential_layers: int
    keras_version: str | None
    class_names: frozenset[str]


def inspect_model_isolated(
    path: str | Path, limits=None, *, timeout_s: float, limit_name: str = "timeout_s"
) -> ModelSummary:
    """`inspection.inspect_model_file` in a child process that is killed after `timeout_s` seconds."""
    result = _run("model", Path(path), limits, timeout_s, limit_name)
    return ModelSummary(
        format=result["format"],
        layer_count=result["layer_count"],
        weight_count=result["weight_count"],
        sequential_layers=result["sequential_layers"],
        keras_version=result["keras_version"],
        class_names=frozenset(result["class_names"]),
    )


def inspect_npz_isolated(
    path: str | Path, limits=None, *, timeout_s: float, limit_name: str = "timeout_s"
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`inspection.inspect_npz` in a child process that is killed after `timeout_s` seconds."""
    result = _run("npz", Path(path), limits, timeout_s, limit_name)
    return {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in result.items()}


# The child sees only what Python needs to start and find its packages: none of the caller's credentials (store
# URLs, keys), no HDF5_PLUGIN_PATH or other variable that makes a parser load code.
_CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONUSERBASE", "PYTHONNOUSERSITE")


def _child_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _run(kind: str, path: Path, limits, timeout_s: float, limit_name: str) -> Any:
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    request = {
        "kind": kind,
        "path": str(path),
        "alarm_s": math.ceil(timeout_s) + 1,
        "limits": dataclasses.asdict(limits) if limits is not None else None,
    }
    refuse = _KIND_ERROR[kind]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", __name__],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=_child_env(),
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed (SIGKILL) and reaped the child
        raise refuse(
            f"{path.name}: inspecting the file took longer than the limit of {timeout_s:g} s "
            f"({limit_name}); it was stopped and the file refused"
        ) from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        answer = json.loads(lines[-1])
        if "error" in answer:
            error = answer["error"]
            raise _RETURNED_ERRORS.get(error["class"], errors.EngineError)(error["message"], field=error["field"])
        return answer["result"]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "a signal"
        raise refuse(f"{path.name}: the inspector stopped on {name} while reading this file; the file is refused")
    tail = " ".join(proc.stderr.split()[-60:])[-600:]
    raise errors.EngineError(f"{path.name}: inspection failed (exit status {proc.returncode}): {tail}")


def _child() -> int:
    lower_priority(INSPECTOR_NICE)
    request = json.loads(sys.stdin.read())
    signal.alarm(int(request["alarm_s"]))  # default action: the process ends, even inside a C call
    from workers.engine.inspection import InspectLimits, inspect_model_file, inspect_npz

    limits = InspectLimits(**request["limits"]) if request["limits"] else InspectLimits()
    try:
        if request["kind"] == "model":
            found = inspect_model_file(request["path"], limits)
            result: Any = {
                "format": found.format,
                "layer_count": found.layer_count,
                "weight_count": found.weight_count,
                "sequential_layers": found.sequential_layers,
                "keras_version": found.keras_version,
                "class_names": sorted(found.class_names),
            }
        else:
            result = {
                name: [list(shape), dtype.str] for name, (shape, dtype) in inspect_npz(request["path"], limits).items()
            }
        answer: dict = {"result": result}
    except errors.EngineError as e:
        answer = {"error": {"class": type(e).__name__, "message": e.message, "field": e.field}}
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child())

"""The job process's side of the sandbox (`python -m workers.sandbox_child REQUEST.json FD`, started by
`sandbox.run_sandboxed`): lower its priority, watch its parent, set its resource limits before TensorFlow is
imported, inspect the inputs again, run the engine's `compress()`, and report progress and the result as JSON
lines on the pipe FD; an exception becomes an error dict in words (`classify_exception`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workers.engine.priority import lower_priority
from workers.jobs import error_dict
from workers.postmortem import EXIT_PARENT_GONE, gib
from workers.sandbox import CANCEL_FLAG, JOB_NICE, OUT_DIR


class _Channel:
    def __init__(self, fd: int):
        self.f = os.fdopen(fd, "w", buffering=1)
        self.lock = threading.Lock()

    def send(self, **msg) -> None:
        line = json.dumps(msg, default=str)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()


def _set_limits(limits: dict) -> None:
    import resource

    def lower(which, value):
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, hard))

    lower(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    if limits.get("file_bytes"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-limit write then fails with EFBIG instead
        lower(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))
    if limits.get("cpu_seconds"):
        lower(resource.RLIMIT_CPU, int(limits["cpu_seconds"]))


def _watch_parent(parent_pid: int) -> None:
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(EXIT_PARENT_GONE)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _cancel_checker(flag: Path, interval: float) -> Callable[[], bool]:
    state = {"next": 0.0, "cancelled": False}

    def should_cancel() -> bool:
        if state["cancelled"]:
            return True
        now = time.monotonic()
        if now >= state["next"]:
            state["next"] = now + interval
            state["cancelled"] = flag.exists()
        return state["cancelled"]

    return should_cancel


def _os_error_in_chain(exc: BaseException) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return exc
        if "No space left" in str(exc) or "File too large" in str(exc):
            return OSError(errno.ENOSPC, str(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# what a failed allocation looks like when it surfaces as another exception (e.g. mmap of a shared library)
_TF_OOM = re.compile(r"OOM when allocating tensor with shape\[[^\]]*\] and type \w+")
_MEMORY_MESSAGES = re.compile(r"failed to map segment|cannot allocate memory|std::bad_alloc|out of memory", re.I)


def classify_exception(exc: BaseException, limits: dict) -> dict:
    """The error dict for an exception raised in the child."""
    from workers.errors import SecateursError

    if isinstance(exc, SecateursError):
        return exc.to_dict()
    if (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "ResourceExhaustedError"
        or _MEMORY_MESSAGES.search(str(exc))
    ):
        oom = _TF_OOM.search(str(exc))  # TensorFlow's message buries the allocation under a traceback
        detail = oom.group(0) if oom else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return error_dict(
            "resource_limit",
            f"the job ran out of memory under the limit of "
            f"{gib(int(limits['memory_bytes']))} (limits.job_memory_bytes): "
            f"{detail}",
        )
    os_err = _os_error_in_chain(exc)
    if os_err is not None:
        limit = int(limits.get("file_bytes") or 0)
        hint = f" (limits.job_file_bytes is {limit} bytes)" if limit else ""
        return error_dict(
            "resource_limit",
            f"disk full or file too large while writing the job's files{hint}: {os_err.strerror or os_err}",
        )
    return error_dict("internal_error", f"{type(exc).__name__}: {str(exc)[:1000]}")


def inspect_inputs(model_path: str, data_path: str | None) -> None:
    """Inspect the input files again in the job process, in plain Python, before Keras touches them (defence in
    depth: the API inspected them at submit, but a file can be damaged or replaced in the artifact store since).
    Raises the engine's ModelRejected / UnsupportedFile / DataError naming the member, layer or array."""
    from workers.engine.inspection import inspect_model_file, inspect_npz
    from workers.errors import EngineError

    for role, path, inspect in (("model", model_path, inspect_model_file), ("data", data_path, inspect_npz)):
        if path is None:
            continue
        try:
            inspect(path)
        except EngineError as e:
            e.field = e.field or role
            e.message = f"{role}: {e.message}"
            raise


def child_main(request_path: str, fd: int) -> int:
    request = json.loads(Path(request_path).read_text())
    limits, job = request["limits"], request["job"]
    lower_priority(int(limits.get("job_nice", JOB_NICE)))
    _watch_parent(int(request["parent_pid"]))
    channel = _Channel(fd)
    try:
        _set_limits(limits)
        from workers.errors import Cancelled
        from workers.spec import JobSpec

        spec = JobSpec.model_validate(job["spec"])
        inspect_inputs(job["model_path"], job["data_path"])  # before TensorFlow or Keras is even imported
        if limits.get("tf_threads"):
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(int(limits["tf_threads"]))
            tf.config.threading.set_inter_op_parallelism_threads(int(limits["tf_threads"]))
        from workers.engine.pipeline import compress

        should_cancel = _cancel_checker(Path(job["scratch"]) / CANCEL_FLAG, float(limits["cancel_poll_interval"]))
        try:
            compress(
                job["model_path"],
                job["data_path"],
                spec,
                Path(job["scratch"]) / OUT_DIR,
                progress=lambda p: channel.send(type="progress", data=p.to_dict()),
                should_cancel=should_cancel,
            )
        except Cancelled as e:
            channel.send(type="result", status="cancelled", error=e.to_dict())
            return 0
        channel.send(type="result", status="succeeded")
        return 0
    except BaseException as e:  # report whatever happened, then exit
        import traceback

        traceback.print_exc()
        try:
            channel.send(type="result", status="failed", error=classify_exception(e, limits))
        except Exception:  # pragma: no cover - the pipe is gone
            pass
        return 1


if __name__ == "__main__":
    code = child_main(sys.argv[1], int(sys.argv[2]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TensorFlow's can hang or crash

"""Run one job attempt in a separate process with limits, and say in words how it ended.

The parent (a worker) starts `python -m workers.sandbox_child REQUEST.json` in its own session. The child sets its
resource limits (RLIMIT_AS for memory, optionally RLIMIT_FSIZE and RLIMIT_CPU) before it imports TensorFlow, runs
the engine's `compress()`, and reports progress and its result as JSON lines on a pipe; its stdout and stderr go
to a log file. The parent relays progress, polls for cancellation (a flag file the child checks at batch
boundaries), enforces the wall-time limit and, when the child dies without a result, names the reason: signal,
memory, time or file-size limit. A child whose parent dies exits too.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import site
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.jobs import JobStatus, error_dict
from workers.postmortem import (
    MemoryFacts,
    PeakMemory,
    death_is_retryable,
    explain_death,
    memory_facts,
    reap_child,
)

CANCEL_FLAG = "cancel.flag"
LOG_NAME = "job.log"
REQUEST_NAME = "request.json"
OUT_DIR = "out"
CANCEL_GRACE_SECONDS = 20.0  # a cancelled child that does not reach a batch boundary in time is killed
# Job processes train at a lower CPU priority than the API and the workers' bookkeeping by default, so that status
# requests stay fast while jobs saturate the cores (worker.job_nice; measured in bench/service.py,
# docs/BENCHMARKS.md).
JOB_NICE = 19


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 3600.0
    memory_bytes: int = 16 * 2**30
    file_bytes: int = 0  # 0: unlimited
    cpu_seconds: int = 0  # 0: unlimited
    tf_threads: int = 0  # 0: TensorFlow's default (from_settings picks cores // concurrent jobs instead)
    cancel_poll_interval: float = 0.5
    job_nice: int = JOB_NICE  # 0: the worker's own CPU priority

    @classmethod
    def from_settings(cls, settings) -> SandboxLimits:
        lim = settings.limits
        tf_threads = settings.worker.tf_threads or threads_per_job(settings.worker.concurrency)
        return cls(
            wall_seconds=lim.job_wall_seconds,
            memory_bytes=lim.job_memory_bytes,
            file_bytes=lim.job_file_bytes,
            cpu_seconds=lim.job_cpu_seconds,
            tf_threads=tf_threads,
            cancel_poll_interval=settings.worker.cancel_poll_interval,
            job_nice=settings.worker.job_nice,
        )


def threads_per_job(concurrency: int, *, cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> int:
    """TensorFlow threads for each of `concurrency` jobs sharing this host: its usable CPUs divided among them.

    The usable CPUs are the cores this process may run on (`sched_getaffinity`), fewer when the container's
    cgroup has a CPU quota (`docker run --cpus`, a Kubernetes limit, or replicas of `--scale worker=N` each given
    a share): the quota rounded down, at least 1. By default every TensorFlow process sizes its pools to all the
    cores, so two jobs on two cores run four or more busy threads and the API waits behind them (status p99 of
    30-40 ms instead of 11-16 ms with two jobs on two cores; bench/service.py, docs/BENCHMARKS.md)."""
    from workers import cgroup

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup.cpu_limit(cgroup_root or cgroup.CGROUP_ROOT, proc_cgroup or cgroup.PROC_SELF_CGROUP)
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores // max(1, concurrency))


@dataclass(frozen=True)
class SandboxJob:
    model_path: str
    data_path: str | None
    spec: dict
    scratch: str  # the attempt's private directory; outputs go to scratch/out


@dataclass
class SandboxResult:
    status: JobStatus | None  # succeeded | failed | cancelled; None: stopped before the end (released)
    error: dict | None = None
    out_dir: Path | None = None
    returncode: int | None = None
    log_tail: str = ""
    wall_s: float = 0.0
    events: int = field(default=0)
    retryable: bool = False  # killed from outside (not a limit): worth another attempt
    memory: MemoryFacts | None = None


@dataclass
class Hooks:
    """How the parent talks to the rest of the system while the child runs (all optional)."""

    on_progress: Callable[[dict], None] = lambda p: None
    should_cancel: Callable[[], bool] = lambda: False
    should_stop: Callable[[], bool] = lambda: False  # the worker shuts down: stop and release the attempt
    on_tick: Callable[[], bool] = lambda: True  # heartbeat; False: this attempt no longer owns the job
    on_log: Callable[[str], None] = lambda m: None
    tick_interval: float = 2.0


def child_environment(scratch: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The job process's environment: the worker's, with every per-user location that Python, Keras or TensorFlow
    may write to (home, Keras home, temp, caches, config) moved into the attempt's scratch directory, which is
    removed afterwards. The job process writes nothing outside the data directory."""
    base = dict(os.environ if base is None else base)
    home = scratch / "home"
    places = {
        "HOME": home,
        "KERAS_HOME": home / ".keras",
        "TMPDIR": scratch / "tmp",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "MPLCONFIGDIR": home / ".config" / "matplotlib",
    }
    for path in places.values():
        path.mkdir(parents=True, exist_ok=True)
    for name in ("TEMP", "TMP"):  # no other temp directory
        base.pop(name, None)
    # the child runs in the scratch directory with another HOME: make sure it imports this very package, and the
    # same user site-packages as the worker (found through HOME otherwise), installed or not
    package_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(filter(None, [package_root, base.get("PYTHONPATH")]))
    return {
        **base,
        **{k: str(v) for k, v in places.items()},
        "TF_CPP_MIN_LOG_LEVEL": base.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": python_path,
        "PYTHONUSERBASE": base.get("PYTHONUSERBASE") or site.getuserbase(),
    }


# --------------------------------------------------------------------------- parent side


def run_sandboxed(
    job: SandboxJob, limits: SandboxLimits, hooks: Hooks | None = None, *, cgroup_root: Path | None = None
) -> SandboxResult:
    """Run one attempt in a child process and wait for it; never raises for what the child does. `cgroup_root`:
    where the container's cgroup files are read (the OOM-kill count before and after; tests give fake ones)."""
    from workers import cgroup

    hooks = hooks or Hooks()
    cgroup_root = cgroup_root or cgroup.CGROUP_ROOT
    oom_before = cgroup.oom_kills(cgroup_root)
    scratch = Path(job.scratch)
    out_dir = scratch / OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    request = {"job": asdict(job), "limits": asdict(limits), "parent_pid": os.getpid()}
    (scratch / REQUEST_NAME).write_text(json.dumps(request))
    log_path = scratch / LOG_NAME

    rfd, wfd = os.pipe()
    env = child_environment(scratch)
    peak = PeakMemory()
    started = time.monotonic()
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.sandbox_child", str(scratch / REQUEST_NAME), str(wfd)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(wfd,),
                start_new_session=True,
                env=env,
                cwd=str(scratch),
            )
        finally:
            os.close(wfd)
    try:
        result = _supervise(
            proc,
            rfd,
            job,
            limits,
            hooks,
            started,
            peak,
            lambda peak_bytes: memory_facts(cgroup_root, oom_before, peak_bytes),
        )
    finally:
        os.close(rfd)
        if proc.poll() is None:
            _kill(proc)
    result.out_dir = out_dir
    result.wall_s = time.monotonic() - started
    result.log_tail = _tail(log_path)
    return result


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _supervise(proc, rfd, job, limits, hooks, started, peak: PeakMemory, facts_at_death) -> SandboxResult:
    sel = selectors.DefaultSelector()
    sel.register(rfd, selectors.EVENT_READ)
    buf = b""
    final: dict | None = None
    n_events = 0
    cancel_sent_at: float | None = None
    next_cancel_poll = next_tick = 0.0
    eof = False
    exited_at = 0.0
    peak_rss: int | None = None
    verdict: SandboxResult | None = None

    def handle(line: bytes):
        nonlocal final, n_events
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if msg.get("type") == "progress":
            n_events += 1
            hooks.on_progress(msg.get("data") or {})
        elif msg.get("type") == "log":
            hooks.on_log(str(msg.get("message", "")))
        elif msg.get("type") == "result":
            final = msg

    while True:
        now = time.monotonic()
        if not eof:
            for _key, _ev in sel.select(timeout=0.2):
                chunk = os.read(rfd, 65536)
                if not chunk:
                    eof = True
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        handle(line)
        else:
            time.sleep(0.05)
        if proc.returncode is None:
            peak.poll(proc.pid)
            _rc, rss = reap_child(proc)
            peak_rss = peak.at_exit(rss) if _rc is not None else None
        if proc.returncode is not None:
            exited_at = exited_at or time.monotonic()
            if eof or final is not None or time.monotonic() - exited_at > 1.0:
                break
        if verdict is not None:
            continue
        now = time.monotonic()
        if now - started > limits.wall_seconds:
            _kill(proc)
            verdict = SandboxResult(
                JobStatus.FAILED,
                error_dict(
                    "resource_limit",
                    f"the job exceeded the wall-time limit of {limits.wall_seconds:g} s "
                    "(limits.job_wall_seconds) and was stopped",
                ),
            )
            continue
        if hooks.should_stop():
            _kill(proc)
            verdict = SandboxResult(None, error_dict("interrupted", "the worker shut down during the job"))
            continue
        if now >= next_tick:
            next_tick = now + hooks.tick_interval
            if not hooks.on_tick():
                _kill(proc)
                verdict = SandboxResult(None, error_dict("interrupted", "the attempt lost its claim on the job"))
                continue
        if cancel_sent_at is None and now >= next_cancel_poll:
            next_cancel_poll = now + limits.cancel_poll_interval
            if hooks.should_cancel():
                (Path(job.scratch) / CANCEL_FLAG).touch()
                cancel_sent_at = now
        if cancel_sent_at is not None and now - cancel_sent_at > CANCEL_GRACE_SECONDS:
            _kill(proc)
            verdict = SandboxResult(
                JobStatus.CANCELLED,
                error_dict(
                    "cancelled",
                    f"the job was cancelled (stopped after {CANCEL_GRACE_SECONDS:g} s without reaching "
                    "a batch boundary)",
                ),
            )
    if buf.strip():
        handle(buf)
    rc = proc.wait()
    if verdict is not None:
        verdict.returncode, verdict.events = rc, n_events
        return verdict
    if final is not None:
        status = JobStatus(final["status"])
        return SandboxResult(status, final.get("error"), returncode=rc, events=n_events)
    if cancel_sent_at is not None:
        return SandboxResult(
            JobStatus.CANCELLED, error_dict("cancelled", "the job was cancelled"), returncode=rc, events=n_events
        )
    memory = facts_at_death(peak_rss) if rc == -signal.SIGKILL else None
    return SandboxResult(
        JobStatus.FAILED,
        explain_death(rc, limits, memory),
        returncode=rc,
        events=n_events,
        retryable=death_is_retryable(rc, limits, memory),
        memory=memory,
    )


# TensorFlow / XLA / CUDA start-up chatter: absl (glog) lines of any severity ("E0000 00:00:... cuda_executor.cc"),
# the older "2026-01-01 10:00:00.000000: W tensorflow/..." form, and absl's banner
_NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|WARNING: All log messages before absl|To enable the following instructions: )"
)


def _install_paths() -> list[tuple[str, str]]:
    """Where Python, its packages and this package are installed, longest first, and what a log shows instead."""
    places = {p: "<site-packages>" for p in [*site.getsitepackages(), site.getusersitepackages()]}
    places.update(
        {str(Path(__file__).resolve().parents[1]): "<secateurs>", sys.prefix: "<python>", sys.base_prefix: "<python>"}
    )
    return sorted(((p.rstrip("/"), name) for p, name in places.items() if p and p != "/"), key=lambda x: -len(x[0]))


def _tail(path: Path, limit: int = 4000) -> str:
    """The end of the child's output, without TensorFlow's start-up chatter and without the host's install paths
    (shown as <site-packages>, <python>, <secateurs>, <job>): what the job itself said, for its owner."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = "\n".join(line for line in text.splitlines() if not _NOISE.match(line))
    for place, name in [(str(path.parent.resolve()), "<job>"), *_install_paths()]:
        text = text.replace(place, name)
    return text[-limit:]

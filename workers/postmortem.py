"""How a job process that ended without a result is explained: the signal, and whether memory was near a limit
(its peak resident memory, the container's memory limit and the out-of-memory kills its cgroup counted), so that
only a process killed from outside, not by a limit, is retried."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workers.jobs import error_dict

if TYPE_CHECKING:
    from workers.sandbox import SandboxLimits

EXIT_PARENT_GONE = 70  # the job process's exit status when its worker went away


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def gib(n: int) -> str:
    """A memory limit as configured (bytes) and readable: '4294967296 bytes (4.00 GiB)'."""
    return f"{n} bytes ({n / 2**30:.2f} GiB)"


MEMORY_NEAR_LIMIT = 0.9  # a peak resident memory above this share of a memory limit counts as reaching it


@dataclass(frozen=True)
class MemoryFacts:
    """What the parent knows about a dead child's memory: its peak resident memory (wait4's ru_maxrss), the
    container's memory limit (cgroup), and the out-of-memory kills the container's cgroup counted while it ran."""

    peak_rss_bytes: int | None = None
    cgroup_limit_bytes: int | None = None
    oom_kills: int | None = None  # None: the kernel does not say


def _memory_verdict(limits: SandboxLimits, memory: MemoryFacts | None) -> str | None:
    """Why a SIGKILL was (very likely) a memory limit, or None when nothing says so."""
    if memory is None:
        return None
    if memory.oom_kills:
        return (
            f"the container's cgroup counted {memory.oom_kills} out-of-memory kill(s) while the job ran "
            f"(peak memory {gib_short(memory.peak_rss_bytes)})"
        )
    peak = memory.peak_rss_bytes
    for limit, what in (
        (limits.memory_bytes, "limits.job_memory_bytes"),
        (memory.cgroup_limit_bytes, "the container's memory limit"),
    ):
        if peak is not None and limit and peak >= MEMORY_NEAR_LIMIT * limit:
            return f"its peak memory {gib_short(peak)} reached {peak / limit:.0%} of {gib(limit)} ({what})"
    return None


def gib_short(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.2f} GiB"


def death_is_retryable(returncode: int, limits: SandboxLimits, memory: MemoryFacts | None) -> bool:
    """A job process killed by SIGKILL from outside (not by a memory limit: its peak memory is known and far from
    every limit, and no out-of-memory kill was counted) may succeed when run again; nothing else is retried."""
    return (
        returncode == -signal.SIGKILL
        and memory is not None
        and memory.peak_rss_bytes is not None
        and _memory_verdict(limits, memory) is None
    )


def explain_death(returncode: int, limits: SandboxLimits, memory: MemoryFacts | None = None) -> dict:
    """An error dict for a child that ended without reporting a result, saying what is known."""
    if returncode < 0:
        sig = -returncode
        name = _signal_name(sig)
        if sig == signal.SIGXCPU:
            return error_dict(
                "resource_limit",
                f"the job process exceeded the CPU-time limit of "
                f"{limits.cpu_seconds} s (limits.job_cpu_seconds) and was killed",
            )
        if sig == signal.SIGXFSZ:
            return error_dict(
                "resource_limit",
                f"the job process exceeded the file-size limit of {limits.file_bytes} bytes (limits.job_file_bytes)",
            )
        if sig == signal.SIGKILL:
            verdict = _memory_verdict(limits, memory)
            if verdict is not None:
                return error_dict(
                    "resource_limit",
                    f"the job process was killed ({name}) by the kernel's out-of-memory killer: {verdict}",
                )
            if memory is None or memory.peak_rss_bytes is None:
                return error_dict(
                    "crashed",
                    f"the job process was killed ({name}); its peak memory is not known, "
                    "so it may have been the kernel's out-of-memory killer (job memory "
                    f"limit {gib(limits.memory_bytes)}, limits.job_memory_bytes)",
                )
            counted = (
                "no out-of-memory kill counted in the container's cgroup"
                if memory.oom_kills == 0
                else "the kernel keeps no out-of-memory kill count here"
            )
            cgroup = f", container limit {gib_short(memory.cgroup_limit_bytes)}" if memory.cgroup_limit_bytes else ""
            return error_dict(
                "crashed",
                f"the job process was killed ({name}) from outside, not by a memory limit "
                f"(peak memory {gib_short(memory.peak_rss_bytes)} of the "
                f"{gib_short(limits.memory_bytes)} limits.job_memory_bytes{cgroup}; "
                f"{counted})",
            )
        if sig in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
            return error_dict(
                "crashed",
                f"the job process crashed ({name}); a failed allocation under the "
                f"memory limit of {gib(limits.memory_bytes)} (limits.job_memory_bytes) "
                "is the usual cause",
            )
        return error_dict("crashed", f"the job process was killed by {name}")
    if returncode == EXIT_PARENT_GONE:
        return error_dict("interrupted", "the job process stopped because its worker went away")
    return error_dict("crashed", f"the job process exited with status {returncode} without a result")


# --------------------------------------------------------------------------- parent side


def memory_facts(root: Path, oom_before: int | None, peak: int | None) -> MemoryFacts:
    from workers import cgroup

    oom_after = cgroup.oom_kills(root)
    kills = None if oom_before is None or oom_after is None else max(0, oom_after - oom_before)
    return MemoryFacts(peak_rss_bytes=peak, cgroup_limit_bytes=cgroup.memory_limit(root), oom_kills=kills)


class PeakMemory:
    """The peak resident memory of a child process. Its resource usage at exit (wait4's ru_maxrss) is exact but
    also counts the parent's own peak before the child's exec (Linux carries the old address space's high-water
    mark over an exec): above the parent's peak it is the child's; otherwise the child's high-water mark polled
    from /proc/PID/status (VmHWM, counted from the exec) stands in."""

    def __init__(self):
        import resource

        self.parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the child starts
        self.polled: int | None = None

    def poll(self, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.polled = max(self.polled or 0, int(line.split()[1]) * 1024)
                        return
        except (OSError, ValueError, IndexError):  # gone, or not Linux
            pass

    def at_exit(self, ru_maxrss_bytes: int | None) -> int | None:
        """The child's peak: exact above the parent's peak; else the polled one, or, for a child that died before
        it was polled, ru_maxrss itself (an upper bound: never below the truth, so never a false "far from the
        limit")."""
        if ru_maxrss_bytes is not None and ru_maxrss_bytes > self.parent_peak:
            return ru_maxrss_bytes
        return self.polled if self.polled is not None else ru_maxrss_bytes


def reap_child(proc: subprocess.Popen) -> tuple[int | None, int | None]:
    """(exit code, ru_maxrss in bytes) of a child that ended, reaped with wait4 to keep its resource usage;
    (None, None) while it runs. Popen then knows the exit code (it is never waited for twice)."""
    if proc.returncode is not None:
        return proc.returncode, None
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere
        return proc.poll(), None
    if pid == 0:
        return None, None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024  # kilobytes on Linux

"""How a job process that died without a result is explained: a SIGKILL far from every memory limit is named as
such and retried, one at a limit is the out-of-memory killer; the peak memory is the child's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from workers.postmortem import MemoryFacts, PeakMemory, death_is_retryable, explain_death, reap_child
from workers.sandbox import SandboxLimits

LIMITS = SandboxLimits(memory_bytes=2 * 2**30, file_bytes=1000, cpu_seconds=60)
GiB = 2**30


def test_a_sigkill_far_from_every_memory_limit_is_blamed_on_no_limit_and_is_retryable():
    memory = MemoryFacts(peak_rss_bytes=300 * 2**20, cgroup_limit_bytes=8 * GiB, oom_kills=0)
    error = explain_death(-signal.SIGKILL, LIMITS, memory)
    assert error["code"] == "crashed" and "SIGKILL" in error["message"] and "from outside" in error["message"]
    assert "not by a memory limit" in error["message"] and "peak memory 0.29 GiB" in error["message"]
    assert "out-of-memory killer" not in error["message"]
    assert death_is_retryable(-signal.SIGKILL, LIMITS, memory)


@pytest.mark.parametrize(
    "memory, says",
    [
        (MemoryFacts(peak_rss_bytes=300 * 2**20, cgroup_limit_bytes=8 * GiB, oom_kills=1), "counted 1 out-of-memory"),
        (MemoryFacts(peak_rss_bytes=int(1.9 * GiB), oom_kills=None), "limits.job_memory_bytes"),  # 95% of 2 GiB
        (MemoryFacts(peak_rss_bytes=int(0.95 * GiB), cgroup_limit_bytes=GiB, oom_kills=0), "container's memory limit"),
    ],
)
def test_a_sigkill_at_a_memory_limit_is_the_out_of_memory_killer_and_is_not_retried(memory, says):
    error = explain_death(-signal.SIGKILL, LIMITS, memory)
    assert error["code"] == "resource_limit" and "out-of-memory killer" in error["message"]
    assert says in error["message"] and "SIGKILL" in error["message"]
    assert not death_is_retryable(-signal.SIGKILL, LIMITS, memory)


def test_only_a_sigkill_with_known_memory_is_retried():
    far = MemoryFacts(peak_rss_bytes=2**20, oom_kills=0)
    assert not death_is_retryable(-signal.SIGKILL, LIMITS, MemoryFacts())  # peak unknown: maybe memory
    assert not death_is_retryable(-signal.SIGKILL, LIMITS, None)
    assert not death_is_retryable(-signal.SIGSEGV, LIMITS, far) and not death_is_retryable(1, LIMITS, far)


def test_the_peak_memory_of_a_killed_child_is_its_own_not_its_parents():
    """A child that touched 200 MiB and was killed: its peak is about 200 MiB, whatever the parent (this test
    process, with TensorFlow loaded or not) held when it started the child."""
    code = (
        "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; print('ok', flush=True); "
        "time.sleep(60)"
    )
    peak = PeakMemory()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ok"
    assert reap_child(proc) == (None, None)  # still running
    peak.poll(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (reaped := reap_child(proc))[0] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rc, ru_maxrss = reaped
    assert rc == -signal.SIGKILL and proc.wait() == -signal.SIGKILL and proc.returncode == -signal.SIGKILL
    assert 200 * 2**20 <= peak.at_exit(ru_maxrss) < 300 * 2**20


def test_a_child_killed_before_it_was_polled_gets_an_upper_bound_of_its_peak():
    """ru_maxrss at or below the parent's own peak may be the parent's: the polled high-water mark is the child's,
    and without one ru_maxrss stands in (too high at worst, so a kill is never wrongly called far from a limit)."""
    peak = PeakMemory()
    peak.parent_peak = 500 * 2**20
    assert peak.at_exit(400 * 2**20) == 400 * 2**20
    assert peak.at_exit(None) is None
    peak.polled = 100 * 2**20
    assert peak.at_exit(400 * 2**20) == 100 * 2**20
    assert peak.at_exit(600 * 2**20) == 600 * 2**20  # above the parent's peak: the child's own

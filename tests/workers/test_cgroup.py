"""Reading the container's cgroup limits (CPU quota, memory limit, OOM kills) from fake cgroup v1 and v2 trees."""

from __future__ import annotations

import os

import pytest

from workers import cgroup
from workers.sandbox import threads_per_job


def tree(root, files: dict[str, str], membership: str = "0::/\n"):
    for rel, text in files.items():
        path = root / "fs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "fs").mkdir(exist_ok=True)
    proc = root / "proc_self_cgroup"
    proc.write_text(membership)
    return root / "fs", proc


@pytest.mark.parametrize(
    "files, membership, cpus",
    [
        ({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0),  # v2, in a container (own cgroup namespace)
        ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),
        ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # no quota
        (
            {"cpu.max": "max 100000\n", "system.slice/worker.scope/cpu.max": "50000 100000\n"},
            "0::/system.slice/worker.scope\n",
            0.5,
        ),  # v2 on a host: the process's own group
        ({"cpu.max": "100000 100000\n", "a/cpu.max": "400000 100000\n"}, "0::/a\n", 1.0),  # the parent is tighter
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n", 3.0),  # v1
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            "2:cpu,cpuacct:/\n",
            None,
        ),  # v1 without a quota
        ({}, "", None),  # no cgroup file system at all
    ],
)
def test_the_cpu_quota_is_read_from_cgroup_v2_and_v1(tmp_path, files, membership, cpus):
    root, proc = tree(tmp_path, files, membership)
    assert cgroup.cpu_limit(root, proc) == cpus


def test_tensorflow_threads_follow_the_container_cpu_quota_not_the_host_cores(tmp_path):
    """`--scale worker=N` (or `--cpus`) gives each container a quota; affinity still lists every core."""
    root, proc = tree(tmp_path, {"cpu.max": "100000 100000\n"})
    assert threads_per_job(1, cgroup_root=root, proc_cgroup=proc) == 1
    assert threads_per_job(2, cgroup_root=root, proc_cgroup=proc) == 1
    root, proc = tree(tmp_path / "half", {"cpu.max": "50000 100000\n"})
    assert threads_per_job(1, cgroup_root=root, proc_cgroup=proc) == 1  # under one CPU: still one thread
    root, proc = tree(tmp_path / "wide", {"cpu.max": "6400000 100000\n"})  # a quota above the cores: the cores
    assert threads_per_job(1, cgroup_root=root, proc_cgroup=proc) == len(os.sched_getaffinity(0))


def test_the_memory_limit_and_oom_kill_count_are_read_from_cgroup_v2_and_v1(tmp_path):
    root, proc = tree(
        tmp_path / "v2", {"memory.max": "4294967296\n", "memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n"}
    )
    assert cgroup.memory_limit(root, proc) == 4 * 2**30 and cgroup.oom_kills(root, proc) == 2
    root, proc = tree(tmp_path / "v2max", {"memory.max": "max\n", "memory.events": "oom_kill 0\n"})
    assert cgroup.memory_limit(root, proc) is None and cgroup.oom_kills(root, proc) == 0
    root, proc = tree(
        tmp_path / "v1",
        {
            "memory/w/memory.limit_in_bytes": "1073741824\n",
            "memory/w/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        },
        "4:memory:/w\n0::/\n",
    )
    assert cgroup.memory_limit(root, proc) == 2**30 and cgroup.oom_kills(root, proc) == 5
    root, proc = tree(tmp_path / "v1free", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}, "4:memory:/\n")
    assert cgroup.memory_limit(root, proc) is None and cgroup.oom_kills(root, proc) is None

"""What the container's control groups allow this process: its CPU quota and memory limit, and the out-of-memory
kills the kernel counted, read from cgroup v2 (`cpu.max`, `memory.max`, `memory.events`) or v1 (`cpu.cfs_quota_us`
and `cpu.cfs_period_us`, `memory.limit_in_bytes`, `memory.oom_control`).

`sched_getaffinity` and `os.cpu_count` ignore a CPU quota: a container started with `--cpus 2` (or each of N
replicas of `--scale worker=N` given a share) still sees every core of the host. The process's own cgroup is found
in /proc/self/cgroup and read together with its ancestors (the tightest limit wins), under a root that tests point
at fake files. Every reader returns None when there is nothing to read (no cgroup file system, not Linux).
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_V1_UNLIMITED = 1 << 62  # memory.limit_in_bytes of an unlimited v1 group is PAGE_COUNTER_MAX pages, about 2**63


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _membership(proc_cgroup: Path) -> dict[str, str]:
    """controller -> the process's cgroup path; "" for the v2 unified hierarchy ("0::/path")."""
    out = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _chain(base: Path, cgroup_path: str | None) -> list[Path]:
    """The process's cgroup directory under `base` and its ancestors up to `base` (leaf first). Inside a container
    with its own cgroup namespace the path is "/" and `base` is the container's group itself."""
    dirs = [base]
    if cgroup_path:
        parts = [p for p in cgroup_path.split("/") if p and p not in (".", "..")]
        for i in range(1, len(parts) + 1):
            d = base.joinpath(*parts[:i])
            if d.is_dir():
                dirs.append(d)
    return dirs[::-1]


def _v1_dirs(root: Path, controller: str, member: dict[str, str]) -> list[Path]:
    for name in (controller, f"{controller},cpuacct", f"cpuacct,{controller}"):
        base = root / name
        if base.is_dir():
            return _chain(base, member.get(controller))
    return []


def cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The CPUs the cgroup quota allows (quota / period, e.g. 1.5), the tightest of the process's group and its
    ancestors; None without a quota."""
    member = _membership(proc_cgroup)
    limits = []
    for d in _chain(root, member.get("")):  # v2: "max 100000" (no quota) or "150000 100000"
        fields = (_read(d / "cpu.max") or "").split()
        try:
            quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
        except (IndexError, ValueError):  # missing, or "max"
            continue
        if quota > 0 and period > 0:
            limits.append(quota / period)
    for d in _v1_dirs(root, "cpu", member):
        try:
            quota = int((_read(d / "cpu.cfs_quota_us") or "").strip())
            period = int((_read(d / "cpu.cfs_period_us") or "").strip())
        except ValueError:
            continue
        if quota > 0 and period > 0:
            limits.append(quota / period)
    return min(limits) if limits else None


def memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """The memory limit in bytes of the process's cgroup (the tightest up the tree); None when unlimited."""
    member = _membership(proc_cgroup)
    limits = []
    for d in _chain(root, member.get("")):
        text = (_read(d / "memory.max") or "").strip()
        if text.isdigit():
            limits.append(int(text))
    for d in _v1_dirs(root, "memory", member):
        text = (_read(d / "memory.limit_in_bytes") or "").strip()
        if text.isdigit() and int(text) < _V1_UNLIMITED:
            limits.append(int(text))
    return min(limits) if limits else None


def oom_kills(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """How many processes of the process's cgroup the kernel's out-of-memory killer has killed so far (the
    `oom_kill` counter of memory.events, v2, or memory.oom_control, v1); None when the kernel does not say."""
    member = _membership(proc_cgroup)
    for d in _chain(root, member.get("")) + _v1_dirs(root, "memory", member):
        for name in ("memory.events", "memory.oom_control"):
            for line in (_read(d / name) or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
    return None

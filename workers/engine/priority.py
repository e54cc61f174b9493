"""Lower a process's CPU priority, autogroup included: what the job processes (`workers.sandbox_child`) and the
upload inspectors (`inspection.isolated`) do first, so that the API answering other requests keeps the CPU."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["lower_priority"]


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by `nice` (0: leave it). A process in its own session (start_new_session),
    on Linux with autogrouping (kernel.sched_autogroup_enabled=1, the default on desktop and many server kernels),
    is its own scheduling group: a plain nice only ranks threads *inside* that group, so the group's nice is set
    too."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError:  # pragma: no cover - not permitted: run at the normal priority
        pass
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:  # no autogrouping (or not Linux): the plain nice above is what counts
        pass

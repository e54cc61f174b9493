"""Job statuses, allowed transitions and ids."""

from __future__ import annotations

import pytest

from workers.jobs import ACTIVE, TERMINAL, JobStatus, can_transition, new_job_id


def test_terminal_states_allow_no_transition():
    for status in TERMINAL:
        assert status.terminal
        assert not any(can_transition(status, new) for new in JobStatus)
    assert ACTIVE | TERMINAL == set(JobStatus) and not ACTIVE & TERMINAL


@pytest.mark.parametrize("old, new, allowed", [
    ("queued", "running", True), ("queued", "cancelled", True), ("queued", "succeeded", False),
    ("running", "succeeded", True), ("running", "queued", True), ("running", "failed", True),
    ("succeeded", "running", False), ("cancelled", "queued", False),
])
def test_transitions(old, new, allowed):
    assert can_transition(JobStatus(old), JobStatus(new)) is allowed


def test_job_ids_are_unique_and_sort_in_creation_order():
    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i.startswith("job_") and len(i) == len(ids[0]) for i in ids)

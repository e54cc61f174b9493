"""Job statuses, allowed transitions and ids."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from workers.errors import DataError
from workers.jobs import (
    ACTIVE,
    TERMINAL,
    EventKind,
    JobEvent,
    JobStatus,
    can_transition,
    error_dict,
    new_job_id,
    public_error,
)


def test_terminal_states_allow_no_transition():
    for status in TERMINAL:
        assert status.terminal
        assert not any(can_transition(status, new) for new in JobStatus)
    assert ACTIVE | TERMINAL == set(JobStatus) and not ACTIVE & TERMINAL


@pytest.mark.parametrize(
    "old, new, allowed",
    [
        ("queued", "running", True),
        ("queued", "cancelled", True),
        ("queued", "succeeded", False),
        ("running", "succeeded", True),
        ("running", "queued", True),
        ("running", "failed", True),
        ("succeeded", "running", False),
        ("cancelled", "queued", False),
    ],
)
def test_transitions(old, new, allowed):
    assert can_transition(JobStatus(old), JobStatus(new)) is allowed


def test_job_ids_are_unique_and_sort_in_creation_order():
    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i.startswith("job_") and len(i) == len(ids[0]) for i in ids)


def test_a_job_error_is_stored_with_its_code_and_shown_with_the_deprecated_type_alias():
    stored = error_dict("data_error", "y_train has 3 rows, x_train 4", field="data")
    assert stored == {"code": "data_error", "message": "y_train has 3 rows, x_train 4", "field": "data"}
    assert DataError("y_train has 3 rows, x_train 4", field="data").to_dict() == stored
    shown = public_error(stored)
    assert shown == {**stored, "type": "data_error"} and stored == error_dict(
        "data_error", shown["message"], field="data"
    )


def test_an_error_stored_before_the_rename_is_shown_with_both_keys():
    assert public_error({"type": "crashed", "message": "SIGKILL"}) == {
        "code": "crashed",
        "type": "crashed",
        "message": "SIGKILL",
    }
    assert public_error(None) is None


def test_a_status_event_shows_its_error_with_the_alias_and_other_events_unchanged():
    at = datetime.now(timezone.utc)
    failed = JobEvent("job_1", 7, EventKind.STATUS, {"status": "failed", "error": error_dict("crashed", "x")}, at)
    assert failed.to_dict()["error"] == {"code": "crashed", "type": "crashed", "message": "x"}
    assert failed.data["error"] == {"code": "crashed", "message": "x"}  # what is stored stays as it was
    progress = JobEvent("job_1", 8, EventKind.PROGRESS, {"phase": "prune"}, at)
    assert progress.to_dict() == {"seq": 8, "kind": "progress", "at": at.isoformat(), "phase": "prune"}

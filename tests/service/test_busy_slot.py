"""service.services.jobs.busy_slot: the bounded slots of upload inspections and preflights."""

from __future__ import annotations

import threading

import pytest

from service.errors import RETRY_AFTER_SECONDS, Unavailable
from service.services.jobs import busy_slot


def test_a_free_slot_is_held_inside_the_block_and_released_after_it_even_on_error():
    slots = threading.BoundedSemaphore(1)
    with busy_slot(slots, "inspecting other uploads (1 at a time", "max_concurrent_inspections", wait=0.05):
        assert not slots.acquire(blocking=False)  # taken
    with pytest.raises(RuntimeError):
        with busy_slot(slots, "inspecting other uploads (1 at a time", "max_concurrent_inspections", wait=0.05):
            raise RuntimeError("the inspection failed")
    assert slots.acquire(blocking=False)  # released both times


def test_no_free_slot_is_a_503_naming_the_limit_with_retry_after():
    slots = threading.BoundedSemaphore(1)
    slots.acquire()
    with pytest.raises(Unavailable) as info:
        with busy_slot(slots, "with other preflights (1 at a time", "max_concurrent_preflights", wait=0.05):
            pytest.fail("entered without a slot")
    err = info.value
    assert err.field == "limits.max_concurrent_preflights"
    assert err.message == (
        "the server is busy with other preflights (1 at a time, limits.max_concurrent_preflights); retry later"
    )
    assert err.headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}

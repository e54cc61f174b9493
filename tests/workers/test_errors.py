"""workers/errors.py: one root error with a stable code per meaning, a message and the field at fault."""

from __future__ import annotations

import inspect

import pytest

import workers.errors as errors
from workers.engine import errors as engine_errors

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]


def test_every_error_of_workers_has_the_one_root():
    assert CLASSES and all(issubclass(c, errors.SecateursError) for c in CLASSES)
    engine_classes = [c for _, c in inspect.getmembers(engine_errors, inspect.isclass) if issubclass(c, Exception)]
    assert set(engine_classes) <= set(CLASSES)  # workers.errors names every engine error too


def test_codes_are_one_per_meaning():
    by_code: dict[str, list[type]] = {}
    for c in CLASSES:
        by_code.setdefault(c.code, []).append(c)
    shared = {code: cs for code, cs in by_code.items() if len(cs) > 1}
    # the one shared code: an unavailable artifact store is an unavailable store
    assert shared == {"store_unavailable": [errors.ArtifactStoreUnavailable, errors.StoreUnavailable]}


@pytest.mark.parametrize("cls", [c for c in CLASSES if c is not errors.QuotaExceeded])
def test_every_error_carries_code_message_and_field(cls):
    e = cls("the thing is wrong", field="spec.steps.0")
    assert (e.code, e.message, e.field, str(e)) == (
        cls.code,
        "the thing is wrong",
        "spec.steps.0",
        "the thing is wrong",
    )
    assert e.to_dict() == {"code": cls.code, "message": "the thing is wrong", "field": "spec.steps.0"}
    assert cls("no field").to_dict() == {"code": cls.code, "message": "no field"}
    assert not hasattr(e, "http_status")  # statuses are the service's business


def test_a_quota_names_its_setting_as_the_field():
    e = errors.QuotaExceeded("max_active_jobs_per_tenant", 2, "2 active jobs already")
    assert (e.code, e.field, e.limit, e.value, e.message) == (
        "quota_exceeded",
        "limits.max_active_jobs_per_tenant",
        "max_active_jobs_per_tenant",
        2,
        "2 active jobs already",
    )


def test_store_errors_are_not_os_errors():
    assert not issubclass(errors.ArtifactStoreUnavailable, OSError)
    assert issubclass(errors.ArtifactStoreUnavailable, errors.StoreUnavailable)

"""workers/engine/inspection/limits.py: every bound is enforced and named, and must be positive."""

from __future__ import annotations

import dataclasses

import pytest

from workers.engine.errors import ModelRejected
from workers.engine.inspection import InspectLimits, inspect_model_file

LIMIT_CASES = {
    "max_file_bytes": 1000,
    "max_members": 2,
    "max_member_bytes": 1000,
    "max_total_bytes": 500,
    "max_config_bytes": 500,
    "max_json_depth": 5,
    "max_layers": 2,
    "max_params": 100,
    "max_tensor_elements": 100,
    "max_h5_objects": 3,
}


ZIP_ONLY_LIMITS = {"max_members", "max_member_bytes"}


@pytest.mark.parametrize(
    "limit, ext",
    [
        (limit, ext)
        for limit in sorted(LIMIT_CASES)
        for ext in ("keras", "h5")
        if ext == "keras" or limit not in ZIP_ONLY_LIMITS
    ],
)
def test_each_limit_refuses_a_benign_model_that_exceeds_it(limit, ext, saved):
    path, _ = saved["sequential", ext]
    limits = dataclasses.replace(InspectLimits(), **{limit: LIMIT_CASES[limit]})
    with pytest.raises(ModelRejected) as info:
        inspect_model_file(path, limits)
    assert limit in info.value.message


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(InspectLimits)])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        InspectLimits(**{field: 0})

"""workers/engine/inspection/jsontext.py: JSON under size and depth limits, in linear time, no duplicate keys."""

from __future__ import annotations

import time
import zipfile

import pytest

from tests import hostile
from tests.hostile import write_zip
from workers.engine.errors import ModelRejected
from workers.engine.inspection import inspect_model_file
from workers.engine.inspection.jsontext import json_depth


@pytest.mark.parametrize(
    "generate, member",
    [(hostile.keras_escaped_quotes_config, "config.json"), (hostile.keras_escaped_quotes_metadata, "metadata.json")],
)
def test_unterminated_strings_of_escaped_quotes_are_refused_in_linear_time(generate, member, tmp_path, canary):
    """'"' + '\\"' * 64000 took a quadratic string pattern 48 s (12 s for 32,000 in metadata.json)."""
    path = generate(tmp_path, canary)
    started = time.perf_counter()
    with pytest.raises(ModelRejected, match=f"{member} is not valid JSON"):
        inspect_model_file(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "text, depth",
    [
        ('{"a": [1, {"b": "x]]]\\"[["}]}', 3),
        ('"open [[[', 0),
        ('["a\\\\", [[]]]', 3),
        ('[["\\\\"]]', 2),
        ('"' + '\\"' * 10, 0),
        ("[" * 50 + '"\\', 50),
        ("{}", 1),
    ],
)
def test_json_depth_counts_brackets_outside_strings_only(text, depth):
    assert json_depth(text) == depth


def test_json_depth_scales_linearly_with_unterminated_strings():
    """A megabyte of escaped quotes (an hour for the quadratic pattern) is scanned in well under a second."""
    text = '"' + '\\"' * 2**19
    started = time.perf_counter()
    assert json_depth(text) == 0
    assert time.perf_counter() - started < 1.0


def test_duplicate_json_keys_are_refused(saved, tmp_path):
    src = saved["sequential", "keras"][0]
    with zipfile.ZipFile(src) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["config.json"] = b'{"class_name": "Sequential", "class_name": "Lambda", ' + members["config.json"][1:]
    path = write_zip(tmp_path / "dupkeys.keras", list(members.items()))
    with pytest.raises(ModelRejected, match="duplicate key 'class_name'"):
        inspect_model_file(path)

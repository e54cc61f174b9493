"""JSON documents from uploads, parsed under a size and nesting-depth limit in time linear in their length.

The depth is measured before parsing (the parser and the config walker recurse): strings are cut out first, then
brackets are counted. The string pattern is deterministic (a run of plain characters and escapes, which cannot
overlap) and also matches a string left open at the end of the text, so each byte is looked at a bounded number of
times: an unterminated string of escaped quotes (`"\\"\\"\\"...`) costs one pass, not one pass per quote.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from workers.engine.errors import EngineError, ModelRejected

# A string: its opening quote, then plain characters and escapes (possessive: never re-tried), then its closing
# quote, or the end of the text (an unterminated string, optionally ending in a lone backslash).
JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)

_OPEN = np.frombuffer(b"{[", dtype=np.uint8)
_CLOSE = np.frombuffer(b"}]", dtype=np.uint8)


def json_depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings, in linear time and without recursion."""
    skeleton = JSON_STRING.sub("", text).encode("ascii", "ignore")
    if not skeleton:
        return 0
    b = np.frombuffer(skeleton, dtype=np.uint8)
    step = np.isin(b, _OPEN).astype(np.int32) - np.isin(b, _CLOSE)
    return int(np.cumsum(step).max(initial=0))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(
    raw: bytes | str,
    source: str,
    *,
    max_bytes: int,
    max_depth: int,
    error: type[EngineError] = ModelRejected,
    bytes_limit_name: str = "max_config_bytes",
) -> Any:
    """Parse one JSON document of at most `max_bytes` nesting at most `max_depth` levels; duplicate keys refused.

    Raises `error` naming `source` and the limit for anything else.
    """
    if len(raw) > max_bytes:
        raise error(f"{source} is {len(raw)} bytes; the limit is {max_bytes} ({bytes_limit_name})")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise error(f"{source} is not UTF-8 text: {e}") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{source} nests {depth} levels deep; the limit is {max_depth} (max_json_depth)")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as e:
        raise error(f"{source} is not valid JSON: {str(e)[:200]}") from None

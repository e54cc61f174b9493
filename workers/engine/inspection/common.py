"""Rules shared by the format checks: which dtypes are plain numbers, and how a parser's crash becomes a refusal."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from workers.engine.errors import EngineError, ModelRejected


def plain_numeric(dtype: np.dtype) -> bool:
    """bool, signed/unsigned integers, float16/32/64: no objects, strings, records, sub-arrays, long doubles."""
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        return False
    return dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8))


@contextmanager
def malformed(name: str, kind: str, error: type[EngineError] = ModelRejected) -> Iterator[None]:
    """Turn a parser's own exception on a damaged file into `error` (ours pass through untouched)."""
    try:
        yield
    except EngineError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise error(f"{name}: damaged {kind}: {type(e).__name__}: {str(e)[:200]}") from None

"""Dataset archives (.npz): plain ``NAME.npy`` members whose headers declare a numeric dtype and a shape within the
limits, and whose sizes match those headers exactly (so no pickle can hide in them). Judged from the zip directory
and the .npy headers alone; numpy's loader reads the file afterwards with ``allow_pickle=False``.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np

from workers.engine.errors import DataError, UnsupportedFile
from workers.engine.inspection.common import malformed, plain_numeric
from workers.engine.inspection.limits import InspectLimits
from workers.engine.inspection.sniff import describe, is_zip, sniff
from workers.engine.inspection.ziparchive import open_zip

_NPZ_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.npy$")


def inspect_npz(
    path: str | Path, limits: InspectLimits = InspectLimits()
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Check a dataset .npz from its zip directory and .npy headers alone; return {array name: (shape, dtype)}.

    Raises UnsupportedFile for anything that is not a zip archive and DataError naming the array otherwise.
    """
    from numpy.lib import format as npy_format

    path = Path(path)
    head = sniff(path, limits, DataError)
    if not is_zip(head):
        raise UnsupportedFile(f"{path.name} is {describe(head)}, not a NumPy .npz archive")
    zf, infos = open_zip(path, limits, DataError, "the .npz archive")
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zf, malformed(path.name, "zip archive", DataError):
        if not infos:
            raise DataError(f"{path.name}: the .npz archive holds no arrays")
        for info in infos:
            member = info.filename
            if not _NPZ_NAME.match(member):
                raise DataError(f"{path.name}: member {member!r} is not a plain NAME.npy array name")
            key = member[: -len(".npy")]
            try:
                with zf.open(info) as f:
                    version = npy_format.read_magic(f)
                    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
                    if version not in readers:
                        raise DataError(
                            f"{path.name}: array {key!r} uses .npy format version {version}; "
                            "only 1.0 and 2.0 are accepted"
                        )
                    shape, _fortran, dtype = readers[version](f)
                    header_bytes = f.tell()
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as e:
                raise DataError(f"{path.name}: array {key!r} has a damaged .npy header: {str(e)[:200]}") from None
            if not plain_numeric(dtype):
                raise DataError(
                    f"{path.name}: array {key!r} has dtype {dtype}; only bool, integer and float "
                    "arrays are accepted (no objects, pickles, strings or records)"
                )
            elements = math.prod(shape)
            if any(d < 0 for d in shape) or elements > limits.max_tensor_elements:
                raise DataError(
                    f"{path.name}: array {key!r} declares shape {shape} ({elements} elements); the "
                    f"limit is {limits.max_tensor_elements} (max_tensor_elements)"
                )
            expected = header_bytes + elements * dtype.itemsize
            if info.file_size != expected:
                raise DataError(
                    f"{path.name}: array {key!r} declares shape {shape} {dtype} "
                    f"({expected} bytes with its header) but the member holds {info.file_size} bytes"
                )
            arrays[key] = (tuple(int(d) for d in shape), dtype)
    return arrays

"""HDF5 model and weights files, judged from their metadata alone: links, object headers, attributes.

Every link is examined without being followed, from its link-info record (type and address or target size), so
the cost of a walk is one step per link whatever the targets say. Keras writes plain trees: every object is reached
by exactly one hard link and there are no soft, external or user-defined links. So:

* soft, external and user-defined links are refused; their targets are read (to name them) only when short
  (`MAX_LINK_TARGET_BYTES`);
* a second hard link to an object already seen (a group linked into itself, a cycle, an alias) is refused;
* datasets must be stored in the file (no external raw storage, no virtual datasets), numeric, with known filters,
  and within the element limits; attributes small and plain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from workers.engine.errors import ModelRejected
from workers.engine.inspection.common import plain_numeric
from workers.engine.inspection.limits import InspectLimits

# Filters HDF5 applies itself (deflate, shuffle, fletcher32, scale-offset, n-bit) plus h5py's LZF.
KNOWN_H5_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
# A soft or external link's target is read (to name it in the refusal) only up to this size.
MAX_LINK_TARGET_BYTES = 1024


@dataclass
class H5Summary:
    datasets: int = 0
    weight_elements: int = 0  # datasets outside the optimizer groups
    total_bytes: int = 0


def h5_file(source, name: str):
    import h5py

    try:
        return h5py.File(source, "r", locking=False)
    except (OSError, ValueError) as e:
        raise ModelRejected(f"{name}: not a readable HDF5 file: {str(e)[:200]}") from None


def _object_address(obj) -> int:
    import h5py

    return h5py.h5o.get_info(obj.id).addr


def _link_target(group, key: str, info) -> str:
    """A soft or external link's target for a message: read only when short, else its size."""
    import h5py

    if info.u > MAX_LINK_TARGET_BYTES:
        return f"a {info.u}-byte target (longer than {MAX_LINK_TARGET_BYTES} bytes, not read)"
    link = group.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"{link.filename!r}:{link.path!r}"
    return repr(getattr(link, "path", "?"))


def check_h5(f, name: str, limits: InspectLimits, optimizer_groups: tuple[str, ...]) -> H5Summary:
    """Walk every link of an open HDF5 file from metadata alone; refuse anything Keras does not write."""
    import h5py

    summary = H5Summary()
    seen: dict[int, str] = {_object_address(f): "/"}  # object address -> the path it was first reached by
    count = 0
    stack: list[tuple[Any, str]] = [(f, "/")]
    while stack:
        group, gpath = stack.pop()
        for key in group:  # link names: iterating resolves nothing
            count += 1
            if count > limits.max_h5_objects:
                raise ModelRejected(f"{name}: more than {limits.max_h5_objects} HDF5 links (max_h5_objects)")
            raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")  # h5py: bytes if not UTF-8
            child = f"{gpath.rstrip('/')}/{raw.decode('utf-8', 'replace')}"
            info = group.id.links.get_info(raw)
            if info.type == h5py.h5l.TYPE_EXTERNAL:
                raise ModelRejected(
                    f"{name}: HDF5 link {child!r} is an external link to "
                    f"{_link_target(group, key, info)}; external links are not accepted"
                )
            if info.type == h5py.h5l.TYPE_SOFT:
                raise ModelRejected(
                    f"{name}: HDF5 soft link {child!r} (to {_link_target(group, key, info)}) is "
                    "not accepted: Keras writes no links, only groups and datasets"
                )
            if info.type != h5py.h5l.TYPE_HARD:
                raise ModelRejected(f"{name}: HDF5 link {child!r} is of an unsupported kind (type {info.type})")
            first = seen.get(info.u)
            if first is not None:
                raise ModelRejected(
                    f"{name}: HDF5 link {child!r} is a second hard link to {first!r} (a link cycle "
                    "or alias); Keras writes every object once"
                )
            seen[info.u] = child
            obj = group[key]
            check_h5_attributes(obj, child, name, limits)
            if isinstance(obj, h5py.Group):
                stack.append((obj, child))
            elif isinstance(obj, h5py.Dataset):
                check_h5_dataset(
                    obj, child, name, limits, summary, in_optimizer=child.split("/")[1] in optimizer_groups
                )
            else:
                raise ModelRejected(
                    f"{name}: HDF5 object {child!r} is a {type(obj).__name__}; only groups and datasets are accepted"
                )
    check_h5_attributes(f, "/", name, limits)
    return summary


def check_h5_dataset(ds, path: str, name: str, limits: InspectLimits, summary: H5Summary, in_optimizer: bool) -> None:
    import h5py

    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL or ds.is_virtual:
        raise ModelRejected(
            f"{name}: HDF5 dataset {path!r} is a virtual dataset (data mapped from other files); not accepted"
        )
    if dcpl.get_external_count() > 0:
        raise ModelRejected(
            f"{name}: HDF5 dataset {path!r} uses external storage ({ds.external[0][0]!r}); "
            "data must be stored inside the file"
        )
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in KNOWN_H5_FILTERS:
            raise ModelRejected(f"{name}: HDF5 dataset {path!r} uses filter {code}; only built-in filters are accepted")
    dtype = ds.dtype
    if not plain_numeric(dtype):
        raise ModelRejected(f"{name}: HDF5 dataset {path!r} has dtype {dtype}; only numeric dtypes are accepted")
    shape = ds.shape or ()
    elements = math.prod(shape)
    if elements > limits.max_tensor_elements:
        raise ModelRejected(
            f"{name}: HDF5 dataset {path!r} declares shape {shape} ({elements} elements); the "
            f"limit is {limits.max_tensor_elements} (max_tensor_elements)"
        )
    summary.datasets += 1
    summary.total_bytes += elements * dtype.itemsize
    if summary.total_bytes > limits.max_total_bytes:
        raise ModelRejected(
            f"{name}: HDF5 datasets declare more than {limits.max_total_bytes} bytes in all (max_total_bytes)"
        )
    if not in_optimizer:
        summary.weight_elements += elements
        if summary.weight_elements > limits.max_params:
            raise ModelRejected(f"{name}: the model declares more than {limits.max_params} weights (max_params)")


def check_h5_attributes(obj, path: str, name: str, limits: InspectLimits) -> None:
    """Attribute dataspaces must be small; attribute types plain (numbers or strings)."""
    for key in obj.attrs:
        attr = obj.attrs.get_id(key)
        shape = attr.shape or ()
        elements = math.prod(shape)
        if elements > limits.max_tensor_elements or elements * attr.dtype.itemsize > limits.max_config_bytes:
            raise ModelRejected(
                f"{name}: HDF5 attribute {key!r} of {path!r} declares shape {shape} "
                f"({attr.dtype}); larger than max_config_bytes / max_tensor_elements allow"
            )


def read_h5_text_attr(f, key: str, name: str, limits: InspectLimits) -> str | None:
    import h5py

    if key not in f.attrs:
        return None
    attr = f.attrs.get_id(key)
    if (attr.shape or ()) != () or not (h5py.check_string_dtype(attr.dtype) or attr.dtype.kind == "S"):
        raise ModelRejected(f"{name}: HDF5 attribute {key!r} must be a single string")
    value = f.attrs[key]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if len(value) > limits.max_config_bytes:
        raise ModelRejected(
            f"{name}: HDF5 attribute {key!r} is {len(value)} bytes; the limit is "
            f"{limits.max_config_bytes} (max_config_bytes)"
        )
    return str(value)

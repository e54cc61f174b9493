"""Hostile legacy .h5 files: a real Keras-saved .h5, then rewritten with h5py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from tests.hostile.base import arm_lambdas, saved_h5_bytes, secret_h5, self_linked_group

# ---------------------------------------------------------------------------------------------------------------
# Legacy .h5 attacks (a real Keras-saved .h5, then rewritten with h5py)
# ---------------------------------------------------------------------------------------------------------------


def saved_h5(tmp_dir: Path, name: str, with_lambda: bool = False) -> Path:
    path = Path(tmp_dir) / name
    path.write_bytes(saved_h5_bytes(with_lambda))
    return path


KERNEL = "model_weights/dense/dense/kernel"


def h5_lambda(tmp_dir: Path, canary: Path) -> Path:
    """CVE-2024-3660 in the legacy format: a Lambda's bytecode rewritten in the model_config attribute."""
    path = saved_h5(tmp_dir, "lambda.h5", with_lambda=True)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        arm_lambdas(config, canary)
        f.attrs["model_config"] = json.dumps(config)
    return path


def h5_training_config_function(tmp_dir: Path, canary: Path) -> Path:
    """A training_config whose loss is a reference to os.system."""
    path = saved_h5(tmp_dir, "training_config.h5")
    with h5py.File(path, "r+") as f:
        training = json.loads(f.attrs["training_config"])
        training["loss"] = {"module": "os", "class_name": "function", "config": "system", "registered_name": None}
        f.attrs["training_config"] = json.dumps(training)
    return path


def h5_oversized_tensor(tmp_dir: Path, canary: Path) -> Path:
    """A kernel declaring 2**40 float32 elements (4 TiB) in a file of a few KiB (chunks never written)."""
    path = saved_h5(tmp_dir, "oversized.h5")
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_dataset(KERNEL, shape=(2**20, 2**20), dtype="float32", chunks=(64, 64))
    return path


def h5_external_link(tmp_dir: Path, canary: Path) -> Path:
    """A layer's weight group replaced by an external link into another HDF5 file on the server."""
    secret = secret_h5(tmp_dir)
    path = saved_h5(tmp_dir, "external_link.h5")
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense/dense"]
        f["model_weights/dense/dense"] = h5py.ExternalLink(str(secret), "/vars")
    return path


def h5_external_storage(tmp_dir: Path, canary: Path) -> Path:
    """A kernel whose raw data lives in an external file (reads arbitrary server files as weights)."""
    raw = Path(tmp_dir) / "server_file.bin"
    raw.write_bytes(b"secret--" * 6)
    path = saved_h5(tmp_dir, "external_storage.h5")
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_dataset(KERNEL, shape=(4, 3), dtype="float32", external=[(str(raw), 0, 48)])
    return path


def h5_virtual_dataset(tmp_dir: Path, canary: Path) -> Path:
    """A kernel that is a virtual dataset mapped from another file."""
    secret = secret_h5(tmp_dir)
    path = saved_h5(tmp_dir, "virtual.h5")
    layout = h5py.VirtualLayout(shape=(4, 3), dtype="float32")
    layout[:] = h5py.VirtualSource(str(secret), "vars/0", shape=(4, 3))
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f.create_virtual_dataset(KERNEL, layout)
    return path


def h5_soft_link_outside(tmp_dir: Path, canary: Path) -> Path:
    """A soft link whose target climbs out of the file's hierarchy."""
    path = saved_h5(tmp_dir, "soft_link.h5")
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f[KERNEL] = h5py.SoftLink("/model_weights/../../etc/secret")
    return path


def h5_self_linked_group(tmp_dir: Path, canary: Path) -> Path:
    """A legacy .h5 whose model_weights/dense group holds a hard link to itself."""
    path = saved_h5(tmp_dir, "self_linked.h5")
    with h5py.File(path, "r+") as f:
        self_linked_group(f, "model_weights/dense/loop")
    return path


def h5_long_soft_link(tmp_dir: Path, canary: Path) -> Path:
    """A legacy .h5 with a soft link whose target is a megabyte long."""
    path = saved_h5(tmp_dir, "long_soft_link.h5")
    with h5py.File(path, "r+") as f:
        f["model_weights/alias"] = h5py.SoftLink("/model_weights" + "/dense" * 200_000)
    return path

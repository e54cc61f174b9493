"""The budget benchmark's task on the Secateurs side: a budget job run as a user runs it
(`workers.engine.pipeline.compress` with a JobSpec) on a pretrained model and the bench's MNIST split.

Registered into `bench.sides.secateurs.TASKS` (the worker imports that module).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.sides._shared import data, held_out_accuracy, kernel_sparsity

_TMP = Path(tempfile.mkdtemp(prefix="bench-budget-secateurs-"))


def budget_job(model_file: str, step: dict, batch_size: int = 128, seed: int = 0) -> dict:
    """compress() with one budget step; returns the manifest's budget, the kernels' sparsity and the held-out
    accuracy of the returned model (measured by the bench itself, not the engine)."""
    import keras

    from workers.engine.pipeline import compress
    from workers.spec import JobSpec

    x, y, xv, yv = data()
    npz = _TMP / "mnist.npz"
    if not npz.exists():
        np.savez(npz, x_train=x, y_train=y, x_val=xv, y_val=yv)
    out = _TMP / f"out-{time.monotonic_ns()}"
    spec = JobSpec.model_validate(
        {"steps": [step], "training": {"batch_size": batch_size}, "evaluation": {"latency": False}, "seed": seed}
    )
    t0 = time.perf_counter()
    manifest = compress(model_file, npz, spec, out)
    wall = time.perf_counter() - t0
    model = keras.saving.load_model(out / "model.keras")
    result = {
        "budget": manifest["budget"],
        "summary": manifest["summary"],
        "wall_time_s": wall,
        "before": manifest["before"]["evaluation"],
        "after": manifest["after"]["evaluation"],
        "sparsity": kernel_sparsity(model),
        "accuracy": held_out_accuracy(model),
        "gzip_bytes": {
            "before": manifest["before"]["file"]["gzip_bytes"],
            "after": manifest["after"]["file"]["gzip_bytes"],
        },
        "step_wall_time_s": manifest["steps"][0]["wall_time_s"],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


TASKS = {"budget_job": budget_job}

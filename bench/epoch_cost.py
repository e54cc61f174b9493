"""What an epoch and an optimizer step cost beyond their samples, to size limits.min_epoch_samples and
limits.step_cost_samples (issue 10: 1,000 epochs of 4 rows passed the sample budget and ran for half an hour).

`python -m bench.epoch_cost`: runs the engine's compress() on the tests' small MNIST model (a finetune step, no
latency timing) with a few (rows, epochs, batch) settings and derives, from the differences of the best of two runs:
the fixed cost of an epoch (4 rows: 41 epochs against 1), the cost of a sample (8,000 rows: 5 epochs against 1, at
batch 128) and the cost of a step (8,000 rows at batch 8 against batch 128), each also in "samples".
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from tests.conftest import load_mnist
    from tests.workers.jobfiles import make_job_files
    from workers.engine.pipeline import compress
    from workers.spec import JobSpec

    x, y, _, _ = load_mnist()
    d = Path(tempfile.mkdtemp(prefix="epoch-cost-"))
    files = make_job_files(d, (x, y), samples=512)

    def run(rows: int, epochs: int, batch: int) -> float:
        data = d / f"d{rows}.npz"
        if not data.exists():
            np.savez(data, x_train=x[:rows], y_train=y[:rows])
        spec = JobSpec.model_validate(
            {
                "steps": [{"kind": "finetune", "epochs": epochs}],
                "training": {"batch_size": batch},
                "evaluation": {"latency": False},
            }
        )
        best = float("inf")
        for i in range(2):
            start = time.perf_counter()
            compress(files.model, data, spec, d / f"out-{rows}-{epochs}-{batch}-{i}")
            best = min(best, time.perf_counter() - start)
        print(f"rows={rows:>5} epochs={epochs:>3} batch={batch:>3}: {best:6.2f} s", flush=True)
        return best

    run(4, 1, 128)  # warm-up: imports, first graph
    epoch = (run(4, 41, 128) - run(4, 1, 128)) / 40
    big1, big5 = run(8000, 1, 128), run(8000, 5, 128)
    train_rows = int(8000 * 0.8)  # validation_fraction 0.2
    sample = ((big5 - big1) / 4 - epoch) / train_rows
    step = (run(8000, 1, 8) - big1) / (np.ceil(train_rows / 8) - np.ceil(train_rows / 128))
    print(
        f"epoch: {epoch * 1000:.0f} ms = {epoch / sample:,.0f} samples; sample: {sample * 1e6:.0f} us; "
        f"step: {step * 1000:.2f} ms = {step / sample:.1f} samples"
    )


if __name__ == "__main__":
    main()

"""The budget benchmark's tasks on the Secateurs side: jobs run as a user runs them
(`workers.engine.pipeline.compress` with a JobSpec) on a pretrained model.

  budget_job        a budget step on a part-2 model, the training digits and one half of the held-out digits,
                    scored on the other half (bench.budget, bench.budget_tfmot)
  input_accuracy    a model file's accuracy on each half of the held-out digits (the budget parts' input models)
  zoo_budget_job    a budget step on a zoo model, its training digits and one half of its held-out digits, scored
                    on the other half (bench.budget_zoo)
  sensitivity_job   a sensitivity step alone on a zoo model, timed per layer from the progress events
                    (bench.budget_timing)
  finetune_rates    plain fine-tuning of a part-2 model at a constant learning rate, under a warm-up + cosine
                    schedule, ending on a moving average of the weights, and continuing the file's own optimizer
                    state (bench.budget_converged, budget_seeds)
  step_job          any one step (structured, finetune, ...) on a pretrained model and the bench's MNIST split
                    (bench.structured_removal)

Registered into `bench.sides.secateurs.TASKS` (the worker imports that module).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.sides._shared import (
    data,
    held_out_accuracy,
    kernel_sparsity,
    nonzero_weights,
    split_accuracy,
    val_split,
    weights_gzip_bytes,
)

_TMP = Path(tempfile.mkdtemp(prefix="bench-budget-secateurs-"))


class _Events:
    """Progress events of the job, time-stamped: each phase's first event, and every sensitivity/budget event that
    names a layer or a trial (what the timing tables need; per-batch training events are not kept)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.events: list[dict] = []
        self._phase = None

    def __call__(self, p) -> None:
        t = time.perf_counter() - self.t0
        if p.phase != self._phase or p.layer is not None or (p.phase == "budget" and p.trial is not None):
            self.events.append({"t": t, "phase": p.phase, "layer": p.layer, "trial": p.trial, "message": p.message})
        self._phase = p.phase

    def first(self, phase: str) -> float | None:
        return next((e["t"] for e in self.events if e["phase"] == phase), None)


def _compress(model_file: str, data_file: str, spec: dict) -> tuple[dict, float, Path, _Events]:
    from workers.engine.pipeline import compress
    from workers.spec import JobSpec

    out = _TMP / f"out-{time.monotonic_ns()}"
    job = JobSpec.model_validate(spec)
    events = _Events()
    t0 = time.perf_counter()
    manifest = compress(model_file, data_file, job, out, progress=events)
    return manifest, time.perf_counter() - t0, out, events


def _mnist_npz() -> Path:
    npz = _TMP / "mnist.npz"
    if not npz.exists():
        x, y, xv, yv = data()
        np.savez(npz, x_train=x, y_train=y, x_val=xv, y_val=yv)
    return npz


def _budget_npz() -> Path:
    """The training digits and, as x_val / y_val, only the held-out half a budget job may choose on (`val_split`)."""
    npz = _TMP / "mnist-budget.npz"
    if not npz.exists():
        x, y, _, _ = data()
        xv, yv = val_split()
        np.savez(npz, x_train=x, y_train=y, x_val=xv, y_val=yv)
    return npz


def input_accuracy(model_file: str) -> dict:
    """The model file's accuracy on the held-out halves and on all of them (`split_accuracy`)."""
    import keras

    return split_accuracy(keras.saving.load_model(model_file))


def budget_job(model_file: str, step: dict, batch_size: int = 128, seed: int = 0) -> dict:
    """compress() with one budget step on the training digits and the held-out half `val_split` (its x_val); returns
    the manifest's budget, the kernels' sparsity and the returned model's accuracy measured by the bench itself:
    `accuracy` on the test half, which the job never saw, `val_accuracy` on the half it chose on, `accuracy_all` on
    both."""
    import keras

    spec = {"steps": [step], "training": {"batch_size": batch_size}, "evaluation": {"latency": False}, "seed": seed}
    manifest, wall, out, events = _compress(model_file, str(_budget_npz()), spec)
    model = keras.saving.load_model(out / "model.keras")
    split = split_accuracy(model)
    result = {
        "budget": manifest["budget"],
        "summary": manifest["summary"],
        "wall_time_s": wall,
        "sensitivity_s": _sensitivity_seconds(events),
        "before": manifest["before"]["evaluation"],
        "after": manifest["after"]["evaluation"],
        "sparsity": kernel_sparsity(model),
        "accuracy": split["test"],
        "val_accuracy": split["val"],
        "accuracy_all": split["all"],
        "test_right": split["test_right"],
        "gzip_bytes": {
            "before": manifest["before"]["file"]["gzip_bytes"],
            "after": manifest["after"]["file"]["gzip_bytes"],
        },
        "weights_gzip_bytes": weights_gzip_bytes(model),
        "nonzero_weights": nonzero_weights(model),
        "step_wall_time_s": manifest["steps"][0]["wall_time_s"],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def _sensitivity_seconds(events: _Events) -> float | None:
    """From the first sensitivity event to the first trial (the budget step's own analysis)."""
    start, trial = events.first("sensitivity"), next((e["t"] for e in events.events if e["trial"] is not None), None)
    return trial - start if start is not None and trial is not None else None


def zoo_budget_job(
    model: str,
    model_file: str,
    data_file: str,
    step: dict,
    n_train: int,
    n_test: int,
    batch_size: int = 128,
    seed: int = 0,
) -> dict:
    """compress() with one budget step on a zoo model, given its data file's training digits and, as x_val, the val
    half of its held-out digits (`bench.sides._shared.VAL`); the input and the returned model are scored by the
    bench on both halves (`_shared.halves_accuracy`): `accuracy` on the test half, which the job never saw. Its
    MACs are compared with the input's. (`model`, `n_train`, `n_test`: the zoo's call signature; the data file
    holds those digits.)"""
    import keras

    from bench.sides._shared import VAL, halves_accuracy

    with np.load(data_file) as f:
        x, y, xt, yt = (f[k] for k in ("x_train", "y_train", "x_val", "y_val"))
    job_data = _TMP / f"{Path(data_file).stem}-val-half.npz"
    if not job_data.exists():
        np.savez(job_data, x_train=x, y_train=y, x_val=xt[VAL], y_val=yt[VAL])
    source = halves_accuracy(keras.saving.load_model(model_file), xt, yt, batch_size=250)
    spec = {"steps": [step], "training": {"batch_size": batch_size}, "evaluation": {"latency": False}, "seed": seed}
    manifest, wall, out, events = _compress(model_file, str(job_data), spec)
    exported = keras.saving.load_model(out / "model.keras")
    split = halves_accuracy(exported, xt, yt, batch_size=250)
    before, after = manifest["before"], manifest["after"]
    result = {
        "budget": manifest["budget"],
        "summary": {k: manifest["summary"].get(k) for k in ("budget_met", "win", "notes", "evaluation_delta")},
        "wall_time_s": wall,
        "sensitivity_s": _sensitivity_seconds(events),
        "trial_events": [e for e in events.events if e["trial"] is not None],
        "before": before["evaluation"],
        "after": after["evaluation"],
        "accuracy": split["test"],
        "val_accuracy": split["val"],
        "accuracy_all": split["all"],
        "input_accuracy": source,
        "macs_before": before["compute"]["macs"],
        "macs_after": after["compute"]["macs"],
        "macs_ratio": after["compute"]["macs"] / before["compute"]["macs"],
        "params_before": before["params"]["total"],
        "params_after": after["params"]["total"],
        "nonzero_before": before["params"]["nonzero"],
        "nonzero_after": after["params"]["nonzero"],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def sensitivity_job(model_file: str, data_file: str, step: dict, batch_size: int = 128, seed: int = 0) -> dict:
    """compress() with one sensitivity step: total job time, the step's time, and each unit's time (from its
    progress event to the next one)."""
    spec = {"steps": [step], "training": {"batch_size": batch_size}, "evaluation": {"latency": False}, "seed": seed}
    manifest, wall, out, events = _compress(model_file, data_file, spec)
    stamps = [e for e in events.events if e["phase"] == "sensitivity" and e["layer"] is not None]
    end = next((e["t"] for e in events.events if e["t"] > stamps[-1]["t"] and e["phase"] != "sensitivity"), None)
    ends = [e["t"] for e in stamps[1:]] + [end]
    per_layer = [{"layer": e["layer"], "s": (t1 - e["t"]) if t1 is not None else None} for e, t1 in zip(stamps, ends)]
    s = manifest["steps"][0]
    result = {
        "wall_time_s": wall,
        "step_wall_time_s": s.get("wall_time_s"),
        "sensitivity_s": (end - events.first("sensitivity")) if end is not None else None,
        "units": len(stamps),
        "levels": s.get("levels"),
        "rows": len(s.get("rows") or []),
        "samples": s.get("samples"),
        "baseline": s.get("baseline"),
        "metric": s.get("metric"),
        "per_layer": per_layer,
        "phases": [{k: e[k] for k in ("t", "phase")} for e in events.events if e["layer"] is None],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


EMA_MOMENTUM = 0.98  # about the last 50 steps of a 2-epoch trial (126 steps on 8,000 digits at batch 128)


def finetune_rates(model_file: str, epochs: int, batch_size: int = 128, seed: int = 0, lr: float = 1e-3) -> dict:
    """Accuracy on the held-out test half (`split_accuracy`; the val half under "val") of the model as loaded and
    after `epochs` of plain fine-tuning: with a fresh Adam at the
    constant rate `lr` (as the engine trains), with a fresh Adam whose rate rises from 0 over the first tenth of the
    steps and then holds `lr` (`warmup`: tried for the budget trials in part 6g, not the engine's), with a fresh Adam
    whose rate rises the same way and then decays to 0 along a cosine (an alternative measured in part 6f, not the
    engine's), with a fresh
    Adam at `lr` that ends on the moving average of the weights (`ema`, Keras' use_ema at EMA_MOMENTUM: part 6g), and,
    when the file carries its optimizer's state (a model saved compiled), continuing with that Adam state at the same
    rate (`own_state`: part 6g; None when the file has no optimizer state)."""
    import keras

    x, y, _, _ = data()
    steps = epochs * int(np.ceil(len(x) / batch_size))
    warmup = max(1, steps // 10)
    optimizers = {
        "constant": lambda: keras.optimizers.Adam(lr),
        "warmup": lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(0.0, 1, alpha=1.0, warmup_target=lr, warmup_steps=warmup)
        ),
        "warmup_cosine": lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(
                0.0, steps - warmup, alpha=0.0, warmup_target=lr, warmup_steps=warmup
            )
        ),
        "ema": lambda: keras.optimizers.Adam(lr, use_ema=True, ema_momentum=EMA_MOMENTUM),
    }
    split = split_accuracy(keras.saving.load_model(model_file))
    out = {
        "input": split["test"],
        "val": {"input": split["val"]},
        "epochs": epochs,
        "lr": lr,
        "ema_momentum": EMA_MOMENTUM,
    }
    for name, optimizer in optimizers.items():
        keras.utils.set_random_seed(seed)
        model = keras.saving.load_model(model_file)
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
        split = split_accuracy(model)
        out[name], out["val"][name] = split["test"], split["val"]
    keras.utils.set_random_seed(seed)
    model = keras.saving.load_model(model_file)  # compiled: its optimizer's variables are restored from the file
    trained_steps = int(model.optimizer.iterations.numpy()) if model.optimizer is not None else 0
    out["own_state"], out["own_state_steps"] = None, trained_steps  # the steps the file's optimizer had taken
    if trained_steps:
        model.optimizer.learning_rate = lr
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
        split = split_accuracy(model)
        out["own_state"], out["val"]["own_state"] = split["test"], split["val"]
    return out


def step_job(model_file: str, step: dict, batch_size: int = 128, seed: int = 0) -> dict:
    """compress() with one step on the bench's MNIST split: the held-out accuracy of the exported model (measured by
    the bench), MACs and parameters before / after (the manifest's), the claimed win and the step's record."""
    import keras

    spec = {"steps": [step], "training": {"batch_size": batch_size}, "evaluation": {"latency": False}, "seed": seed}
    manifest, wall, out, _ = _compress(model_file, str(_mnist_npz()), spec)
    model = keras.saving.load_model(out / "model.keras")
    record = manifest["steps"][0]
    history = record.get("history") or {}
    result = {
        "accuracy": held_out_accuracy(model),
        "train_accuracy": (history.get("accuracy") or [None])[-1],
        "macs": {k: manifest[k]["compute"]["macs"] for k in ("before", "after")},
        "params": {k: manifest[k]["params"]["total"] for k in ("before", "after")},
        "win": manifest["summary"]["win"],
        "removal": record.get("removal"),
        "wall_time_s": wall,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


TASKS = {
    "step_job": step_job,
    "budget_job": budget_job,
    "zoo_budget_job": zoo_budget_job,
    "sensitivity_job": sensitivity_job,
    "finetune_rates": finetune_rates,
    "input_accuracy": input_accuracy,
}

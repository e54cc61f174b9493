"""One job of part 5c (`bench.overhead_large`) or the floor of part 5d (`bench.overhead_floor`), in a fresh process:
`python bench/overhead_job.py prepare|job|floor ...`.

Run as a file (not `-m`) with the working directory and PYTHONPATH of the tree under test, so the `workers` package
imported is that tree's (main's code for "before", this checkout's for "after"); this script imports nothing from
`bench`, so it runs against any revision.

`prepare OUT_DIR N_TRAIN`: builds `keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)`,
compiles it (Adam, sparse categorical cross-entropy, accuracy) and saves OUT_DIR/resnet50.keras; the data
(OUT_DIR/digits64.npz) is written by the orchestrator.

`floor MODEL DATA`: times each piece of work the job's measurements require, alone and warm (`floor`).

`job MODEL DATA SPEC_JSON OUT_DIR`: runs `workers.engine.pipeline.compress` and prints one JSON line with:
  wall_s, cpu_s           compress() wall-clock and process CPU time (all threads)
  training_s, training_cpu_s   inside `keras.Model.fit` (wrapped here, so any revision can be measured alike)
  outside_training_s      wall_s - training_s
  phases                  wall seconds between the job's progress phases (load, before, the steps, after, export,
                          report), each with the fit time inside it subtracted under "outside_s"
  calls                   inclusive wall seconds and counts of the engine functions that make up the overhead
                          (evaluate, latency, file sizes, saves, loads, conversions, ...), where the revision has them
  manifest_timings        the manifest's own "timings" record, when the revision writes one
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # bench/ itself is not a package root: its modules must not shadow anything


def prepare(out_dir: str) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    path = Path(out_dir) / "resnet50.keras"
    model.save(path)
    print(json.dumps({"model": str(path), "params": int(model.count_params())}))


class _Clock:
    """Inclusive wall time and call counts of wrapped callables; the time inside `keras.Model.fit` separately."""

    def __init__(self):
        self.calls: dict[str, dict] = {}
        self.fit_s = 0.0
        self.fit_cpu_s = 0.0
        self.depth: dict[str, int] = {}

    def wrap(self, label: str, fn):
        def wrapper(*args, **kwargs):
            if self.depth.get(label):  # recursion or a wrapper met twice: count the outermost call only
                return fn(*args, **kwargs)
            self.depth[label] = 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[label] = 0
                entry = self.calls.setdefault(label, {"s": 0.0, "n": 0})
                entry["s"] += time.perf_counter() - t0
                entry["n"] += 1

        wrapper.__wrapped_by_bench__ = True
        return wrapper


def _instrument(clock: _Clock) -> None:
    """Wrap the model's fit and the engine's measuring functions in every loaded engine module that binds them."""
    import importlib
    import pkgutil

    import keras
    import tensorflow as tf

    import workers.engine as engine

    fit = keras.Model.fit

    def timed_fit(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fit(self, *args, **kwargs)
        finally:
            clock.fit_s += time.perf_counter() - t0
            clock.fit_cpu_s += time.process_time() - c0

    keras.Model.fit = timed_fit

    modules = []
    for info in pkgutil.walk_packages(engine.__path__, engine.__name__ + "."):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # noqa: BLE001 - a module this revision cannot import is not measured
            continue
    names = {
        "metrics": ("evaluate", "latency", "file_size", "sha256_file", "param_stats", "macs", "score_predictions"),
        "counting": ("param_stats", "macs"),  # in metrics before they moved
        "export": ("export_model", "save_model_file", "_measure_keras_file", "_measure_tflite", "_tflite_bytes"),
        "export_tflite": ("_measure_tflite", "_tflite_bytes"),  # in export before they moved
        "model_io": ("load_model", "compile_model"),
        "batchnorm": ("reestimate_batchnorm",),
        "report": ("render_report",),
        "summary": ("summarize",),
    }
    originals = {}
    for short, fns in names.items():
        mod = sys.modules.get(f"workers.engine.{short}")
        for name in fns:
            fn = getattr(mod, name, None) if mod is not None else None
            if callable(fn):
                originals[id(fn)] = (f"{short}.{name}", fn)
    wrapped = {key: clock.wrap(label, fn) for key, (label, fn) in originals.items()}
    for mod in modules:
        for attr, value in list(vars(mod).items()):
            if callable(value) and id(value) in wrapped:
                setattr(mod, attr, wrapped[id(value)])
    # the export table refers to its functions through FORMATS entries
    export = sys.modules.get("workers.engine.export")
    if export is not None and hasattr(export, "FORMATS"):
        import dataclasses

        for key, fmt in list(export.FORMATS.items()):
            changes = {
                f.name: wrapped[id(getattr(fmt, f.name))]
                for f in dataclasses.fields(fmt)
                if id(getattr(fmt, f.name)) in wrapped
            }
            if changes:
                export.FORMATS[key] = dataclasses.replace(fmt, **changes)
    keras.saving.load_model = clock.wrap("keras.saving.load_model", keras.saving.load_model)
    keras.saving.save_model = clock.wrap("keras.saving.save_model", keras.saving.save_model)
    tf.lite.TFLiteConverter.convert = clock.wrap("tflite.convert", tf.lite.TFLiteConverter.convert)


def job(model: str, data: str, spec_json: str, out_dir: str) -> None:
    import keras  # noqa: F401 - imported before timing starts

    from workers.engine.pipeline import compress
    from workers.spec import JobSpec

    clock = _Clock()
    _instrument(clock)
    spec = JobSpec.model_validate(json.loads(spec_json))
    marks: list[tuple[str, float, float]] = []  # (phase, wall time, fit time so far)

    def progress(p) -> None:
        if not marks or marks[-1][0] != p.phase:
            marks.append((p.phase, time.perf_counter(), clock.fit_s))

    t0, c0 = time.perf_counter(), time.process_time()
    manifest = compress(model, data, spec, out_dir, progress=progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    end = time.perf_counter()
    phases = []
    for i, (phase, start, fit_before) in enumerate(marks):
        stop, fit_after = (marks[i + 1][1], marks[i + 1][2]) if i + 1 < len(marks) else (end, clock.fit_s)
        if phase == "done":
            continue
        fit_s = fit_after - fit_before
        phases.append({"phase": phase, "s": stop - start, "fit_s": fit_s, "outside_s": stop - start - fit_s})
    first = marks[0][1] if marks else end
    phases.insert(0, {"phase": "start", "s": first - t0, "fit_s": 0.0, "outside_s": first - t0})
    artifacts = manifest.get("artifacts", {})
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "training_s": clock.fit_s,
                "training_cpu_s": clock.fit_cpu_s,
                "outside_training_s": wall - clock.fit_s,
                "outside_training_cpu_s": cpu - clock.fit_cpu_s,
                "phases": phases,
                "calls": clock.calls,
                "manifest_wall_time_s": manifest.get("wall_time_s"),
                "manifest_timings": manifest.get("timings"),
                "reported": {
                    "before": _reported(manifest.get("before", {})),
                    "after": _reported(manifest.get("after", {})),
                    "artifacts": {
                        name: {
                            k: a.get(k) for k in ("bytes", "gzip_bytes", "sparsity", "sparsity_preserved", "evaluation")
                        }
                        for name, a in artifacts.items()
                    },
                    "summary_win": manifest.get("summary", {}).get("win"),
                },
            }
        )
    )


FLOOR_REPEATS = 3


def floor(model_path: str, data_path: str) -> None:
    """Time, alone and warm, each piece of work a job's measurements require on this model (part 5d,
    `bench.overhead_floor`), and print one JSON line: {"pieces": {name: {"s": median seconds, "runs": [...]}},
    "traces": {...}, "held_out", "train"}.

    Warm: every compiled function is traced and called once before it is timed, so no piece includes a trace;
    each piece is timed FLOOR_REPEATS times and the median kept. The pieces are the engine's own functions where
    the engine has the fastest way to do the work (the traced forward pass, the BatchNorm pass, latency, gzip)
    and Keras's where the engine adds checks around it (load and save; loads with compile=False). The split is the
    engine's: 20 % of the samples held out (102 of 512), the rest trains and feeds the BatchNorm pass."""
    import tempfile

    import keras
    import numpy as np
    import tensorflow as tf

    from workers.engine import batchnorm, metrics
    from workers.spec import EvaluationSpec

    runs = EvaluationSpec().latency_runs  # the job's default cap on timed runs per batch size
    data = np.load(data_path)
    x, n_val = data["x_train"], int(round(0.2 * len(data["x_train"])))
    x_train, x_val = x[: len(x) - n_val], x[len(x) - n_val :]
    eval_batch = 256  # the engine's held-out batch: max(training batch 128, 256)

    def timed(fn, repeats: int = FLOOR_REPEATS) -> dict:
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return {"s": sorted(runs)[len(runs) // 2], "runs": runs}

    def load(path, compile: bool):
        return keras.saving.load_model(path, compile=compile, safe_mode=True)

    pieces, traces = {}, {}
    pieces["load"] = timed(lambda: load(model_path, False))
    model = load(model_path, True)  # compiled (Adam, no state), as the job's model is when it is saved
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model.keras"
        pieces["save"] = timed(lambda: keras.saving.save_model(model, saved))
        pieces["gzip"] = timed(lambda: metrics.file_size(saved))
        # the exported file: Keras builds a compiled model's optimizer (two slots per weight here) as it loads it,
        # which scoring does not need (the loss and metrics can be read from the file's config.json)
        pieces["reload"] = timed(lambda: load(saved, False))
        traces["reload_compiled_s"] = timed(lambda: load(saved, True), repeats=1)["s"]
        fresh = load(saved, False)
        t0 = time.perf_counter()
        metrics.predict_batched(lambda b: fresh(b, training=False), x_val, eval_batch)
        traces["eager_evaluation_fresh_model_s"] = time.perf_counter() - t0

    fn = metrics.forward(model)
    t0 = time.perf_counter()
    fn(tf.constant(x_val[:1]))
    traces["forward_first_call_s"] = time.perf_counter() - t0
    metrics.predict_batched(lambda b: fn(tf.constant(b)), x_val, eval_batch)  # the held-out batch shape, once
    pieces["evaluate"] = timed(lambda: metrics.predict_batched(lambda b: fn(tf.constant(b)), x_val, eval_batch))

    estimator = batchnorm.BatchNormEstimator(model, x_train, batch_size=128)
    t0 = time.perf_counter()
    estimator()
    traces["batchnorm_first_call_s"] = time.perf_counter() - t0
    pieces["batchnorm"] = timed(estimator)
    tf.config.run_functions_eagerly(True)  # the same pass with no trace at all: op by op
    try:
        traces["batchnorm_eager_s"] = timed(estimator, repeats=1)["s"]
    finally:
        tf.config.run_functions_eagerly(False)

    metrics.latency(model, batch_sizes=(1, 32), runs=runs)  # warm: every batch size called once
    pieces["latency"] = timed(lambda: metrics.latency(model, batch_sizes=(1, 32), runs=runs))
    inputs = {b: tf.constant(np.zeros((b, *x_val.shape[1:]), x_val.dtype)) for b in (1, 32)}
    pieces["latency_one_run"] = timed(lambda: [np.asarray(fn(inputs[b])) for b in (1, 32)])
    print(
        json.dumps(
            {
                "pieces": pieces,
                "traces": traces,
                "held_out": int(n_val),
                "train": int(len(x_train)),
                "eval_batch": eval_batch,
                "latency_settings": {
                    "runs": runs,
                    "min_runs": metrics.LATENCY_MIN_RUNS,
                    "budget_s": metrics.LATENCY_BUDGET_S,
                },
            }
        )
    )


def _reported(measure: dict) -> dict:
    latency = measure.get("latency_ms") or {}
    return {
        "evaluation": measure.get("evaluation"),
        "sparsity": (measure.get("params") or {}).get("sparsity"),
        "file": measure.get("file"),
        "latency_ms": {b: {k: v.get(k) for k in ("median", "p25", "p75", "runs")} for b, v in latency.items()},
    }


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    elif sys.argv[1] == "floor":
        floor(*sys.argv[2:4])
    else:
        job(*sys.argv[2:6])

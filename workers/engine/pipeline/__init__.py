"""Run a JobSpec end to end: load, evaluate, run the ordered steps, evaluate again, export, report.

`compress()` is the one entry point used by the CLI and by the service's runner. It reports progress through a
callback, checks for cancellation at every batch, and returns the metrics manifest (also written to
`out_dir/manifest.json`, with `report.html` beside it: `report.render_report`).

Invariant between steps: once any prune step has run, every later training step holds the zeros of the
prunable weights (masks = w != 0, applied inside the compiled train step), including after a structured
rebuild. Each training step compiles the model afresh, so masks and penalties attached for the step are traced
into that step's train function and nothing leaks into the next step or the exported model.

BatchNorm statistics (`training.batchnorm_reestimation`, on by default): after every structured rebuild and at
the end of every step, each BatchNormalization layer's moving mean and variance are replaced by the population
statistics of its input over `training.batchnorm_samples` training samples (`batchnorm.reestimate_batchnorm`); the
step's record holds {"layers", "samples", "batches", "before", "after"} under "batchnorm", with the held-out
metrics before and after the re-estimation. The summary (`summary.summarize`) claims no win when the held-out
metric fell beyond the spec's tolerance.

This facade reads the JobSpec; the modules below it take plain values, which `config` builds from the spec
(training settings, the layer selection, each prune step's settings).

Sensitivity and budget steps (the work is in `sensitivity`, `allocation` and `budget`, on plain values): an
analysis is kept per method and written as sensitivity.json / .csv; allocation "sensitivity" and the budget step
use the latest one or run one first. Budget trials (prune with the allocation, ramped over the first half of the
trial's epochs, or rebuild; fine-tune; re-estimate BatchNorm; measure) are judged against manifest.before.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras

from workers.engine import config, model_io
from workers.engine import data as data_mod
from workers.engine import export as export_mod
from workers.engine import metrics as metrics_mod
from workers.engine import report as report_mod
from workers.engine.errors import SpecError
from workers.engine.fileio import atomic_write
from workers.engine.pipeline.run import SENSITIVITY_NAME, _check_cancel, _jsonable, _measure, _Run, _versions
from workers.engine.pipeline.search import _run_budget, _run_sensitivity, budget_on_test
from workers.engine.pipeline.steps import _run_finetune, _run_prune, _run_regularize, _run_structured
from workers.engine.progress import CancelFn, Progress, ProgressFn, never_cancel, no_progress
from workers.engine.summary import MANIFEST_NAME
from workers.engine.summary import summarize as _summary
from workers.spec import JobSpec

STEP_RUNNERS: dict[str, Callable[[_Run, int, Any], dict]] = {
    "regularize": _run_regularize,
    "prune": _run_prune,
    "structured": _run_structured,
    "finetune": _run_finetune,
    "sensitivity": _run_sensitivity,
    "budget": _run_budget,
}

# --------------------------------------------------------------------------- entry point


def compress(
    model_path: str | Path,
    data_path: str | Path | None,
    spec: JobSpec,
    out_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict:
    """Run `spec` on the model at `model_path`; write artifacts and manifest.json into `out_dir`."""
    started = time.perf_counter()
    progress = progress or no_progress
    should_cancel = should_cancel or never_cancel
    model_path = Path(model_path)
    data_path = Path(data_path) if data_path is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / ".work"
    scratch.mkdir(exist_ok=True)
    keras.utils.set_random_seed(spec.seed)

    marks = {"start": started}  # phase -> perf_counter at its start (manifest.timings)
    progress(Progress(phase="load", message=f"loading {model_path.name}"))
    loaded = model_io.load_model(model_path)
    training = config.training_settings(spec.training)
    loss, metrics = model_io.resolve_training(loaded, training)
    data = None
    if data_path is not None:
        data = data_mod.load_dataset(data_path, loaded.model, loss, training.validation_fraction, spec.seed)
    elif spec.trains:
        raise SpecError("this spec trains or uses activations; it needs a dataset (.npz with x_train, y_train)")
    run = _Run(
        spec=spec,
        training=training,
        layers=config.layer_selection(spec.layers),
        model=loaded.model,
        loss=loss,
        metrics=list(metrics),
        data=data,
        progress=progress,
        should_cancel=should_cancel,
        out_dir=out_dir,
    )
    inputs = {
        "model": {
            "file": model_path.name,
            "sha256": metrics_mod.sha256_file(model_path),
            "bytes": model_path.stat().st_size,
            "format": loaded.format,
        }
    }
    if data_path is not None:
        inputs["data"] = {
            "file": data_path.name,
            "sha256": metrics_mod.sha256_file(data_path),
            "bytes": data_path.stat().st_size,
            "train_samples": int(len(data.x_train)),
            "val_samples": int(len(data.x_val)),
            "test_samples": None if data.x_test is None else int(len(data.x_test)),
            "label_form": data.label_form,
        }

    marks["before"] = time.perf_counter()
    before = _measure(run, "before", scratch)
    run.baseline = before["evaluation"]
    marks["steps"] = time.perf_counter()
    steps, step_timings = [], []
    for index, step in enumerate(spec.steps):
        _check_cancel(run)
        t0, trained = time.perf_counter(), run.training_s
        progress(
            Progress(phase=step.kind, step_index=index, message=f"step {index + 1}/{len(spec.steps)}: {step.kind}")
        )
        report = STEP_RUNNERS[step.kind](run, index, step)
        wall, training_s = time.perf_counter() - t0, run.training_s - trained
        steps.append({"index": index, "kind": step.kind, "wall_time_s": wall, **_jsonable(report)})
        step_timings.append({"kind": step.kind, "wall_s": wall, "training_s": training_s, "other_s": wall - training_s})
    _check_cancel(run)
    marks["after"] = time.perf_counter()
    # the exported model.keras is the file the "after" size describes (the same save): measured once, there
    keras_exported = "keras" in spec.export.formats
    after = _measure(run, "after", scratch, save=not keras_exported)
    if run.budget is not None and (test := budget_on_test(run.budget, before, after)) is not None:
        run.budget["test"] = test

    marks["export"] = time.perf_counter()
    progress(Progress(phase="export", message=", ".join(spec.export.formats)))
    artifacts = _jsonable(
        export_mod.export_model(
            run.model,
            out_dir,
            spec.export.formats,
            calibration=None if data is None else data.x_train,
            held_out=None
            if data is None
            else export_mod.HeldOut(data.x_val, data.y_val, batch_size=max(spec.training.batch_size, 256)),
        )
    )
    shutil.rmtree(scratch, ignore_errors=True)
    if keras_exported:
        after["file"] = {k: artifacts["keras"][k] for k in ("bytes", "gzip_bytes")}
    marks["report"] = time.perf_counter()

    manifest = {
        "secateurs": {"version": _package_version(), "created_at": datetime.now(timezone.utc).isoformat()},
        "versions": _versions(),
        "seed": spec.seed,
        "spec": spec.model_dump(mode="json"),
        "inputs": inputs,
        "task": {"loss": loss, "metrics": list(metrics), "loss_from": "spec" if spec.training.loss else "saved model"},
        "before": before,
        "after": after,
        "steps": steps,
        "artifacts": artifacts,
        "summary": _summary(before, after, artifacts, spec, budget=run.budget),
        "wall_time_s": time.perf_counter() - started,
    }
    if run.budget is not None:
        manifest["budget"] = run.budget
    manifest = _jsonable(manifest)
    manifest["report"] = _write_report(run, out_dir, manifest)
    manifest["timings"] = _timings(marks, step_timings, run.training_s, time.perf_counter())
    text = json.dumps(manifest, indent=2, sort_keys=True)
    atomic_write(out_dir / MANIFEST_NAME, lambda tmp: tmp.write_text(text))
    progress(Progress(phase="done", message="finished"))
    return manifest


def _timings(marks: dict[str, float], steps: list[dict], training_s: float, end: float) -> dict:
    """manifest.timings: wall seconds per phase of the job (load, before, the steps, after, export, report), each
    step's split into training (inside `model.fit`) and the rest, and the job's total split likewise. The phases
    add up to `wall_s` but for the bookkeeping between them (microseconds)."""
    wall = end - marks["start"]
    return {
        "load_s": marks["before"] - marks["start"],
        "before_s": marks["steps"] - marks["before"],
        "steps": steps,
        "after_s": marks["export"] - marks["after"],
        "export_s": marks["report"] - marks["export"],
        "report_s": end - marks["report"],
        "training_s": training_s,
        "outside_training_s": wall - training_s,
        "wall_s": wall,
    }


def _write_report(run: _Run, out_dir: Path, manifest: dict) -> dict:
    """Render report.html from the manifest (and sensitivity.json when a step wrote one) into `out_dir`; returns
    the manifest's "report" record. A report that cannot be drawn does not lose the finished job: the record
    then holds the error instead of the file."""
    run.progress(Progress(phase="report", message=f"writing {report_mod.REPORT_NAME}"))
    started = time.perf_counter()
    try:
        sensitivity_path = out_dir / SENSITIVITY_NAME
        sensitivity = json.loads(sensitivity_path.read_text()) if sensitivity_path.is_file() else None
        html = report_mod.render_report(manifest, sensitivity).encode("utf-8")
    except Exception as e:  # noqa: BLE001 - recorded in the manifest, the job's other outputs stand
        return {"file": None, "error": f"the report could not be rendered: {type(e).__name__}: {e}"}
    atomic_write(out_dir / report_mod.REPORT_NAME, lambda tmp: tmp.write_bytes(html))
    return {"file": report_mod.REPORT_NAME, "bytes": len(html), "render_s": time.perf_counter() - started}


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("secateurs")
    except Exception:  # pragma: no cover - running from a plain checkout
        return "0+unknown"

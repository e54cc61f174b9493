"""The regularize, prune, structured and finetune steps of a job."""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.engine import allocation as allocation_mod
from workers.engine import config
from workers.engine import sensitivity as sensitivity_mod
from workers.engine.errors import SpecError
from workers.engine.pipeline.run import (
    _fit,
    _jsonable,
    _pruner,
    _reestimate_batchnorm,
    _require_data,
    _Run,
    _train_holding_zeros,
    _with_batchnorm,
)
from workers.engine.pipeline.search import _sensitivity_for
from workers.engine.progress import Progress
from workers.engine.registry import prunable_weights
from workers.engine.regularizers import attach_regularization
from workers.engine.structured import gradual as gradual_mod
from workers.engine.structured import structured_prune
from workers.spec import (
    FinetuneStep,
    PruneStep,
    RegularizeStep,
    StructuredStep,
)

# --------------------------------------------------------------------------- steps


def _run_regularize(run: _Run, index: int, step: RegularizeStep) -> dict:
    history = _train_holding_zeros(
        run,
        "regularize",
        index,
        step.epochs,
        setup=lambda weights: attach_regularization(weights, step.l1, step.l2, step.group_lasso),
    )
    return _with_batchnorm({"history": history}, run, "regularize", index)


def _check_threshold(run: _Run, step: PruneStep) -> None:
    """Refuse a threshold that zeroes every selected weight (it is above the largest |w|)."""
    largest = max(
        (float(np.max(np.abs(w.variable.numpy()))) for w in prunable_weights(run.model, run.layers) if w.size),
        default=0.0,
    )
    if step.threshold > largest:
        raise SpecError(
            f"prune threshold {step.threshold:g} is above the largest |w| of the selected kernels "
            f"({largest:.4g}): it would zero every weight"
        )


def _run_prune(run: _Run, index: int, step: PruneStep) -> dict:
    if step.method == "threshold":
        _check_threshold(run, step)
    pruner = _pruner(run)
    if run.hold_zeros:
        pruner.hold_zeros()
    schedule = step.effective_schedule
    try:
        targets = None
        if step.allocation == "sensitivity":
            result = _sensitivity_for(run, index, "magnitude")
            targets = pruner.sensitivity_targets(
                step.target_sparsity,
                sensitivity_mod.curves(result),
                hold=run.hold_zeros,
                field=f"steps.{index}.target_sparsity",
            )
        history = None
        if schedule.kind == "one_shot":
            pruner.prune(config.prune_settings(step), targets)
            run.progress(
                Progress(
                    phase="prune", step_index=index, sparsity=pruner.sparsity(), message=f"pruned once ({step.method})"
                )
            )
            if step.epochs:
                history = _fit(run, "prune", index, step.epochs, pruner)
        else:
            data = _require_data(run, f"step {index} (gradual prune)")
            steps_per_epoch = int(np.ceil(len(data.x_train) / run.spec.training.batch_size))
            history = _fit(
                run,
                "prune",
                index,
                step.epochs,
                pruner,
                extra_callbacks=[pruner.callback(config.prune_settings(step), steps_per_epoch, targets)],
            )
        layer_sparsity = pruner.layer_sparsity()
        sparsity = pruner.sparsity()
    finally:
        pruner.detach()
    run.hold_zeros = True
    record = {
        "history": history,
        "sparsity": sparsity,
        "layer_sparsity": layer_sparsity,
        "spared": list(pruner.spared),
        "allocation": getattr(pruner, "allocation", None),
    }
    return _with_batchnorm(record, run, "prune", index)


def _run_structured(run: _Run, index: int, step: StructuredStep) -> dict:
    if step.criterion in ("mean_activation", "apoz"):
        _require_data(run, f"step {index} (structured, criterion {step.criterion})")
    # with data, every criterion also folds the removed channels' mean contribution back (rebuild.compensation)
    x_calib = run.data.x_train[: step.calibration_samples] if run.data is not None else None
    overrides: dict = dict(run.layers.overrides)
    out: dict[str, Any] = {}
    if step.allocation == "sensitivity":
        result = _sensitivity_for(
            run, index, "structured", criterion=step.criterion if step.criterion in ("l1", "l2") else "l1"
        )
        keeps = allocation_mod.keep_overrides(
            result["units"], sensitivity_mod.curves(result), step.keep_ratio, step.round_to
        )
        overrides.update(keeps)
        out["allocation"] = {name: o["keep_ratio"] for name, o in keeps.items()}
    args = {
        "criterion": step.criterion,
        "keep_ratio": step.keep_ratio,
        "scope": step.scope,
        "round_to": step.round_to,
        "selection": run.layers,
        "x_calib": x_calib,
        "overrides": overrides,
    }
    removal = step.removal or ("one_shot" if not step.epochs else gradual_mod.default_removal(run.model, **args))
    out["removal"] = removal
    if removal == "gradual":
        return _run_structured_gradual(run, index, step, args, out)
    run.progress(Progress(phase="structured", step_index=index, message=f"ranking units by {step.criterion}"))
    new_model, report = structured_prune(run.model, **args)
    run.model = new_model
    out["report"] = _jsonable(report)
    if not step.epochs:
        return _with_batchnorm(out, run, "structured", index)
    rebuilt = _reestimate_batchnorm(run, "structured", index, evaluate=False)  # train from matching statistics
    if rebuilt is not None:
        out["batchnorm_after_rebuild"] = rebuilt
    out["history"] = _train_holding_zeros(run, "structured", index, step.epochs)
    return _with_batchnorm(out, run, "structured", index)


def _run_structured_gradual(run: _Run, index: int, step: StructuredStep, args: dict, out: dict) -> dict:
    """Units leave during the fine-tune, then one cut (`structured.gradual`); `args`: structured_prune's keyword
    arguments."""
    data = _require_data(run, f"step {index} (structured, removal gradual)")
    run.progress(Progress(phase="structured", step_index=index, message=f"gradual: ranking units by {step.criterion}"))
    gradual = gradual_mod.GradualStructured(run.model, **args)
    steps_per_epoch = int(np.ceil(len(data.x_train) / run.spec.training.batch_size))
    try:
        out["history"] = _train_holding_zeros(
            run, "structured", index, step.epochs, extra_callbacks=[gradual.callback(steps_per_epoch, step.epochs)]
        )
    finally:
        gradual.detach()
    new_model, report = gradual.finish()
    run.model = new_model
    out["report"] = _jsonable(report)
    out["gradual"] = gradual.updates
    return _with_batchnorm(out, run, "structured", index)


def _run_finetune(run: _Run, index: int, step: FinetuneStep) -> dict:
    return _with_batchnorm(
        {"history": _train_holding_zeros(run, "finetune", index, step.epochs)}, run, "finetune", index
    )

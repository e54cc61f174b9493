"""The sensitivity and budget steps (the work is in `sensitivity`, `allocation` and `budget`, on plain values)."""

from __future__ import annotations

import math

import keras
import numpy as np

from workers.engine import allocation as allocation_mod
from workers.engine import budget as budget_mod
from workers.engine import sensitivity as sensitivity_mod
from workers.engine import summary as summary_mod
from workers.engine.errors import SpecError
from workers.engine.masks import MaskParams
from workers.engine.pipeline.run import (
    _check_cancel,
    _evaluate,
    _fit,
    _pruner,
    _reestimate_batchnorm,
    _require_data,
    _Run,
    _train_holding_zeros,
)
from workers.engine.progress import Progress
from workers.engine.pruning import PruneSettings
from workers.engine.registry import prunable_weights
from workers.engine.schedules import ScheduleSettings
from workers.engine.selection import override_for
from workers.engine.structured import structured_prune
from workers.spec import (
    DEFAULT_SENSITIVITY_LEVELS,
    BudgetStep,
    SensitivityStep,
    default_sensitivity_levels,
)

# --------------------------------------------------------------------------- sensitivity and budget


BUDGET_MAGNITUDE_LEVELS = (*DEFAULT_SENSITIVITY_LEVELS, 0.98)  # a budget search often ends past 0.95
HIGHEST_SPARSITY = 0.995  # the budget search never goes further
LOWEST_KEEP = 0.02
TRIAL_RAMP_END = 0.5  # a magnitude trial ramps its sparsity over this fraction of its epochs (Zhu & Gupta)
FIRST_AT_LEAST = 0.2  # the first trial removes at least this (the prediction, without fine-tuning, is cautious)


def _metric_names(run: _Run) -> list[str]:
    return list(_evaluate(run) or {})


def _sensitivity(
    run: _Run,
    index: int,
    method: str,
    *,
    levels,
    criterion: str = "l1",
    metric: str | None = None,
    samples: int = 2000,
    batchnorm_samples: int = 512,
    field_prefix: str = "",
) -> dict:
    """Run a sensitivity analysis of the current model, keep it for later steps and write its artifacts."""
    data = _require_data(run, f"step {index} (sensitivity)")
    metric = sensitivity_mod.resolve_metric(_metric_names(run), metric, f"{field_prefix}metric")  # compiles
    if method == "magnitude":
        weights = [
            w
            for w in prunable_weights(run.model, run.layers)
            if not ((o := override_for(run.layers.overrides, w.path, w.name)) and o.skip)
        ]
        units = sensitivity_mod.magnitude_units(run.model, weights)
    else:
        units = sensitivity_mod.structured_units(
            run.model, criterion=criterion, selection=run.layers, overrides=run.layers.overrides
        )
    if not units:
        raise SpecError(f"step {index}: the model has nothing to prune by {method} (no selected prunable layer)")

    def progress(i: int, n: int, unit) -> None:
        run.progress(
            Progress(
                phase="sensitivity",
                step_index=index,
                step=i + 1,
                steps=n,
                layer=unit.name,
                message=f"{method} sensitivity: {unit.name} ({i + 1}/{n})",
            )
        )

    result = sensitivity_mod.analyze(
        run.model,
        units,
        levels,
        method=method,
        metric=metric,
        x_val=data.x_val,
        y_val=data.y_val,
        x_train=data.x_train if run.training.batchnorm_reestimation else None,
        samples=samples,
        batchnorm_samples=batchnorm_samples,
        batch_size=max(run.training.batch_size, 256),
        seed=run.spec.seed,
        progress=progress,
        should_cancel=run.should_cancel,
    )
    other = next((m for m in run.sensitivity if m != method), None)
    if run.out_dir is not None:
        name = "sensitivity" if other is None else f"sensitivity_{method}"
        sensitivity_mod.write_artifacts(result, run.out_dir, name)
        result = {**result, "artifacts": [f"{name}.json", f"{name}.csv"]}
    run.sensitivity[method] = result
    return result


def _sensitivity_for(run: _Run, index: int, method: str, criterion: str = "l1") -> dict:
    """The job's latest analysis of `method`, or a new one with the default levels."""
    if method in run.sensitivity:
        return run.sensitivity[method]
    return _sensitivity(run, index, method, levels=sweep_levels(method), criterion=criterion)


def sweep_levels(method: str) -> list[float]:
    """The levels of the sweep a budget step or `allocation: "sensitivity"` runs when no analysis of `method` ran
    before (a sensitivity step has its own: `SensitivityStep.effective_levels`)."""
    return list(BUDGET_MAGNITUDE_LEVELS) if method == "magnitude" else default_sensitivity_levels(method)


def _run_sensitivity(run: _Run, index: int, step: SensitivityStep) -> dict:
    result = _sensitivity(
        run,
        index,
        step.method,
        levels=step.effective_levels,
        criterion=step.criterion,
        metric=step.metric,
        samples=step.samples,
        batchnorm_samples=step.batchnorm_samples,
        field_prefix=f"steps.{index}.",
    )
    return {
        k: result[k]
        for k in ("method", "metric", "baseline", "levels", "samples", "units", "rows", "artifacts")
        if k in result
    }


def budget_on_test(budget: dict, before: dict, after: dict) -> dict | None:
    """The returned model's drop on the dataset's x_test, which the search never saw ({"baseline", "metric", "drop",
    "within_budget"}; None without test metrics). The trials' drops were measured on the held-out data the search
    chose on, so they are optimistic by that choice; this one is not."""
    metric = budget["metric"]
    b, a = (before.get("test_evaluation") or {}).get(metric), (after.get("test_evaluation") or {}).get(metric)
    if b is None or a is None:
        return None
    drop = sensitivity_mod.metric_drop(metric, b, a)
    within = summary_mod.within_limit(drop, budget["max_drop"])
    return {"baseline": b, "metric": a, "drop": drop, "within_budget": within}


def _budget_note(
    found: budget_mod.BudgetResult, metric: str, baseline: float, max_drop: float, noise: float, samples: int, unit: str
) -> str | None:
    """The budget's note: that it was not met and which trial is returned, and that a budget tighter than one
    standard error of the held-out metric is decided by chance as much as by the pruning; None when neither."""
    parts = []
    if not found.met:
        chosen = found.trials[found.chosen]
        parts.append(
            f"BUDGET NOT MET: no trial kept held-out {metric} within {max_drop:g} of the original ({baseline:.4g}); "
            f"the closest trial (#{found.chosen}, {unit} {chosen.level:.4f}, {metric} {chosen.metric:.4g}) is returned"
        )
    if max_drop < noise:
        parts.append(
            f"max_drop {max_drop:g} is below one standard error of the held-out {metric} ({noise:.2g} on {samples} "
            "samples): whether a trial lands within the budget is decided by chance as much as by the pruning"
        )
    return "; ".join(parts) or None


def _measured(run: _Run, metric: str) -> tuple[float, list[np.ndarray]]:
    """The model's held-out `metric` now and a copy of its weights (a trial's candidate before fine-tuning)."""
    return float(_evaluate(run)[metric]), [np.array(v) for v in run.model.get_weights()]


def _run_budget(run: _Run, index: int, step: BudgetStep) -> dict:
    data = _require_data(run, f"step {index} (budget)")
    field = f"steps.{index}.metric"
    metric = sensitivity_mod.resolve_metric(list(run.baseline or _metric_names(run)), step.metric, field)
    baseline = float((run.baseline or _evaluate(run))[metric])
    structured = step.method == "structured"
    result = _sensitivity_for(run, index, step.method, criterion=step.criterion)
    curves = [allocation_mod.Curve(u["size"], *sensitivity_mod.curves(result)[u["name"]]) for u in result["units"]]
    if structured:
        total = sum(u["size"] for u in result["units"])
        highest = 1.0 - LOWEST_KEEP
        sizes = {u["name"]: u["size"] for u in result["units"]}
        states: dict[int, tuple[keras.Model, dict[str, int]]] = {}
    else:
        probe = _pruner(run)
        pool = probe.pool()
        total, highest = sum(pool.values()), allocation_mod.highest_target(pool, probe.max_zeros, HIGHEST_SPARSITY)
        probe.detach()
        states: dict[int, list[np.ndarray]] = {}  # type: ignore[no-redef]
        original = [np.array(v) for v in run.model.get_weights()]
    predicted = allocation_mod.total_for_drop(curves, step.max_drop) / max(1, total)
    first = min(highest, math.floor(max(predicted, FIRST_AT_LEAST) * 100) / 100)
    original_model, x_calib = run.model, data.x_train[:512]

    def trial(removed: float, start: int | None) -> budget_mod.Trial:
        _check_cancel(run)
        level = 1.0 - removed if structured else removed
        run.progress(
            Progress(
                phase="budget",
                step_index=index,
                trial=len(trials) + 1,
                trials=step.max_trials,
                message=f"trial {len(trials) + 1}/{step.max_trials}: "
                f"{'keep ratio' if structured else 'sparsity'} {level:.4f}",
            )
        )
        if structured:
            model, current = states[start] if start is not None else (original_model, sizes)
            overrides = {
                **run.layers.overrides,
                **allocation_mod.keep_overrides(
                    result["units"], sensitivity_mod.curves(result), level, step.round_to, current
                ),
            }
            run.model, report = structured_prune(
                model,
                criterion=step.criterion,
                keep_ratio=1.0,
                round_to=step.round_to,
                selection=run.layers,
                x_calib=x_calib,
                overrides=overrides,
            )
            cut = {"+".join(g.layers): g.units_before - g.units_after for g in report.groups}
            current = {name: n - cut.get(name, 0) for name, n in current.items()}
            _reestimate_batchnorm(run, "budget", index, evaluate=False)  # and train from matching statistics
            pruned = _measured(run, metric)  # the level cut at once, before any fine-tuning
            if step.epochs:
                _train_holding_zeros(run, "budget", index, step.epochs)
        else:
            start_weights = states[start] if start is not None else original
            run.model.set_weights(start_weights)
            pruner = _pruner(run)
            pruner.hold_zeros()
            try:
                targets = pruner.sensitivity_targets(
                    removed, sensitivity_mod.curves(result), hold=True, field=f"steps.{index}"
                )
                pruner.prune(PruneSettings(params=MaskParams(sparsity=removed)), targets)
            finally:
                pruner.detach()
            _reestimate_batchnorm(run, "budget", index, evaluate=False)
            pruned = _measured(run, metric)  # the level pruned at once, before any fine-tuning
            if step.epochs:  # from the start again: the sparsity ramps up during the fine-tune
                run.model.set_weights(start_weights)
                pruner = _pruner(run)
                pruner.hold_zeros()
                spe = int(np.ceil(len(data.x_train) / run.training.batch_size))
                ramp = PruneSettings(
                    params=MaskParams(sparsity=removed),
                    epochs=step.epochs,
                    schedule=ScheduleSettings("polynomial", end=TRIAL_RAMP_END),
                )
                try:
                    _fit(
                        run, "budget", index, step.epochs, pruner, extra_callbacks=[pruner.callback(ramp, spe, targets)]
                    )
                finally:
                    pruner.detach()
        value, kept = pruned[0], "pruned"
        if step.epochs:
            _reestimate_batchnorm(run, "budget", index, evaluate=False)
            tuned = float(_evaluate(run)[metric])
            at_once, after = (sensitivity_mod.metric_drop(metric, baseline, v) for v in (pruned[0], tuned))
            if at_once < after:  # fine-tuning lost more: keep the pruned weights
                run.model.set_weights(pruned[1])
            else:
                value, kept = tuned, "fine_tuned"
        drop = sensitivity_mod.metric_drop(metric, baseline, value)
        states[len(trials)] = (run.model, current) if structured else [np.array(v) for v in run.model.get_weights()]
        return budget_mod.Trial(
            level=level,
            metric=value,
            drop=drop,
            within_budget=summary_mod.within_limit(drop, step.max_drop),
            epochs=step.epochs,
            pruned_metric=pruned[0],
            kept=kept,
            **budget_mod.measure(
                run.model,
                run.out_dir / ".work",
                method=step.method,
                latency_runs=(
                    run.spec.evaluation.latency_runs
                    if step.objective == "latency" or (structured and run.spec.evaluation.latency)
                    else 0
                ),
            ),
        )

    trials: list[budget_mod.Trial] = []

    def on_trial(i: int, t: budget_mod.Trial, pending: int | None) -> None:
        trials.append(t)
        for j in set(states) - budget_mod.needed(trials, step.objective, pending):
            del states[j]  # a model no later trial starts from and that cannot be chosen
        run.progress(
            Progress(
                phase="budget",
                step_index=index,
                trial=i + 1,
                trials=step.max_trials,
                message=f"trial {i + 1}: {metric} {t.metric:.4f} (drop {t.drop:+.4f}), "
                f"{'within' if t.within_budget else 'outside'} the budget"
                + ("; a near miss: the next trial fine-tunes it again" if pending == i else ""),
            )
        )

    noise = budget_mod.accuracy_noise(sensitivity_mod.higher_is_better(metric), baseline, len(data.y_val))

    found = budget_mod.search(
        trial,
        first=first,
        highest=highest,
        max_trials=step.max_trials,
        objective=step.objective,
        should_cancel=run.should_cancel,
        on_trial=on_trial,
        retry=lambda t: budget_mod.near_miss(t.drop, step.max_drop, noise),
        retest=lambda t: budget_mod.worth_retesting(t.drop, step.max_drop, noise),
    )
    if structured:
        run.model = states[found.chosen][0]
    else:
        run.model.set_weights(states[found.chosen])
        run.hold_zeros = True
    run.budget = {
        "metric": metric,
        "baseline": baseline,
        "max_drop": step.max_drop,
        "objective": step.objective,
        "method": step.method,
        "met": found.met,
        "chosen": found.chosen,
        "trials": [t.to_dict() for t in found.trials],
        "sensitivity": result.get("artifacts"),
        "noise": noise,
        "note": _budget_note(
            found, metric, baseline, step.max_drop, noise, len(data.y_val), "keep ratio" if structured else "sparsity"
        ),
    }
    return {"budget": run.budget}

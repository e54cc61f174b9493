"""report.html's sections on the search: the budget (its sentence in the verdict, the trial table and the
accuracy-versus-size Pareto front with the chosen trial starred) and the per-layer sensitivity curves and table.
Plain values in, HTML strings out (`report` puts them on the page)."""

from __future__ import annotations

import math

from workers.engine import plots
from workers.engine.report_html import (  # value formatting
    _accuracy_like,
    _bytes,
    _dict,
    _e,
    _figure,
    _finite,
    _int,
    _list,
    _metric,
    table,
)


def _chosen_index(chosen, trials: list[dict]) -> int | None:
    """The chosen trial: an index into the trials, a trial (matched by its level) or a level."""
    if isinstance(chosen, dict):
        chosen = chosen.get("level")
    elif isinstance(chosen, int) and not isinstance(chosen, bool) and 0 <= chosen < len(trials):
        return chosen
    if _finite(chosen):
        return next((i for i, t in enumerate(trials) if t.get("level") == chosen), None)
    return None


def _budget_limit(budget: dict, trials: list[dict]) -> tuple[float | None, bool]:
    """The metric value at the budget's limit and whether higher is better, read from how the trials' drops are
    defined (baseline - metric for an accuracy, metric - baseline for a loss)."""
    base, max_drop = budget.get("baseline"), budget.get("max_drop")
    higher = not any(w in str(budget.get("metric", "")) for w in ("loss", "error"))
    pairs = [(t["metric"], t["drop"]) for t in trials if _finite(t.get("metric")) and _finite(t.get("drop"))]
    if _finite(base) and pairs:
        if all(math.isclose(d, base - v, rel_tol=1e-6, abs_tol=1e-9) for v, d in pairs):
            higher = True
        elif all(math.isclose(d, v - base, rel_tol=1e-6, abs_tol=1e-9) for v, d in pairs):
            higher = False
    if not (_finite(base) and _finite(max_drop)):
        return None, higher
    return (base - max_drop if higher else base + max_drop), higher


def _budget_sentences(budget: dict) -> list[str]:
    if not budget:
        return []
    trials = [_dict(t) for t in _list(budget.get("trials"))]
    metric = str(budget.get("metric", "metric"))
    met = budget.get("met")
    words = "met" if met else ("<strong>not met</strong>" if met is False else "not judged")
    side = "below" if _budget_limit(budget, trials)[1] else "above"  # a loss may rise by at most max_drop
    s = (
        f"Budget: held-out {_e(metric)} at most {_e(_fmt_drop(metric, budget.get('max_drop')))} {side} the "
        f"baseline {_metric(metric, budget.get('baseline'))}, objective {_e(budget.get('objective', '—'))}: {words}"
    )
    i = _chosen_index(budget.get("chosen"), trials)
    if i is not None:
        t = trials[i]
        s += (
            f"; chose level {_e(t.get('level'))} ({_metric(metric, t.get('metric'))}, "
            f"{_bytes(t.get('size_bytes'))}, {_int(t.get('nonzero_params'))} non-zero parameters)"
        )
    s += f" after {len(trials)} trials."
    test = _dict(budget.get("test"))
    if test:
        ok = "within" if test.get("within_budget") else "<strong>beyond</strong>"
        s += (
            f" On the test data, which the search never saw: {_metric(metric, test.get('baseline'))} → "
            f"{_metric(metric, test.get('metric'))} ({ok} the budget)."
        )
    return [s]


def _fmt_drop(metric: str, v) -> str:
    if not _finite(v):
        return "—"
    return f"{v * 100:.1f} points" if _accuracy_like(metric) else f"{v:.4g}"


def _budget(m: dict) -> str:
    budget = _dict(m.get("budget"))
    if not budget:
        return ""
    trials = [_dict(t) for t in _list(budget.get("trials"))]
    metric = str(budget.get("metric", "metric"))
    chosen = _chosen_index(budget.get("chosen"), trials)
    limit, higher = _budget_limit(budget, trials)
    by_size = any(_finite(t.get("size_bytes")) for t in trials)
    svg = plots.pareto_front(
        trials,
        metric=metric,
        baseline=budget.get("baseline"),
        floor=limit,
        higher_better=higher,
        chosen=chosen,
        x_key="size_bytes" if by_size else "nonzero_params",
        x_label="model size (bytes)" if by_size else "non-zero parameters",
    )
    rows = []
    for i, t in enumerate(trials):
        lat = t.get("latency_ms")
        rows.append(
            (
                "★" if i == chosen else "",
                t.get("level", ""),
                _metric(metric, t.get("metric")),
                _fmt_drop(metric, t.get("drop")),
                _metric(metric, t.get("pruned_metric")) if t.get("pruned_metric") is not None else "—",
                {"fine_tuned": "fine-tuned", "pruned": "pruned"}.get(t.get("kept"), "—"),
                _int(t.get("nonzero_params")),
                _bytes(t.get("size_bytes")),
                _int(t.get("macs")),
                f"{lat:.3g}" if _finite(lat) else "—",
                {True: "yes", False: "no"}.get(t.get("within_budget"), "—"),
                t.get("epochs", ""),
            )
        )
    fig = _figure(
        svg,
        f"Scatter plot of held-out {metric} against model size for each budget trial",
        f"Held-out {_e(metric)} against size for every trial; the step line is the Pareto front, the "
        "star the chosen trial, the dashed line the budget's limit.",
    )
    return (
        '<section id="budget"><h2>Budget search</h2>'
        + "".join(f"<p>{s}</p>" for s in _budget_sentences(budget))
        + fig
        + table(
            [
                "chosen",
                "level",
                metric,
                "drop",
                "pruned at once",
                "kept",
                "non-zero",
                "size",
                "MACs",
                "latency (ms)",
                "within budget",
                "epochs",
            ],
            rows,
            row_class=lambda i: "chosen" if i == chosen else "",
        )
        + "</section>"
    )


def _sensitivity(sens: dict) -> str:
    rows = [_dict(r) for r in _list(sens.get("rows"))]
    if not rows:
        return ""
    metric = str(sens.get("metric", "metric"))
    svg = plots.sensitivity_curves(rows, metric)
    levels = sorted({r["level"] for r in rows if _finite(r.get("level"))})
    drops: dict[str, dict] = {}
    params: dict[str, object] = {}
    for r in rows:
        name = str(r.get("layer"))
        drops.setdefault(name, {})[r.get("level")] = r.get("drop")
        params.setdefault(name, r.get("params"))
    order = sorted(drops, key=lambda n: -max((d for d in drops[n].values() if _finite(d)), default=-math.inf))
    shown = order[:60]
    body = [(n, _int(params[n]), *(_fmt_drop(metric, drops[n].get(lv)) for lv in levels)) for n in shown]
    more = f" The {len(shown)} most sensitive of {len(order)} layers are listed." if len(order) > len(shown) else ""
    base = sens.get("baseline")
    return (
        '<section id="sensitivity"><h2>Per-layer sensitivity</h2>'
        f"<p>Each layer pruned alone to each level, the rest of the model untouched; the drop is measured from "
        f"the baseline held-out {_e(metric)} of {_metric(metric, base)}.{_e(more)}</p>"
        + _figure(
            svg,
            f"Line chart of the drop in held-out {metric} per pruning level for each layer",
            f"Drop in held-out {_e(metric)} when one layer is pruned to each level.",
        )
        + table(["layer", "parameters", *(f"drop at {lv:g}" for lv in levels)], body)
        + "</section>"
    )

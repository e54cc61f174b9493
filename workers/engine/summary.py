"""The manifest's `summary`: what the job won (size, speed) and whether the held-out quality stayed within tolerance.

Public API::

    summarize(before, after, artifacts, spec, budget=None) -> dict
    quality_check(before_eval, after_eval, evaluation_spec) -> dict

Rules (honest by construction):

* **Quality first.** Accuracy-like held-out metrics (names containing "accuracy", higher is better) may drop by at
  most `evaluation.max_accuracy_drop` (absolute, default 0.05 = 5 points). A task without one is judged on its loss
  and error metrics (lower is better), which may rise by at most `evaluation.max_loss_increase` (relative, default
  0.10 = 10%). A non-finite result fails. When the check fails, `win` is "none" whatever the size or speed,
  `within_tolerance` is false and the first note says what dropped, in words. Without held-out data there is
  nothing to check: `within_tolerance` is null. When the dataset has test arrays (x_test, which the job measures
  but never decides on), the same check runs on them too (`quality_test`, `test_delta`) and either failing fails
  the job's quality.
* **Size:** the gzipped `.keras` file shrank to at most SIZE_WIN of its size.
* **Budget** (a budget step ran): `budget_met` says whether a trial stayed within the step's max_drop; when none
  did, a note says so and which trial was returned; a max_drop below one standard error of the held-out accuracy
  gets a note too (trials then pass or fail by chance as much as by the pruning). With test arrays,
  `budget_met_on_test` says whether the returned model is within max_drop on them, and a note says so when the
  search's own figure (on the held-out data it chose on) was within and the test figure is not.
* **Speed:** at some batch size the median latency improved by at least SPEED_WIN *and* the interquartile ranges
  of the repeated measurements do not overlap (after's p75 below before's p25): a gain inside the noise is not
  claimed (a note says so).
"""

from __future__ import annotations

import math

SPEED_WIN = 1.10  # latency must improve by at least 10% at some batch size to be called a speed win
SIZE_WIN = 0.90  # gzipped size must shrink by at least 10% to be called a size win
MANIFEST_NAME = "manifest.json"  # the job's manifest in its output directory; the summary is one of its fields

__all__ = ["MANIFEST_NAME", "METRIC_TIE", "SIZE_WIN", "SPEED_WIN", "quality_check", "summarize", "within_limit"]


def _is_accuracy(name: str) -> bool:
    return "accuracy" in name


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# Held-out metrics are float32 (Keras): about 7 significant digits. A drop this close to its limit is a tie and
# counts as within it (to float32, 0.944 - 0.9335 is 0.010500014, which a limit of 0.0105 would otherwise refuse).
METRIC_TIE = 1e-6


def within_limit(drop: float, limit: float) -> bool:
    """Whether a metric's drop (or relative increase, for losses) is within `limit`, float32 ties included."""
    return drop <= limit + METRIC_TIE


def quality_check(before_eval: dict | None, after_eval: dict | None, evaluation, data: str = "held-out") -> dict:
    """Compare the metrics measured on `data` (the held-out set, or "test"); returns {"within_tolerance": bool |
    None, "metrics": {name: {...}}, "note"}."""
    before_eval, after_eval = before_eval or {}, after_eval or {}
    common = [k for k in after_eval if k in before_eval and _finite(before_eval[k])]
    accuracy = [k for k in common if _is_accuracy(k)]
    checked: dict[str, dict] = {}
    for k in accuracy or common:
        b, a = float(before_eval[k]), after_eval[k]
        a = float(a) if a is not None else math.nan
        if k in accuracy:
            limit = evaluation.max_accuracy_drop
            ok = _finite(a) and within_limit(b - a, limit)
            checked[k] = {"before": b, "after": a, "change": a - b, "kind": "accuracy", "max_drop": limit, "ok": ok}
        else:
            limit = evaluation.max_loss_increase
            rel = (a - b) / abs(b) if b != 0 else (0.0 if a <= 0 else math.inf)
            ok = _finite(a) and within_limit(rel, limit)
            checked[k] = {
                "before": b,
                "after": a,
                "relative_change": rel,
                "kind": "loss",
                "max_increase": limit,
                "ok": ok,
            }
    if not checked:
        return {"within_tolerance": None, "metrics": {}, "note": None}
    failed = [k for k, c in checked.items() if not c["ok"]]
    note = None
    if failed:
        parts = []
        for k in failed:
            c = checked[k]
            if c["kind"] == "accuracy":
                parts.append(
                    f"{data} {k} fell from {c['before']:.1%} to {_pct(c['after'])} "
                    f"({_points(c['change'])}; tolerance {c['max_drop'] * 100:.1f} points)"
                )
            else:
                parts.append(
                    f"{data} {k} rose from {c['before']:.4g} to {c['after']:.4g} "
                    f"({_rel(c['relative_change'])}; tolerance +{c['max_increase']:.0%})"
                )
        note = (
            "QUALITY COLLAPSED: " + "; ".join(parts) + ". The compressed model is not a usable replacement, "
            "so no win is claimed (win = none); try a lower sparsity, a higher keep_ratio or more epochs."
        )
    return {"within_tolerance": not failed, "metrics": checked, "note": note}


def _pct(v: float) -> str:
    return f"{v:.1%}" if _finite(v) else "a non-finite value"


def _points(change: float) -> str:
    return f"{change * 100:+.1f} points" if _finite(change) else "non-finite"


def _rel(rel: float) -> str:
    return f"{rel:+.0%}" if _finite(rel) else "non-finite"


def _speed(before: dict, after: dict) -> tuple[dict, dict, list[str]]:
    """Median ratios per batch size, whether each is a win beyond the spread, and notes on gains inside the noise."""
    speedups, significant, notes = {}, {}, []
    for key, b in (before.get("latency_ms") or {}).items():
        a = (after.get("latency_ms") or {}).get(key)
        if not (isinstance(b, dict) and isinstance(a, dict) and a.get("median") and b.get("median")):
            continue
        ratio = b["median"] / a["median"]
        speedups[key] = ratio
        separated = _finite(a.get("p75")) and _finite(b.get("p25")) and a["p75"] < b["p25"]
        significant[key] = bool(ratio >= SPEED_WIN and separated)
        if ratio >= SPEED_WIN and not separated:
            notes.append(
                f"latency {key}: {ratio:.2f}x by the medians, but within the spread of the repeated "
                "measurements (interquartile ranges overlap): not claimed as a speed win"
            )
    return speedups, significant, notes


def summarize(before: dict, after: dict, artifacts: dict, spec, budget: dict | None = None) -> dict:
    """The manifest's summary of a job (see the module docstring for the rules)."""
    notes: list[str] = []
    b_params, a_params = before["params"], after["params"]
    size_ratio = after["file"]["gzip_bytes"] / max(1, before["file"]["gzip_bytes"])
    speedups, significant, speed_notes = _speed(before, after)
    speed_win = any(significant.values())
    size_win = size_ratio <= SIZE_WIN
    quality = quality_check(before.get("evaluation"), after.get("evaluation"), spec.evaluation)
    tested = "test_evaluation" in before and "test_evaluation" in after
    on_test = quality_check(before.get("test_evaluation"), after.get("test_evaluation"), spec.evaluation, "test")
    notes.extend(q["note"] for q in (quality, on_test) if q["note"])
    if budget is not None and budget.get("note"):
        notes.append(budget["note"])
    budget_test = (budget or {}).get("test")
    if budget_test is not None and budget["met"] and not budget_test["within_budget"]:
        notes.append(
            f"BUDGET MISSED ON TEST DATA: on the held-out data the search chose on, the returned model is within "
            f"max_drop {budget['max_drop']:g}, but on x_test its {budget['metric']} drop is "
            f"{budget_test['drop']:.4g}: the held-out figure was optimistic by the choice"
        )
    notes.extend(speed_notes)
    structured = any(s.kind == "structured" or (s.kind == "budget" and s.method == "structured") for s in spec.steps)
    collapsed = quality["within_tolerance"] is False or on_test["within_tolerance"] is False
    if not structured and not speed_win and not collapsed:
        notes.append(
            "unstructured sparsity only: a size win (gzip), not a speed win — dense kernels still "
            "compute every zero on CPU"
        )
    if not spec.evaluation.latency:
        notes.append("latency not measured (evaluation.latency = false)")
    kinds = [k for k, ok in (("size", size_win), ("speed", speed_win)) if ok]
    out = {
        "win": "none" if collapsed or not kinds else "+".join(kinds),
        "within_tolerance": False if collapsed else quality["within_tolerance"],
        "quality": quality["metrics"],
        "params_total_before": b_params.get("total"),
        "params_total_after": a_params.get("total"),
        "params_nonzero_before": b_params.get("nonzero"),
        "params_nonzero_after": a_params.get("nonzero"),
        "sparsity_after": a_params.get("sparsity"),
        "gzip_size_ratio": size_ratio,
        "latency_speedup": speedups,
        "latency_speedup_beyond_spread": significant,
        "sparsity_preserved_in_export": all(bool(a.get("sparsity_preserved", True)) for a in artifacts.values()),
        "notes": notes,
    }
    if budget is not None:
        out["budget_met"] = bool(budget["met"])
        if budget_test is not None:
            out["budget_met_on_test"] = bool(budget_test["within_budget"])
    eb, ea = before.get("evaluation") or {}, after.get("evaluation") or {}
    out["evaluation_delta"] = {k: ea[k] - eb[k] for k in ea if k in eb}
    if tested:
        out["quality_test"] = on_test["metrics"]
        tb, ta = before["test_evaluation"] or {}, after["test_evaluation"] or {}
        out["test_delta"] = {k: ta[k] - tb[k] for k in ta if k in tb}
    return out

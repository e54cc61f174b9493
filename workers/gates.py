"""Quality gates over a finished job's manifest: what `secateurs submit|wait` checks before exiting 0.

    check(manifest, Gates(max_accuracy_drop=0.01, min_sparsity=0.8)) -> [GateResult(name, ok, line), ...]

Every gate reads the manifest the job wrote (`summary` and the `before`/`after` measurements):

* `max_accuracy_drop` X: every accuracy-like held-out metric fell by at most X (absolute: 0.01 = 1 point), and so
  did every one measured on the dataset's test arrays when it had them (x_test: measured, never decided on).
* `min_sparsity` S: the fraction of zeros in the prunable weights after compression is at least S.
* `max_size_ratio` R: gzipped `.keras` size after / before is at most R.
* `min_speedup` F: at some batch size the median CPU latency improved at least F times *and* the measurements'
  interquartile ranges do not overlap (a gain inside the noise does not count).
* `budget`: the job's budget step met its budget (`manifest.budget.met` / `summary.budget_met`), and, with test
  arrays, the returned model is within the budget on them too (`manifest.budget.test`).
* Always: the job's own quality check (`summary.within_tolerance`, the spec's `evaluation` tolerances) passed.

A gate whose number is missing from the manifest (no accuracy metric, latency not measured) is missed, never
passed silently: the line says what is missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from workers.engine.summary import within_limit


@dataclass(frozen=True)
class Gates:
    max_accuracy_drop: float | None = None
    min_sparsity: float | None = None
    max_size_ratio: float | None = None
    min_speedup: float | None = None
    budget: bool = False

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}

    @classmethod
    def from_dict(cls, d: dict | None) -> Gates:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def merged(self, other: Gates) -> Gates:
        """These gates with every gate `other` sets taking precedence."""
        return Gates(**{**asdict(self), **other.to_dict()})


@dataclass(frozen=True)
class GateResult:
    name: str
    ok: bool
    line: str


def _accuracy_pairs(manifest: dict, key: str = "evaluation") -> dict[str, tuple[float, float]]:
    """Accuracy-like metrics before and after, measured on the held-out data (`key` "evaluation") or on the test
    arrays ("test_evaluation")."""
    if key == "evaluation":
        quality = (manifest.get("summary") or {}).get("quality") or {}
        pairs = {k: (c["before"], c["after"]) for k, c in quality.items() if c.get("kind") == "accuracy"}
        if pairs:
            return pairs
    before = (manifest.get("before") or {}).get(key) or {}
    after = (manifest.get("after") or {}).get(key) or {}
    return {k: (before[k], after[k]) for k in after if "accuracy" in k and k in before}


def _accuracy(manifest: dict, limit: float) -> GateResult:
    name = "max-accuracy-drop"
    pairs = _accuracy_pairs(manifest)
    if not pairs:
        return GateResult(name, False, f"{name} {limit:g}: the job has no accuracy-like held-out metric to check")
    parts, ok = [], True
    for data, measured in (("held-out", pairs), ("test", _accuracy_pairs(manifest, "test_evaluation"))):
        for k, (b, a) in sorted(measured.items()):
            drop = b - a if a is not None else float("inf")
            ok &= within_limit(drop, limit)
            parts.append(f"{data} {k} {b:.4f} -> {a:.4f} (drop {drop:+.4f}, allowed {limit:g})")
    return GateResult(name, ok, f"{name} {limit:g}: " + "; ".join(parts))


def _sparsity(manifest: dict, minimum: float) -> GateResult:
    name = "min-sparsity"
    value = (manifest.get("summary") or {}).get("sparsity_after")
    if value is None:
        value = ((manifest.get("after") or {}).get("params") or {}).get("sparsity")
    if value is None:
        return GateResult(name, False, f"{name} {minimum:g}: the manifest records no sparsity")
    return GateResult(
        name,
        value >= minimum - 1e-12,
        f"{name} {minimum:g}: sparsity of the prunable weights is {value:.4f} (needed >= {minimum:g})",
    )


def _size(manifest: dict, maximum: float) -> GateResult:
    name = "max-size-ratio"
    ratio = (manifest.get("summary") or {}).get("gzip_size_ratio")
    if ratio is None:
        return GateResult(name, False, f"{name} {maximum:g}: the manifest records no size ratio")
    b = ((manifest.get("before") or {}).get("file") or {}).get("gzip_bytes")
    a = ((manifest.get("after") or {}).get("file") or {}).get("gzip_bytes")
    sizes = f" ({b:,} -> {a:,} bytes gzipped)" if b is not None and a is not None else ""
    return GateResult(
        name,
        ratio <= maximum + 1e-12,
        f"{name} {maximum:g}: gzipped .keras size ratio is {ratio:.4f}{sizes} (needed <= {maximum:g})",
    )


def _speedup(manifest: dict, minimum: float) -> GateResult:
    name = "min-speedup"
    before = (manifest.get("before") or {}).get("latency_ms") or {}
    after = (manifest.get("after") or {}).get("latency_ms") or {}
    measured = {}
    for key, b in before.items():
        a = after.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and a.get("median") and b.get("median"):
            separated = a.get("p75") is not None and b.get("p25") is not None and a["p75"] < b["p25"]
            measured[key] = (b["median"] / a["median"], separated)
    if not measured:
        return GateResult(name, False, f"{name} {minimum:g}: latency was not measured (evaluation.latency)")
    clear = {k: r for k, (r, sep) in measured.items() if sep}
    if clear:
        key = max(clear, key=clear.get)
        return GateResult(
            name,
            clear[key] >= minimum - 1e-12,
            f"{name} {minimum:g}: best median speedup beyond the spread is {clear[key]:.2f}x at {key} "
            f"(needed >= {minimum:g}x)",
        )
    key = max(measured, key=lambda k: measured[k][0])
    return GateResult(
        name,
        False,
        f"{name} {minimum:g}: no speedup beyond the spread of the measurements (best "
        f"median {measured[key][0]:.2f}x at {key}, inside the noise)",
    )


def _budget(manifest: dict) -> GateResult:
    name = "budget"
    budget = manifest.get("budget") or {}
    met = budget.get("met", (manifest.get("summary") or {}).get("budget_met"))
    if met is None:
        return GateResult(name, False, f"{name}: the manifest records no budget search")
    detail = ""
    if budget.get("max_drop") is not None:
        chosen = budget.get("chosen")
        trials = budget.get("trials") or []
        trial = trials[chosen] if isinstance(chosen, int) and 0 <= chosen < len(trials) else {}
        drop = f", chosen trial's drop {trial['drop']:.4f}" if trial.get("drop") is not None else ""
        detail = f" (max_drop {budget['max_drop']:g} on {budget.get('metric', 'the metric')}{drop})"
    test = budget.get("test")
    if test is not None:  # the returned model on the test arrays, which the search never saw
        detail += f"; on the test data: drop {test['drop']:.4f}, {'within' if test['within_budget'] else 'beyond'}"
        met = met and test["within_budget"]
    return GateResult(name, bool(met), f"{name}: {'met' if met else 'not met'}{detail}")


def _tolerance(manifest: dict) -> GateResult | None:
    summary = manifest.get("summary") or {}
    if summary.get("within_tolerance") is not False:
        return None
    notes = summary.get("notes") or ["the held-out metric fell beyond the spec's tolerance"]
    return GateResult("quality", False, f"quality: {notes[0]}")


def check(manifest: dict, gates: Gates) -> list[GateResult]:
    """Every gate's result, in a stable order (missed and met alike)."""
    out = []
    if gates.max_accuracy_drop is not None:
        out.append(_accuracy(manifest, gates.max_accuracy_drop))
    if gates.min_sparsity is not None:
        out.append(_sparsity(manifest, gates.min_sparsity))
    if gates.max_size_ratio is not None:
        out.append(_size(manifest, gates.max_size_ratio))
    if gates.min_speedup is not None:
        out.append(_speedup(manifest, gates.min_speedup))
    if gates.budget:
        out.append(_budget(manifest))
    tolerance = _tolerance(manifest)
    if tolerance is not None:
        out.append(tolerance)
    return out

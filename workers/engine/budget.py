"""Budget search: the most compressed model whose held-out metric stays within a tolerated drop.

Plain values; the trials themselves (prune with a sensitivity allocation, fine-tune, measure) are run by the
caller (`pipeline`) through the `run_trial` callable. Public API::

    Trial(...)                                        one trial's measurements (manifest.budget.trials[i])
    LevelSearch(first, highest)                       proposes the fraction to remove next (record each trial)
    search(run_trial, *, first, highest, max_trials, objective, retry=None, retest=None, ...) -> BudgetResult
    choose(trials, objective) -> (index, met); needed(trials, objective, pending) -> indices whose models to keep
    near_miss(drop, max_drop, noise) -> bool         a miss worth one more fine-tune at the same level
    worth_retesting(drop, max_drop, noise) -> bool   a miss worth trying again from a nearer model
    accuracy_noise(is_accuracy, baseline, samples) -> float   one standard error of a held-out accuracy
    OBJECTIVES: dict[str, Callable[[Trial], float]]   what "most compressed" means
    measure(model, scratch, method, latency_runs) -> dict   a trial's size measurements

The search runs over r, the fraction removed (magnitude: the sparsity; structured: 1 - keep ratio), in
log-density space (density = 1 - r), which spends trials where pruning gets hard: 0.9 -> 0.95 is as big a step
as 0.5 -> 0.75. The first trial is at `first` (the caller's prediction from the sensitivity curves). While every
trial met the budget, the next one halves the density of the best (0.9 -> 0.95 -> 0.975 ...); after the first
miss it bisects between the most compressed trial within budget and the least compressed one outside it (the
geometric mean of their densities), and stops early once the two are within `min_ratio` of each other.
Each trial warm-starts from the most compressed trial within budget so far (the original model before there is
one), so fine-tuning accumulates along the way up, as in iterative pruning (Han et al. 2015). A miss therefore
says how far the level is from the model it was pruned from as much as how far it is from the original: when a
level missed after being pruned from further back than the best trial within budget now (the halving step
overshot, then the bisection point in between was within), it is tried once more from that nearer model before
the search bisects towards it (docs/BENCHMARKS.md part 6e: the tutorial CNN missed 0.97 from 0.94 in two of three
seeds, and reached it from 0.959). Only a miss past the budget by at most twice what makes a near miss
(`worth_retesting`) is tried again: a level that collapsed (in part 6b a structured cut past a cliff lost 63
points against a budget of 2, and 61 again from the nearer model) is as far out of reach from a nearer start. Over
the runs of parts 6-6h before this bound, it keeps all 5 re-tests that ended within budget and skips 4 of the 6
that missed again, the cliff among them (a bound read off those 11 re-tests, not tested on others).

Pruned or fine-tuned. A trial measures its level twice: pruned at once (BatchNorm re-estimated, no training;
`pruned_metric`) and after its fine-tune, and keeps the better (`kept`: "fine_tuned" or "pruned"). A model trained
to convergence and fine-tuned afresh for a few epochs moves its held-out metric by more than a tight budget
(docs/BENCHMARKS.md part 6g: a median 0.5-0.9 points for 2 epochs on LeNet-300-100, by host), so without the
pruned candidate such a budget cannot be met at any level, while the pruning alone often stays within it; the
later trials then warm-start from those pruned weights. Both candidates are judged on the same held-out data that
judges the trials, so picking the better one adds to the optimism of the reported drop.

Near misses. A trial's held-out metric moves by more than a tight budget from one fine-tune to the next (the
noise of a few hundred optimizer steps from a fresh optimizer, and of a finite held-out set), so a trial that
misses by little says little about its level. When `retry(trial)` says a miss is near (`near_miss`: past the
budget by at most the budget itself or one standard error of the held-out metric, whichever is larger), the next
trial fine-tunes *that* trial's model once more at the same level (its `retry_of`) before the search records the
level as outside; a retry is not retried. The chosen trial is the best within budget by the objective (ties: the
more compressed); when none is within budget, the trial with the smallest drop, and `met` is false.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.engine import counting
from workers.engine import export as export_mod
from workers.engine import metrics as metrics_mod
from workers.engine.errors import Cancelled

__all__ = [
    "OBJECTIVES",
    "BudgetResult",
    "LevelSearch",
    "Trial",
    "accuracy_noise",
    "choose",
    "measure",
    "near_miss",
    "needed",
    "search",
    "worth_retesting",
]


@dataclass
class Trial:
    level: float  # the global level: sparsity (magnitude) or keep ratio (structured)
    metric: float
    drop: float
    nonzero_params: int
    size_bytes: int  # gzipped .keras
    macs: int
    latency_ms: float | None
    within_budget: bool
    epochs: int
    removed: float = 0.0  # the fraction removed (= level for magnitude, 1 - level for structured)
    start: int | None = None  # the trial it was warm-started from (None: the original model)
    retry_of: int | None = None  # the near miss this trial fine-tunes again at the same level
    pruned_metric: float | None = None  # the held-out metric after pruning, before fine-tuning
    kept: str = "fine_tuned"  # which weights the trial kept: "fine_tuned", or "pruned" when fine-tuning lost more
    wall_time_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


OBJECTIVES: dict[str, Callable[[Trial], float]] = {
    "nonzero_params": lambda t: t.nonzero_params,
    "size": lambda t: t.size_bytes,
    "macs": lambda t: t.macs,
    "latency": lambda t: t.latency_ms if t.latency_ms is not None else math.inf,
}


class LevelSearch:
    """Proposes the fraction to remove next (see the module docstring)."""

    def __init__(self, first: float, highest: float, min_ratio: float = 1.02):
        if not 0.0 < highest < 1.0:
            raise ValueError(f"highest must be within (0, 1), got {highest}")
        self.highest = highest
        self.first = min(max(first, 1e-3), highest)
        self.min_ratio = min_ratio
        self.ok = 0.0  # the most compressed level within budget (0: the original model)
        self.bad: float | None = None  # the least compressed level outside it
        self.bad_from: float | None = None  # the level the trial that missed `bad` was pruned from (None: unknown)
        self.tried: list[float] = []

    def record(self, removed: float, within: bool, start: float | None = None, retest: bool = True) -> None:
        """A trial at `removed`, warm-started from a model at level `start` (0: the original model; None: not
        said, and a miss is then never tried again). `retest` False: a miss never to try again from a nearer
        model (`worth_retesting`)."""
        self.tried.append(removed)
        if within:
            self.ok = max(self.ok, removed)
            if self.bad is not None and self.bad <= self.ok:
                self.bad = self.bad_from = None  # a miss from further back, now within from nearer
        elif self.bad is None or removed < self.bad - 1e-12:
            self.bad, self.bad_from = removed, (start if retest else None)
        elif abs(removed - self.bad) <= 1e-12:
            if not retest:
                self.bad_from = None
            elif start is not None:
                self.bad_from = start if self.bad_from is None else max(self.bad_from, start)

    def next(self) -> float | None:
        """The next fraction to try, or None when the search has converged."""
        if not self.tried:
            return self.first
        d_ok = 1.0 - self.ok
        if self.bad is None:
            if self.ok >= self.highest - 1e-12:
                return None  # the most the layers allow is within budget
            return min(1.0 - d_ok / 2.0, self.highest)
        if self.bad_from is not None and self.bad_from < self.ok - 1e-12:
            return self.bad  # missed when pruned from further back: try it again from the nearer model
        d_bad = 1.0 - self.bad
        if d_ok / d_bad <= self.min_ratio:
            return None
        return 1.0 - math.sqrt(d_ok * d_bad)


def near_miss(drop: float, max_drop: float, noise: float = 0.0) -> bool:
    """Whether a trial outside the budget missed it by at most max(max_drop, noise): a miss that one more
    fine-tune at the same level may well turn, given how much a held-out metric moves between fine-tunes."""
    return math.isfinite(drop) and drop > max_drop and drop - max_drop <= max(max_drop, noise)


RETEST_REACH = 2.0  # tried again from a nearer model: a miss past the budget by at most this many near misses' reach


def worth_retesting(drop: float, max_drop: float, noise: float = 0.0) -> bool:
    """Whether a level that missed the budget when pruned from further back is worth trying again from the nearer
    model within budget now: past the budget by at most RETEST_REACH times max(max_drop, noise) (module docstring)."""
    return math.isfinite(drop) and drop - max_drop <= RETEST_REACH * max(max_drop, noise)


def accuracy_noise(metric_is_accuracy: bool, baseline: float, samples: int) -> float:
    """One standard error of an accuracy measured on `samples` held-out samples (binomial, at the input model's
    accuracy); 0 for other metrics, or without samples."""
    if not metric_is_accuracy or samples <= 0 or not 0.0 <= baseline <= 1.0:
        return 0.0
    return math.sqrt(baseline * (1.0 - baseline) / samples)


@dataclass
class BudgetResult:
    trials: list[Trial]
    chosen: int
    met: bool


def search(
    run_trial: Callable[[float, int | None], Trial],
    *,
    first: float,
    highest: float,
    max_trials: int,
    objective: str,
    should_cancel: Callable[[], bool] | None = None,
    on_trial: Callable[[int, Trial, int | None], None] | None = None,
    retry: Callable[[Trial], bool] | None = None,
    retest: Callable[[Trial], bool] | None = None,
) -> BudgetResult:
    """Run up to `max_trials` trials; `run_trial(removed, start)` prunes the model (from trial `start`'s model,
    or the original when None) so that the fraction `removed` is gone, fine-tunes, measures and returns a Trial.
    `retry(trial)`: whether a trial outside the budget is a near miss to fine-tune once more; `retest(trial)`:
    whether a level it missed may be tried again from a nearer model (None: always; module docstring).
    `on_trial(i, trial, pending)` is called after each one; `pending` is the trial the next one retries (its model
    must be kept), else None. Cancellation is checked before every trial."""
    levels = LevelSearch(first, highest)
    trials: list[Trial] = []
    best: int | None = None  # the most compressed trial within budget
    pending: int | None = None  # a near miss that the next trial fine-tunes again
    while len(trials) < max_trials:
        if pending is not None:
            removed, start = trials[pending].removed, pending
        else:
            removed, start = levels.next(), best
            if removed is None:
                break
        if should_cancel is not None and should_cancel():
            raise Cancelled("the job was cancelled between budget trials")
        t0 = time.perf_counter()
        trial = run_trial(removed, start)
        trial.removed, trial.start, trial.retry_of = removed, start, pending
        trial.wall_time_s = time.perf_counter() - t0
        trials.append(trial)
        if pending is None and not trial.within_budget and retry is not None and retry(trial):
            pending = len(trials) - 1  # its level is judged by the retry
        else:
            origin = start if pending is None else trials[pending].start  # a retry: where its level was pruned from
            levels.record(
                removed,
                trial.within_budget,
                trials[origin].removed if origin is not None else 0.0,
                retest=retest is None or trial.within_budget or retest(trial),
            )
            pending = None
        if trial.within_budget and (best is None or removed > trials[best].removed):
            best = len(trials) - 1
        if on_trial is not None:
            on_trial(len(trials) - 1, trial, pending)
    chosen, met = choose(trials, objective)
    return BudgetResult(trials, chosen, met)


def choose(trials: list[Trial], objective: str) -> tuple[int, bool]:
    """The best trial within budget by the objective (ties: the more compressed) and True; when none is within
    budget, the one with the smallest drop and False."""
    key = OBJECTIVES[objective]
    within = [i for i, t in enumerate(trials) if t.within_budget]
    if within:
        return min(within, key=lambda i: (key(trials[i]), -trials[i].removed)), True
    return min(range(len(trials)), key=lambda i: (trials[i].drop, trials[i].removed)), False


def needed(trials: list[Trial], objective: str, pending: int | None = None) -> set[int]:
    """The trials whose models may still be used: the one `choose` picks now, the most compressed within
    budget (the next warm start) and `pending`, the near miss the next trial retries."""
    if not trials:
        return set()
    out = {choose(trials, objective)[0]} | ({pending} if pending is not None else set())
    within = [i for i, t in enumerate(trials) if t.within_budget]
    if within:
        out.add(max(within, key=lambda i: trials[i].removed))
    return out


def measure(model, scratch: Path, *, method: str, latency_runs: int = 0) -> dict:
    """A trial's measurements of `model`: nonzero_params, size_bytes (the gzipped .keras file, written to `scratch`
    and removed), macs (zero-skipping MACs for magnitude, MACs of the rebuilt model for structured) and
    latency_ms (compiled CPU, batch 1, median of up to `latency_runs` runs; None when 0); `extra` holds the
    parameter total and the sparsity of the prunable weights."""
    stats = counting.param_stats(model)
    compute = counting.macs(model)
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "trial.keras"
    export_mod.save_model_file(model, path)
    size = metrics_mod.file_size(path)["gzip_bytes"]
    path.unlink(missing_ok=True)
    latency = None
    if latency_runs:
        latency = metrics_mod.latency(model, batch_sizes=(1,), runs=latency_runs)["batch_1"]["median"]
    return {
        "nonzero_params": int(stats["nonzero"]),
        "size_bytes": int(size),
        "latency_ms": latency,
        "macs": int(compute["effective_macs"] if method == "magnitude" else compute["macs"]),
        "extra": {"params": int(stats["total"]), "sparsity": float(stats["sparsity"])},
    }

"""`python -m bench <part>... [--quick]`: run benchmarks side by side and write bench/results/*.json.

Parts: overhead (1), accuracy (2), structured (3), structured_removal (3b: the structured step's gradual and
one-shot removal on LeNet-300-100, the tutorial CNN and a BN ResNet), service (4), zoo (5: MobileNetV2, a BN ResNet,
EfficientNetB0, up to an hour on 2 busy cores), zoo_setup (5b: the zoo's goal points at issue 9's own setup, 8,000
digits, Secateurs and plain fine-tuning only), overhead_large (5c: a job's time outside training on a ResNet50,
main's code against this checkout; about 25 minutes), overhead_floor (5d: what the measurements of that job cost at
the least, each piece timed alone and warm, beside the job; about 5 minutes), budget (6: the smallest LeNet-300-100
and tutorial CNN within 1 point), budget_zoo (6b: MobileNetV2, structured, within 2 points), budget_tfmot (6c: the
budget against hand-picked tfmot settings at equal epochs), budget_timing (6d: preflight and sensitivity sweep times
of MobileNetV2; needs a quiet machine), budget_matched (6e: the budget given each hand-picked tfmot setting's own
drop), budget_converged (6f: 6e on input models trained to convergence), budget_seeds (6g: 6f's one miss over ten
seeds); parts 3b and 5 to 6g are not in `all`.
`all` runs 1-4 in one command; `report` re-renders the tables of docs/BENCHMARKS.md from the JSON results. `--quick`
is a smoke run (< 3 minutes per part, the zoo's about 4): fewer repetitions, seeds, models and points; its results
go to *.quick.json and are never rendered into the doc.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time

from bench.common import log

PARTS = {
    "overhead": "bench.overhead",
    "accuracy": "bench.accuracy",
    "structured": "bench.structured",
    "service": "bench.service",
}
EXTRA_PARTS = {  # run only when named
    "zoo": "bench.zoo",
    "zoo_setup": "bench.zoo_setup",
    "overhead_large": "bench.overhead_large",
    "overhead_floor": "bench.overhead_floor",
    "structured_removal": "bench.structured_removal",
    "budget": "bench.budget",
    "budget_zoo": "bench.budget_zoo",
    "budget_zoo_magnitude": "bench.budget_zoo_magnitude",
    "budget_tfmot": "bench.budget_tfmot",
    "budget_timing": "bench.budget_timing",
    "budget_matched": "bench.budget_matched",
    "budget_converged": "bench.budget_converged",
    "budget_seeds": "bench.budget_seeds",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parts", nargs="+", choices=[*PARTS, *EXTRA_PARTS, "all", "report"])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repetitions (< 3 minutes for all)")
    parser.add_argument("--repeats", type=int, default=None, help="override the number of repetitions")
    parser.add_argument("--models", default=None, help="zoo, zoo_setup: comma-separated subset of its models")
    args = parser.parse_args(argv)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    named = [p for p in args.parts if p not in ("report", "all")]
    parts = [*PARTS, *(p for p in named if p in EXTRA_PARTS)] if "all" in args.parts else named
    started = time.monotonic()
    from bench.harness import Sides

    with Sides() as sides:
        for part in parts:
            t0 = time.monotonic()
            module = importlib.import_module({**PARTS, **EXTRA_PARTS}[part])
            extra = {"models": args.models.split(",")} if part in ("zoo", "zoo_setup") and args.models else {}
            module.run(sides, quick=args.quick, command=command, repeats=args.repeats, **extra)
            log(f"{part}: done in {time.monotonic() - t0:.0f} s")
    if "report" in args.parts or (parts and not args.quick):
        from bench import report

        path = report.render()
        log(f"rendered {path}")
    log(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

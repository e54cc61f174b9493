"""Formatting helpers of the rendered tables (bench.report and the part modules it imports)."""

from __future__ import annotations


def _md(rows: list[list], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _x(v: float) -> str:
    return f"{v:.2f}×"


def _spread(s: dict) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def _run_line(d: dict) -> str:
    load = d.get("load", {})
    return (
        f"_Run {d['date']} (commit {d.get('commit')}), `{d['command']}`; 1-min load average during the run "
        f"{load.get('load1_min')}–{load.get('load1_max')} (median {load.get('load1_median')}) on "
        f"{load.get('cores')} cores._"
    )


def _margin(v: dict) -> str:
    """A verdict's accuracy margin in points, with its 95 % interval over the test digits when the run recorded one
    (`bench.budget_tfmot.margin_interval`): "+0.10 [-0.50, +0.70]"."""
    out = f"{100 * v['accuracy_margin']:+.2f}"
    ci = v.get("accuracy_margin_ci95")
    return out + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")

"""The report's plots, drawn with matplotlib into standalone SVG documents (bytes).

Plain values in, SVG out: the report module extracts the numbers from the manifest. Nothing here touches pyplot
or a global backend: each plot is a `matplotlib.figure.Figure` saved with the SVG backend, under an rc context that
turns math parsing off (a layer named "$x$" is text, not TeX) and fixes the SVG hash salt and date so the same
input gives the same bytes. Labels from the manifest (layer names are chosen by whoever built the model) are
cleaned of control characters and shortened before they reach matplotlib, which escapes them as XML text.

Public API (each returns the SVG bytes, or None when there is nothing to draw)::

    layer_bars(rows, *, title, xlabel, fraction)       rows: [(name, before, after)]
    training_curves(steps, metric)                     steps: [(label, history dict)]
    sensitivity_curves(rows, metric)                   rows: [{"layer", "level", "drop"}]
    pareto_front(trials, *, metric, baseline, floor, chosen, x_key, x_label)
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

MAX_LABEL = 36
MAX_ANNOTATED = 40  # per-layer bars carry their value as text up to this many layers
BEFORE, AFTER, VAL, CHOSEN, MUTED = "#9aa5b4", "#1f5fbf", "#d9731a", "#c62828", "#c5ccd6"
WIDTH_IN = 5.2
RC = {
    "svg.fonttype": "none",  # text stays text: small files, selectable and searchable in the page
    "svg.hashsalt": "secateurs",
    "text.parse_math": False,
    "font.size": 8,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e7ed",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.frameon": False,
}


def label(text: object, limit: int = MAX_LABEL) -> str:
    """A manifest string made safe for a plot: printable characters only, at most `limit` long."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"


@contextmanager
def _figure(height_in: float, nrows: int = 1, width_in: float = WIDTH_IN) -> Iterator:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width_in, height_in))
        axes = fig.subplots(nrows, 1, squeeze=False, sharex=True, gridspec_kw={"hspace": 0.12})[:, 0]
        yield fig, list(axes)


def _svg(fig, tight: bool = True) -> bytes:
    """The figure as an SVG document; `tight` crops it to what was drawn (an extra layout pass: a figure that
    sets its own margins skips it)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(
            buf,
            format="svg",
            metadata={"Date": None, "Creator": "Secateurs (matplotlib)"},
            bbox_inches="tight" if tight else None,
        )
    return buf.getvalue()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- per-layer bars


def layer_bars(
    rows: Sequence[tuple[str, float | None, float | None]], *, title: str, xlabel: str, fraction: bool
) -> bytes | None:
    """Horizontal before/after bars per layer (sparsity as a fraction, or a width in units), each after bar
    labelled when there are few enough to read. Margins are set from the label lengths rather than measured: a
    model with a hundred layers would otherwise spend a second in layout."""
    rows = [(label(n), b if _finite(b) else 0.0, a if _finite(a) else 0.0) for n, b, a in rows]
    if not rows:
        return None
    n = len(rows)
    label_in = 0.25 + 0.062 * max(len(r[0]) for r in rows)  # ~0.55 em per character at 8 pt, a little spare
    height_in = 1.0 + 0.24 * n
    with _figure(height_in, width_in=label_in + 4.4) as (fig, (ax,)):
        fig.subplots_adjust(
            left=label_in / (label_in + 4.4), right=0.97, top=1 - 0.45 / height_in, bottom=0.55 / height_in
        )
        h = 0.38
        bar_pt = h * 0.24 * 72  # a bar's thickness in points: h of a row of 0.24 in
        for offset, col, color, what in ((-h / 2, 1, BEFORE, "before"), (h / 2, 2, AFTER, "after")):
            # one line collection per series: a hundred Rectangle patches would take most of the render
            ax.hlines(
                [i + offset for i in range(n)],
                0,
                [r[col] for r in rows],
                colors=color,
                lw=bar_pt,
                capstyle="butt",
                label=what,
            )
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_yticks([])
        ax.grid(axis="y", visible=False)
        ax.spines["left"].set_visible(True)
        names = ax.get_yaxis_transform()  # x in axes fraction, y in data: one Text per row, lighter than ticks
        for i, r in enumerate(rows):
            ax.text(-0.01, i, r[0], transform=names, ha="right", va="center")
        ax.set_xlabel(xlabel)
        ax.set_title(title, loc="left")
        if fraction:
            ax.set_xlim(0, 1)
            ax.xaxis.set_major_formatter(_percent)
        else:
            ax.set_xlim(0, max(max(r[1], r[2]) for r in rows) * 1.08 or 1)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, borderaxespad=0.2)
        for i, (_, b, a) in enumerate(rows if n <= MAX_ANNOTATED else []):
            text = f"{a:.0%}" if fraction else (f"{a:g}/{b:g}" if b else f"{a:g}")
            ax.annotate(text, (a, i + h / 2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        return _svg(fig, tight=False)


def _percent(v, _pos=None) -> str:
    return f"{v:.0%}"


# --------------------------------------------------------------------------- training curves


def training_curves(steps: Sequence[tuple[str, dict]], metric: str | None) -> bytes | None:
    """Loss (and `metric`) per epoch across the steps that trained, train solid and validation dashed; each
    step's epochs are a shaded band labelled with the step."""
    spans = []  # (label, first epoch, history)
    epoch = 0
    for name, history in steps:
        n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
        if n:
            spans.append((name, epoch, history))
            epoch += n
    if not spans:
        return None
    keys = ["loss"] + ([metric] if metric else [])
    with _figure(2.0 * len(keys) + 0.4, nrows=len(keys)) as (fig, axes):
        for ax, key in zip(axes, keys):
            drawn = set()
            for i, (name, start, history) in enumerate(spans):
                n = max(len(v) for v in history.values() if isinstance(v, list))
                if i % 2:
                    ax.axvspan(start + 0.5, start + n + 0.5, color="#f1f3f6", lw=0)
                if ax is axes[0]:
                    ax.text(
                        start + 0.6,
                        1.0,
                        label(name, 18),
                        transform=ax.get_xaxis_transform(),
                        va="bottom",
                        fontsize=7,
                        color="#555",
                    )
                for k, color, style, what in ((key, AFTER, "-", "train"), (f"val_{key}", VAL, "--", "held-out")):
                    ys = [v if _finite(v) else math.nan for v in history.get(k) or []]
                    if ys:
                        xs = list(range(start + 1, start + 1 + len(ys)))
                        ax.plot(
                            xs, ys, style, color=color, marker="o", ms=3, lw=1.4, label=None if what in drawn else what
                        )
                        drawn.add(what)
            ax.set_ylabel(label(key))
            ax.set_xlim(0.5, epoch + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if drawn and ax is axes[0]:
                ax.legend(loc="best")
        axes[-1].set_xlabel("epoch (all steps)")
        return _svg(fig)


# --------------------------------------------------------------------------- sensitivity


def sensitivity_curves(rows: Sequence[dict], metric: str, highlight: int = 8) -> bytes | None:
    """The drop of `metric` per level, one line per layer; the `highlight` most sensitive layers (largest drop
    at any level) are coloured and named, the rest are thin grey lines."""
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if _finite(r.get("level")) and _finite(r.get("drop")):
            by_layer.setdefault(str(r.get("layer")), []).append((float(r["level"]), float(r["drop"])))
    if not by_layer:
        return None
    order = sorted(by_layer, key=lambda k: -max(d for _, d in by_layer[k]))
    top = set(order[:highlight])
    with _figure(3.4) as (fig, (ax,)):
        import matplotlib

        colors = matplotlib.colormaps["tab10"].colors
        for name in reversed(order):  # the most sensitive drawn last, on top
            pts = sorted(by_layer[name])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if name in top:
                ax.plot(xs, ys, "-o", ms=3, lw=1.5, color=colors[order.index(name) % 10], label=label(name, 28))
            else:
                ax.plot(xs, ys, "-", lw=0.8, color=MUTED)
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_xlabel("level (fraction pruned)")
        ax.set_ylabel(f"drop in held-out {label(metric, 24)}")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles[::-1],
            labels[::-1],
            loc="upper left",
            fontsize=7,
            title=None if len(order) <= highlight else f"{highlight} most sensitive of {len(order)}",
        )
        return _svg(fig)


# --------------------------------------------------------------------------- budget


def _front(points: list[tuple[float, float, int]], higher_better: bool) -> list[tuple[float, float, int]]:
    """The Pareto front of (size, metric, index): no other point is at most as big and strictly better."""
    sign = 1 if higher_better else -1
    front, best = [], -math.inf
    for x, y, i in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y, i))
            best = sign * y
    return front


def pareto_front(
    trials: Sequence[dict],
    *,
    metric: str,
    baseline: float | None,
    floor: float | None,
    higher_better: bool,
    chosen: int | None,
    x_key: str,
    x_label: str,
) -> bytes | None:
    """Held-out metric against size for every budget trial: the Pareto front as a step line, trials within the
    budget filled, the baseline and the budget's limit as horizontal lines, the chosen trial starred."""
    pts = [
        (float(t[x_key]), float(t["metric"]), i)
        for i, t in enumerate(trials)
        if _finite(t.get(x_key)) and _finite(t.get("metric"))
    ]
    if not pts:
        return None
    with _figure(3.4) as (fig, (ax,)):
        front = _front(pts, higher_better)
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color=AFTER,
            lw=1.2,
            alpha=0.7,
            label="Pareto front",
        )
        inside = [p for p in pts if trials[p[2]].get("within_budget") is True]
        outside = [p for p in pts if trials[p[2]].get("within_budget") is not True]
        ax.scatter([p[0] for p in inside], [p[1] for p in inside], s=28, color=AFTER, zorder=3, label="within budget")
        ax.scatter(
            [p[0] for p in outside],
            [p[1] for p in outside],
            s=28,
            facecolors="white",
            edgecolors=BEFORE,
            zorder=3,
            label="over budget",
        )
        for x, y, i in pts:
            lvl = trials[i].get("level")
            if _finite(lvl):
                ax.annotate(f"{lvl:g}", (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color="#555")
        if _finite(baseline):
            ax.axhline(baseline, color="#555", lw=0.9, label=f"baseline {baseline:.4g}")
        if _finite(floor):
            ax.axhline(floor, color=CHOSEN, lw=0.9, ls="--", label=f"budget limit {floor:.4g}")
        if chosen is not None and any(p[2] == chosen for p in pts):
            x, y, _ = next(p for p in pts if p[2] == chosen)
            ax.scatter(
                [x], [y], s=180, marker="*", color=CHOSEN, edgecolors="black", linewidths=0.6, zorder=4, label="chosen"
            )
        xs = [p[0] for p in pts]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"held-out {label(metric, 24)}")
        ax.legend(loc="best", fontsize=7)
        return _svg(fig)

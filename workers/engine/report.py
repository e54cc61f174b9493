"""report.html: one self-contained page that says what a job gained and lost, for people rather than programs.

Public API::

    render_report(manifest, sensitivity=None) -> str      the HTML document
    REPORT_NAME = "report.html"

Pure: the manifest dict built by `pipeline.compress` (and the `sensitivity.json` dict when the job made one) in,
an HTML string out. The page fetches nothing: the plots are matplotlib SVG documents inlined as data: images, the
CSS is inline, there is no script, and a Content-Security-Policy meta tag forbids any other load. It reflows on a
phone and prints on paper. Every string taken from the manifest is escaped (layer names are chosen by whoever
built the uploaded model); the plots get cleaned, shortened labels (`plots.label`).

Sections, each present when the manifest holds its data: the verdict in words (the summary's win, the held-out
quality against its tolerance, the size, parameter, MAC and latency changes, the budget when one was set, and the
summary's notes), the before/after table, one row per exported file, the budget search (its trials and the
accuracy-versus-size Pareto front with the chosen trial starred), the per-layer sensitivity curves, per-layer
sparsity and kept width before and after, and the training curves of every step. The budget and sensitivity
sections are drawn by `report_search`.
"""

from __future__ import annotations

from workers.engine import plots
from workers.engine.report_html import (  # value formatting
    CSP,
    _accuracy_like,
    _bytes,
    _dict,
    _e,
    _figure,
    _finite,
    _int,
    _list,
    _metric,
    _metric_change,
    _pct,
    _ratio_change,
    page,
    table,
)
from workers.engine.report_search import _budget, _budget_sentences, _sensitivity

REPORT_NAME = "report.html"
MAX_LAYERS = 150  # per-layer plots show at most this many layers (the largest by parameters)

__all__ = ["CSP", "REPORT_NAME", "render_report"]


# --------------------------------------------------------------------------- the verdict


def _quality_sentences(summary: dict) -> list[str]:
    if summary.get("within_tolerance") is None:
        return ["No held-out data: the quality of the compressed model was not checked."]
    out = []
    for data, key in (("Held-out", "quality"), ("Test", "quality_test")):
        out += _quality_lines(data, _dict(summary.get(key)))
    return out


def _quality_lines(data: str, quality: dict) -> list[str]:
    """One sentence per checked metric on `data` ("Held-out", or "Test": the dataset's x_test, never decided on)."""
    out = []
    for name, q in quality.items():
        q = _dict(q)
        b, a = q.get("before"), q.get("after")
        if q.get("kind") == "accuracy":
            tol = f"tolerance {q['max_drop'] * 100:.1f} points" if _finite(q.get("max_drop")) else ""
        else:
            tol = f"tolerance +{q['max_increase']:.0%}" if _finite(q.get("max_increase")) else ""
        ok = "within" if q.get("ok") else "<strong>beyond</strong>"
        out.append(
            f"{data} {_e(name)}: {_metric(name, b)} → {_metric(name, a)} "
            f"({_metric_change(name, b, a)}; {ok} the {tol})."
        )
    return out


def _gain_sentences(m: dict) -> list[str]:
    before, after, summary = _dict(m.get("before")), _dict(m.get("after")), _dict(m.get("summary"))
    out = []
    fb, fa = _dict(before.get("file")), _dict(after.get("file"))
    if _finite(fb.get("gzip_bytes")) and _finite(fa.get("gzip_bytes")):
        out.append(
            f"The gzipped .keras file went from {_bytes(fb['gzip_bytes'])} to {_bytes(fa['gzip_bytes'])} "
            f"({_ratio_change(fb['gzip_bytes'], fa['gzip_bytes'])})."
        )
    pb, pa = _dict(before.get("params")), _dict(after.get("params"))
    if _finite(pb.get("nonzero")) and _finite(pa.get("nonzero")):
        s = (
            f"Non-zero parameters: {_int(pb['nonzero'])} → {_int(pa['nonzero'])} "
            f"({_ratio_change(pb['nonzero'], pa['nonzero'], 'fewer', 'more')})"
        )
        if pb.get("total") != pa.get("total"):
            s += f"; all parameters {_int(pb.get('total'))} → {_int(pa.get('total'))} (units removed)"
        out.append(s + ".")
    cb, ca = _dict(before.get("compute")), _dict(after.get("compute"))
    if _finite(cb.get("macs")) and _finite(ca.get("macs")):
        s = f"MACs per sample: {_int(cb['macs'])} → {_int(ca['macs'])}"
        if _finite(ca.get("effective_macs")) and ca.get("effective_macs") != ca["macs"]:
            s += f" ({_int(ca['effective_macs'])} if zeros were skipped)"
        out.append(s + ".")
    speed = _dict(summary.get("latency_speedup"))
    beyond = _dict(summary.get("latency_speedup_beyond_spread"))
    for key, ratio in speed.items():
        b = _dict(_dict(before.get("latency_ms")).get(key)).get("median")
        a = _dict(_dict(after.get("latency_ms")).get(key)).get("median")
        if _finite(ratio) and _finite(b) and _finite(a):
            claim = "a speed win" if beyond.get(key) else "not claimed: within the measurement spread or under 10%"
            how = f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"
            out.append(f"CPU latency at {_e(key.replace('_', ' '))}: {b:.3g} ms → {a:.3g} ms ({how}; {claim}).")
    if summary.get("sparsity_preserved_in_export") is False:
        out.append("<strong>An exported file lost the sparsity</strong> (see the files table).")
    return out


def _verdict(m: dict) -> str:
    summary = _dict(m.get("summary"))
    win = str(summary.get("win", "none"))
    if summary.get("within_tolerance") is False:
        cls, head = "bad", "No win: the held-out quality fell beyond the tolerance."
    elif win != "none":
        words = {"size": "smaller", "speed": "faster"}
        cls = "good"
        head = "Win: the model is " + " and ".join(words.get(k, k) for k in win.split("+")) + "."
    else:
        cls, head = "neutral", "No win claimed: the model did not get clearly smaller or faster."
    items = _quality_sentences(summary) + _gain_sentences(m) + _budget_sentences(_dict(m.get("budget")))
    notes = "".join(f"<li>{_e(n)}</li>" for n in _list(summary.get("notes")))
    return (
        f'<section id="verdict" class="verdict {cls}"><h2>Verdict</h2><p class="headline">{_e(head)} '
        f'<span class="badge">win: {_e(win)}</span></p><ul>{"".join(f"<li>{s}</li>" for s in items)}</ul>'
        + (f'<h3>Notes</h3><ul class="notes">{notes}</ul>' if notes else "")
        + "</section>"
    )


# --------------------------------------------------------------------------- before / after


def _eval_names(*evaluations: dict) -> list[str]:
    """The metric names of some {name: value} measurements, accuracy-like ones first."""
    names = {k for e in evaluations for k in _dict(e)}
    return sorted(names, key=lambda k: (not _accuracy_like(k), k))


def _before_after(m: dict) -> str:
    before, after = _dict(m.get("before")), _dict(m.get("after"))
    rows = []
    for data, key in (("held-out", "evaluation"), ("test", "test_evaluation")):
        eb, ea = _dict(before.get(key)), _dict(after.get(key))
        for k in _eval_names(eb, ea):
            rows.append(
                (f"{data} {k}", _metric(k, eb.get(k)), _metric(k, ea.get(k)), _metric_change(k, eb.get(k), ea.get(k)))
            )
    pb, pa = _dict(before.get("params")), _dict(after.get("params"))
    rows += [
        ("parameters", _int(pb.get("total")), _int(pa.get("total")), _ratio_change(pb.get("total"), pa.get("total"))),
        (
            "non-zero parameters",
            _int(pb.get("nonzero")),
            _int(pa.get("nonzero")),
            _ratio_change(pb.get("nonzero"), pa.get("nonzero"), "fewer", "more"),
        ),
        ("sparsity of the prunable kernels", _pct(pb.get("sparsity")), _pct(pa.get("sparsity")), ""),
    ]
    cb, ca = _dict(before.get("compute")), _dict(after.get("compute"))
    rows += [
        (
            "MACs per sample",
            _int(cb.get("macs")),
            _int(ca.get("macs")),
            _ratio_change(cb.get("macs"), ca.get("macs"), "fewer", "more"),
        ),
        (
            "MACs if zeros were skipped",
            _int(cb.get("effective_macs")),
            _int(ca.get("effective_macs")),
            _ratio_change(cb.get("effective_macs"), ca.get("effective_macs"), "fewer", "more"),
        ),
    ]
    fb, fa = _dict(before.get("file")), _dict(after.get("file"))
    rows += [
        (
            ".keras size",
            _bytes(fb.get("bytes")),
            _bytes(fa.get("bytes")),
            _ratio_change(fb.get("bytes"), fa.get("bytes")),
        ),
        (
            ".keras size gzipped",
            _bytes(fb.get("gzip_bytes")),
            _bytes(fa.get("gzip_bytes")),
            _ratio_change(fb.get("gzip_bytes"), fa.get("gzip_bytes")),
        ),
    ]
    lb, la = _dict(before.get("latency_ms")), _dict(after.get("latency_ms"))
    for key in lb:
        b, a = _dict(lb.get(key)), _dict(la.get(key))
        rows.append(
            (
                f"CPU latency, {key.replace('_', ' ')} (median ms, p25–p75)",
                _latency(b),
                _latency(a),
                _ratio_change(b.get("median"), a.get("median"), "faster", "slower"),
            )
        )
    if not lb:
        rows.append(("CPU latency", "not measured", "not measured", ""))
    return (
        '<section id="before-after"><h2>Before and after</h2>'
        + table(["", "before", "after", "change"], rows)
        + _files(m)
        + "</section>"
    )


def _latency(d: dict) -> str:
    if not _finite(d.get("median")):
        return "—"
    spread = f" ({d['p25']:.3g}–{d['p75']:.3g})" if _finite(d.get("p25")) and _finite(d.get("p75")) else ""
    return f"{d['median']:.3g}{spread}"


def _files(m: dict) -> str:
    artifacts = _dict(m.get("artifacts"))
    if not artifacts:
        return ""
    evaluations = [_dict(_dict(a).get("evaluation")) for a in artifacts.values()]
    names = [k for k in _eval_names(*evaluations) if k not in ("how", "samples")]
    rows = []
    for fmt, a in artifacts.items():
        a = _dict(a)
        ev = _dict(a.get("evaluation"))
        rows.append(
            (
                a.get("file", fmt),
                a.get("encoding", ""),
                _bytes(a.get("bytes")),
                _bytes(a.get("gzip_bytes")),
                _int(a.get("params")),
                _int(a.get("nonzero_params")),
                *(_metric(k, ev.get(k)) for k in names),
                "yes" if a.get("sparsity_preserved", True) else "NO",
            )
        )
    head = [
        "file",
        "encoding",
        "size",
        "gzipped",
        "parameters",
        "non-zero",
        *(f"held-out {k}" for k in names),
        "sparsity kept",
    ]
    return (
        '<h3 id="artifacts">Exported files</h3><p class="small">Each file was reloaded and run on the held-out '
        "data; its own metrics are shown.</p>" + table(head, rows, left=2)
    )


# --------------------------------------------------------------------------- per layer


def _largest(names: list[str], params: dict) -> tuple[list[str], str]:
    if len(names) <= MAX_LAYERS:
        return names, ""
    keep = set(sorted(names, key=lambda n: -(_dict(params.get(n)).get("params") or 0))[:MAX_LAYERS])
    return [n for n in names if n in keep], f" The {MAX_LAYERS} largest of {len(names)} layers are shown."


def _layers(m: dict) -> str:
    steps = [_dict(s) for s in _list(m.get("steps"))]
    lb = _dict(_dict(_dict(m.get("before")).get("params")).get("layers"))
    la = _dict(_dict(_dict(m.get("after")).get("params")).get("layers"))
    parts = []
    pruned = [n for s in steps if s.get("kind") == "prune" for n in _dict(s.get("layer_sparsity"))]
    names = list(dict.fromkeys(pruned)) or [n for n in {**lb, **la} if (_dict(la.get(n)).get("sparsity") or 0) > 0]
    if names:
        names, note = _largest(names, lb)
        rows = [(n, _dict(lb.get(n)).get("sparsity"), _dict(la.get(n)).get("sparsity")) for n in names]
        svg = plots.layer_bars(
            rows, title="Sparsity per layer", xlabel="fraction of weights that are zero", fraction=True
        )
        parts.append(
            _figure(
                svg,
                "Bar chart of the sparsity of each pruned layer before and after",
                "Fraction of exact zeros in each layer's weights, before and after." + _e(note),
            )
        )
    widths: dict[str, list] = {}
    skipped: dict[str, str] = {}
    for s in steps:
        report = _dict(s.get("report"))
        for g in _list(report.get("groups")):
            g = _dict(g)
            for name in _list(g.get("layers")):
                entry = widths.setdefault(str(name), [g.get("units_before"), None])
                entry[1] = g.get("units_after")
        skipped.update({str(k): str(v) for k, v in _dict(report.get("skipped")).items()})
    if widths:
        names, note = _largest(list(widths), lb)
        svg = plots.layer_bars(
            [(n, *widths[n]) for n in names], title="Kept width per layer", xlabel="units or filters", fraction=False
        )
        parts.append(
            _figure(
                svg,
                "Bar chart of the units or filters of each layer before and after structured pruning",
                "Units (Dense) or filters (Conv) of each layer, before and after "
                "structured pruning: the after bar is labelled kept/before." + _e(note),
            )
        )
        if skipped:
            rows = [(k, v) for k, v in skipped.items()]
            parts.append("<h3>Layers left whole by structured pruning</h3>" + table(["layer", "why"], rows, left=2))
    if not parts:
        return ""
    return '<section id="layers"><h2>Per layer</h2>' + "".join(parts) + "</section>"


# --------------------------------------------------------------------------- training


def _training(m: dict) -> str:
    steps = [_dict(s) for s in _list(m.get("steps"))]
    if not steps:
        return ""
    histories = [
        (f"{int(s.get('index', i)) + 1}. {s.get('kind', 'step')}", _dict(s.get("history"))) for i, s in enumerate(steps)
    ]
    keys = [k for _, h in histories for k in h if not k.startswith("val_") and k != "loss"]
    wanted = [k for k in _list(_dict(m.get("task")).get("metrics")) if k in keys]
    metric = (wanted or sorted(keys, key=lambda k: not _accuracy_like(k)) or [None])[0]
    svg = plots.training_curves(histories, metric)
    rows = []
    for i, s in enumerate(steps):
        h = _dict(s.get("history"))
        epochs = max((len(v) for v in h.values() if isinstance(v, list)), default=0)
        bn = _dict(s.get("batchnorm"))
        bn_text = ""
        if bn.get("before") or bn.get("after"):
            k = next(iter(_eval_names(_dict(bn.get("after")), _dict(bn.get("before")))), None)
            if k:
                bn_text = f"{_metric(k, _dict(bn.get('before')).get(k))} → {_metric(k, _dict(bn.get('after')).get(k))}"
        wall = s.get("wall_time_s")
        rows.append(
            (
                str(int(s.get("index", i)) + 1),
                s.get("kind", ""),
                str(epochs),
                _pct(s.get("sparsity")) if "sparsity" in s else "",
                bn_text,
                f"{wall:.1f} s" if _finite(wall) else "—",
            )
        )
    body = (
        _figure(
            svg,
            "Line charts of the training and held-out loss per epoch across the steps",
            "Loss" + (f" and {_e(metric)}" if metric else "") + " per epoch of every step that trained: "
            "training solid, held-out dashed.",
        )
        if svg
        else "<p>No step trained.</p>"
    )
    return (
        '<section id="training"><h2>Steps and training</h2>'
        + body
        + table(["step", "kind", "epochs", "sparsity", "BatchNorm re-estimation (held-out)", "time"], rows, left=2)
        + "</section>"
    )


# --------------------------------------------------------------------------- the page


def render_report(manifest: dict, sensitivity: dict | None = None) -> str:
    """The report of one finished job as a self-contained HTML document (see the module docstring)."""
    m = _dict(manifest)
    sens = _dict(sensitivity) or _dict(m.get("sensitivity"))
    inputs = _dict(m.get("inputs"))
    model = _dict(inputs.get("model"))
    steps = " → ".join(str(_dict(s).get("kind", "?")) for s in _list(m.get("steps"))) or "no steps"
    meta = _dict(m.get("secateurs"))
    data = _dict(inputs.get("data"))
    subtitle = f"{_e(model.get('file', 'model'))} · {_e(steps)}" + (
        f" · {_int(data.get('train_samples'))} training and {_int(data.get('val_samples'))} held-out samples"
        + (f", {_int(data['test_samples'])} test samples" if data.get("test_samples") else "")
        if data
        else " · no dataset"
    )
    versions = _dict(m.get("versions"))
    wall = m.get("wall_time_s")
    footer = (
        f"Secateurs {_e(meta.get('version', ''))}, {_e(meta.get('created_at', ''))}; seed {_e(m.get('seed'))}; "
        + ", ".join(f"{_e(k)} {_e(v)}" for k, v in versions.items())
        + (f"; the job took {wall:.1f} s" if _finite(wall) else "")
        + "."
    )
    body = (
        _verdict(m) + _before_after(m) + _budget(m) + (_sensitivity(sens) if sens else "") + _layers(m) + _training(m)
    )
    return page(title=f"Secateurs report: {model.get('file', 'model')}", subtitle=subtitle, body=body, footer=footer)

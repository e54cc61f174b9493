"""Render the tables of docs/BENCHMARKS.md from bench/results/*.json (full runs only, never *.quick.json).

The document is hand-written around marker pairs ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``; `render()`
replaces what is between each pair with the table built from the results, and leaves everything else alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.budget_seeds import tables as budget_seeds_tables
from bench.common import RESULTS_DIR, ROOT
from bench.overhead_floor import tables as overhead_floor_tables
from bench.overhead_large import tables as overhead_large_tables
from bench.report_budget import RENDERERS as BUDGET_RENDERERS
from bench.report_format import _md, _run_line, _spread, _x
from bench.structured_removal import tables as structured_removal_tables

DOC = ROOT / "docs" / "BENCHMARKS.md"


def _load(name: str, quick: bool = False) -> dict | None:
    path = RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")
    return json.loads(path.read_text()) if path.exists() else None


def overhead_tables(d: dict) -> str:
    cfg = d["config"]
    parts = [
        _run_line(d),
        "",
        f"{cfg['repeats']} interleaved repetitions × {cfg['epochs']} epochs, batch 128, target sparsity "
        f"{cfg['target_sparsity']}; every cell is the median over repetitions of the per-repetition value "
        "(range in brackets).",
    ]
    for model, m in d["models"].items():
        r = m["ratios"]
        rows = []
        order = sorted(r["overhead"], key=lambda k: (k.startswith("tfmot"), k != "secateurs:default", k))
        for key in order:
            ov = r["overhead"][key]
            side, variant = key.split(":", 1)
            if side == "secateurs":
                plain = m["arms"][f"secateurs:plain:{variant}"]
                prune = m["arms"][f"secateurs:prune:{variant}"]
                rows.append(
                    [
                        f"Secateurs (Keras 3, {variant})",
                        _spread(plain["fit_s"]),
                        _spread(prune["fit_s"]),
                        f"**{_x(ov['median'])}**",
                        _x(r["overhead_cpu"][key]["median"]),
                        _spread(prune["job_s"]),
                        _x(r["end_to_end_vs_tfmot"][key]["median"]),
                        f"{prune['accuracy']['median']:.4f}",
                        f"{prune['sparsity']:.3f}",
                    ]
                )
            else:
                plain, prune = m["arms"]["tfmot:plain"], m["arms"][f"tfmot:prune:{variant}"]
                e2e = (
                    "1.00× (reference)"
                    if variant == "f100"
                    else _x((prune["job_s"]["median"]) / m["arms"]["tfmot:prune:f100"]["job_s"]["median"])
                )
                rows.append(
                    [
                        f"tfmot (tf_keras, frequency {variant[1:]})",
                        _spread(plain["fit_s"]),
                        _spread(prune["fit_s"]),
                        f"**{_x(ov['median'])}**",
                        _x(r["overhead_cpu"][key]["median"]),
                        _spread(prune["job_s"]),
                        e2e,
                        f"{prune['accuracy']['median']:.4f}",
                        f"{prune['sparsity']:.3f}",
                    ]
                )
        parts += [
            "",
            f"**{model}** (pretrained held-out accuracy {m['pretrained_accuracy']:.4f})",
            "",
            _md(
                rows,
                [
                    "side",
                    "plain fit s",
                    "pruning fit s",
                    "overhead (wall)",
                    "overhead (CPU)",
                    "pruning job s (load → saved)",
                    "job vs tfmot",
                    "held-out acc.",
                    "sparsity",
                ],
            ),
        ]
        k3 = r["plain_fit_vs_tf_keras"]
        parts += [
            "",
            "Plain `fit`, Keras 3 / tf_keras (same epochs): "
            + ", ".join(f"{k.split(':', 1)[1]} {_x(v['median'])}" for k, v in k3.items())
            + ".",
        ]
    return "\n".join(parts)


def accuracy_tables(d: dict) -> str:
    cfg = d["config"]
    parts = [
        _run_line(d),
        "",
        f"{cfg['epochs']} epochs of pruning fine-tune from the same pretrained weights, batch 128, Adam 1e-3; "
        f"median held-out accuracy over seeds {list(cfg['seeds'])}; the kernel sparsity actually reached is "
        "in brackets. **Bold**: the best tfmot arm at that point.",
    ]
    for model, m in d["models"].items():
        labels = sorted(m["rows"][0]["arms"], key=lambda a: (a.startswith("tfmot"), a))
        rows = []
        for row in m["rows"]:
            cells = [f"{row['target']:.0%}"]
            for label in labels:
                a = row["arms"][label]
                cell = f"{a['accuracy']['median']:.4f} ({a['sparsity']:.3f})"
                cells.append(f"**{cell}**" if label == row["tfmot_best"] else cell)
            best = row["arms"][row["tfmot_best"]]["accuracy"]["values"]
            for lab in row["margin_vs_tfmot_best"]:
                paired = [100 * (a - b) for a, b in zip(row["arms"][lab]["accuracy"]["values"], best)]
                cells.append(f"{100 * row['margin_vs_tfmot_best'][lab]:+.2f} ({min(paired):+.2f}…{max(paired):+.2f})")
            rows.append(cells)
        margins = [f"Δ {lab} vs best tfmot, points (per-seed range)" for lab in m["rows"][0]["margin_vs_tfmot_best"]]
        parts += [
            "",
            f"**{model}** (pretrained held-out accuracy {m['pretrained_accuracy']:.4f})",
            "",
            _md(rows, ["target", *labels, *margins]),
        ]
    return "\n".join(parts)


def _phases(phases) -> str:
    return " + ".join(f"{e} epoch{'s' if e != 1 else ''} at Adam {lr:g}" for e, lr in phases)


def structured_tables(d: dict) -> str:
    cfg, pre = d["config"], d["pretrained"]
    parts = [
        _run_line(d),
        "",
        f"resnet_bn width {cfg['width']} ({pre['params']:,} parameters), trained "
        f"{_phases(cfg['pretrain'])} (held-out accuracy {pre['accuracy']:.4f}); `structured_prune` criterion "
        f"{cfg['criterion']}, scope {cfg['scope']}, round_to {cfg['round_to']}; fine-tune "
        f"{_phases(cfg['finetune'])}. Latency: median of "
        f"{cfg['latency_rounds']} alternating rounds (each the median of {cfg['latency_runs']} compiled calls "
        "after warm-up) of `metrics.latency`; speedup = per-round before/after ratio, median (range).",
    ]
    rows = []
    for r in d["rows"]:
        b, a, lat = r["before"], r["after"], r["latency"]
        ref = r.get("baseline_finetuned_accuracy")
        setting = f"{r['criterion']}, {r['scope']}"
        if [list(p) for p in r["finetune"]] != [list(p) for p in cfg["finetune"]]:
            setting += f", fine-tune {_phases(r['finetune'])}"
        rows.append(
            [
                r["keep_ratio"],
                setting,
                f"{b['params']:,} → {a['params']:,}",
                f"{b['macs'] / 1e6:.2f} → {a['macs'] / 1e6:.2f} M",
                f"{b['file']['bytes'] / 1024:.0f} → {a['file']['bytes'] / 1024:.0f} KiB",
                f"{lat['batch_1']['before_ms']['median']:.2f} → {lat['batch_1']['after_ms']['median']:.2f} "
                f"(**{_spread(lat['batch_1']['speedup'])}×**)",
                f"{lat['batch_32']['before_ms']['median']:.2f} → {lat['batch_32']['after_ms']['median']:.2f} "
                f"(**{_spread(lat['batch_32']['speedup'])}×**)",
                f"{b['accuracy']:.4f} → {a['accuracy_before_finetune']:.4f} → {a['accuracy']:.4f}",
                f"{-r['accuracy_drop_points']:+.2f}"
                + (f" ({100 * (a['accuracy'] - ref):+.2f} vs {ref:.4f})" if ref is not None else ""),
            ]
        )
    parts += [
        "",
        _md(
            rows,
            [
                "keep",
                "criterion, scope",
                "parameters",
                "MACs / sample",
                "file (.keras)",
                "latency b=1 ms (speedup)",
                "latency b=32 ms (speedup)",
                "accuracy: before → pruned → fine-tuned",
                "Δ points (vs the unpruned model fine-tuned as long)",
            ],
        ),
    ]
    return "\n".join(parts)


def _variant(v: dict) -> str:
    """How a service variant's server differs: the revision it ran (a git worktree) and settings it was given."""
    parts = [f"`{v['revision']}` ({v['commit'][:7]})"] if "revision" in v else []
    parts += [f"`{k.removeprefix('SECATEURS_')}={value}`" for k, value in v.get("settings", {}).items()]
    return ", ".join(parts) or "—"


def service_tables(d: dict) -> str:
    cfg = d["config"]
    s = d["dispatch"]["summary"]
    parts = [
        _run_line(d),
        "",
        f"{cfg['dispatch_jobs']} sequential jobs (tutorial CNN, prune to 80 % over {cfg['job_epochs']} epochs "
        "on 8,000 digits, evaluation with latency, export .keras) on idle workers; medians (range):",
        "",
        _md(
            [
                ["submit → running (client, long-poll)", _spread(s["submit_to_running_client_s"])],
                ["created → started (server timestamps)", _spread(s["created_to_started_server_s"])],
                ["upload (POST, model + 31 MB .npz)", _spread(s["upload_s"])],
                ["job wall time (created → finished)", _spread(s["created_to_finished_server_s"])],
                ["training (the manifest's step wall times)", _spread(s["training_s"])],
                ["**overhead beyond training**", f"**{_spread(s['overhead_beyond_training_s'])}**"],
                [
                    "… of which `compress` minus training (load, 2 evaluations, latency, export)",
                    _spread(s["compress_minus_training_s"]),
                ],
                ["… of which job process start, TensorFlow import, storing results", _spread(s["process_and_store_s"])],
            ],
            ["seconds", "median (range)"],
        ),
    ]
    sl = d["status_load"]["summary"]
    patched = any("patches" in v for v in sl.values())  # results measured with bench/patches (since removed)
    rows = []
    for name in [n for n in cfg["variants"] if n in sl]:
        v = sl[name]
        p, c, sat = v["paced"], v["paced_jobs_paused"], v["saturating"]
        rows.append(
            [
                name,
                (", ".join(v.get("patches", ())) or "—") if patched else _variant(v),
                f"{p['p50_ms']['median']:.1f}",
                f"{p['p90_ms']['median']:.1f}",
                f"**{p['p99_ms']['median']:.1f}** ({p['p99_ms']['min']:.1f}–{p['p99_ms']['max']:.1f})",
                f"{c['p99_ms']['median']:.1f}",
                f"{sat['throughput_rps']['median']:.0f}",
                f"{sat['p99_ms']['median']:.0f}",
                p["errors"] + sat["errors"],
                f"{v['training_steps_per_s']['median']:.1f}" if "training_steps_per_s" in v else "—",
            ]
        )
    parts += [
        "",
        f"Status under load: {cfg['clients']} clients polling `GET /v1/jobs/{{id}}` once per second each "
        f"({cfg['paced_seconds']} s) while two jobs train, then back to back ({cfg['saturate_seconds']} s); "
        f"control: paced again with the two job processes paused. {cfg['rounds']} rounds per variant, "
        "interleaved, a fresh server each; medians over rounds (range).",
        "",
        _md(
            rows,
            [
                "server",
                "patches" if patched else "revision, settings",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99 ms, jobs paused",
                "saturating req/s",
                "saturating p99 ms",
                "errors",
                "training steps/s (2 jobs)",
            ],
        ),
    ]
    u = d["upload_memory"]
    parts += [
        "",
        f"Upload of {u['upload_bytes'] / 2**20:.0f} MiB (one `.npz`) in {u['upload_s']:.2f} s "
        f"({u['upload_mb_per_s']:.0f} MiB/s): API process RSS {u['rss_baseline_mib']:.1f} MiB before, at most "
        f"{u['rss_max_during_mib']:.1f} MiB during (**+{u['rss_growth_during_mib']:.1f} MiB**), kernel peak "
        f"(VmHWM) +{u['peak_rss_vmhwm_growth_mib']:.1f} MiB, {u['rss_2s_after_mib']:.1f} MiB two seconds later.",
    ]
    return "\n".join(parts)


def _zoo_cell(r: dict | None) -> str:
    if not r:
        return "—"
    if "error" in r:
        return f"failed: {r['error'][:80]}"
    if "skipped" in r:
        return "skipped (no re-estimation)"
    if "sparsity" not in r:
        return f"{r['accuracy']:.4f}"
    return f"{r['accuracy']:.4f} ({r['sparsity']:.3f}; {r['layers_over_98']})"


def zoo_tables(d: dict) -> str:
    cfg = d["config"]
    parts = [
        _run_line(d),
        "",
        f"Fine-tune {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, batch {cfg['batch_size']}, "
        f"Adam 1e-3, seed 0; tfmot frequency {cfg['tfmot_frequency']}. Cells: held-out accuracy (sparsity of "
        "the prunable kernels; layers over 98 % sparse). Wall time: seconds from load to the scored model "
        "(the engine's includes its evaluations and export).",
    ]
    rows = []
    for name, m in d["models"].items():
        pre = m["pretrained"]
        wrapping = next((r["arms"]["tfmot"].get("wrapping") for r in m["rows"] if "tfmot" in r["arms"]), None) or {}
        tf_note = wrapping.get("mode", "—")
        if wrapping.get("refused_classes"):
            tf_note += " (refused: " + ", ".join(wrapping["refused_classes"]) + ")"
        rows.append(
            [
                name,
                f"{pre['params']:,}",
                f"{pre['macs'] / 1e6:.1f} M",
                pre["layers"],
                f"{m['n_train']:,} / {m['n_test']:,}",
                f"{m['pretrain_epochs']} ({pre['train_s']:.0f} s)",
                f"{pre['accuracy']:.4f}"
                + (f" ({pre['accuracy_before_settling']:.4f})" if "accuracy_before_settling" in pre else ""),
                tf_note,
            ]
        )
    parts += [
        "",
        _md(
            rows,
            [
                "model",
                "parameters",
                "MACs / sample",
                "layers",
                "digits train / held out",
                "pretraining epochs (fit s)",
                "pretrained acc. (before settling BN)",
                "tfmot wraps",
            ],
        ),
    ]
    for name, m in d["models"].items():
        ref = m["reference"]
        plain, bn = ref.get("plain", {}), ref.get("plain+bn", {})
        stand_in = " (a stand-in, not the engine's)" if bn.get("stand_in") else ""
        parts += [
            "",
            f"**{name}**: plain fine-tune (the reference) {_zoo_cell(plain)}; with BatchNorm re-estimation"
            f"{stand_in} {_zoo_cell(bn)}",
            "",
        ]
        rows = []
        for r in m["rows"]:
            point = (
                f"{r['value']:.0%} unstructured" if r["kind"] == "unstructured" else f"keep {r['value']:g} structured"
            )
            a = r["arms"]
            ours = a.get("secateurs", {})
            macs = f"{ours['macs_ratio']:.2f}×" if "macs_ratio" in ours else "—"
            walls = " / ".join(
                f"{a[k]['wall_s']:.0f}" if "wall_s" in a.get(k, {}) else "—" for k in ("secateurs", "tfmot")
            )
            claimed = (
                f"{ours['train_accuracy']:.4f} / {ours['summary']['win']}"
                if "train_accuracy" in ours and "summary" in ours
                else "—"
            )
            rows.append(
                [point, _zoo_cell(ours), _zoo_cell(a.get("tfmot")), _zoo_cell(a.get("tfmot+bn")), macs, claimed, walls]
            )
        parts.append(
            _md(
                rows,
                [
                    "point",
                    "Secateurs defaults",
                    "tfmot per layer",
                    "tfmot + re-estimation",
                    "MACs (Secateurs)",
                    "Secateurs: last-epoch train acc. / claimed win",
                    "wall s (Secateurs / tfmot)",
                ],
            )
        )
    rows = [
        [name, g["goal"], g["value"], {True: "met", False: "**missed**", None: "not judged"}[g["met"]]]
        for name, m in d["models"].items()
        for g in m["goals"]
    ]
    parts += ["", "Goals of issue 9:", "", _md(rows, ["model", "goal", "value", "verdict"])]
    return "\n".join(parts)


def zoo_setup_tables(d: dict) -> str:
    """Part 5b: each arm against plain fine-tuning + re-estimation (the goals' reference), in points."""
    cfg = d["config"]
    parts = [
        _run_line(d),
        "",
        f"Fine-tune {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam 1e-3, seed 0. "
        "Cells: held-out accuracy, points against plain fine-tune + re-estimation, MACs ratio; the engine's "
        "claimed win.",
    ]
    rows = []
    for name, m in d["models"].items():
        pre, plain = m["pretrained"], m["plain"]
        ref = plain.get("reestimated", {}).get("accuracy")
        rows.append(
            [
                name,
                f"{m['n_train']:,} / {m['n_test']:,}",
                m["pretrain_epochs"],
                f"{pre['accuracy']:.4f}",
                "plain fine-tune",
                f"{plain['accuracy']:.4f}" if "accuracy" in plain else "failed",
                "—",
                "—",
            ]
        )
        rows.append(
            [name, "", "", "", "plain + re-estimation (reference)", f"{ref:.4f}" if ref is not None else "—", "—", "—"]
        )
        for arm, r in m["arms"].items():
            if "accuracy" not in r:
                rows.append([name, "", "", "", arm, f"failed: {r.get('error', '')[:60]}", "—", "—"])
                continue
            delta = f"{100 * (r['accuracy'] - ref):+.1f}" if ref is not None else "—"
            removal = next((s["removal"] for s in r.get("steps", []) if s.get("removal")), None)
            label = f"{arm} → {removal.replace('_', '-')}" if removal and "(default)" in arm else arm
            rows.append(
                [
                    name,
                    "",
                    "",
                    "",
                    label,
                    f"{r['accuracy']:.4f} ({delta})",
                    f"{r['macs_ratio']:.2f}×",
                    r.get("summary", {}).get("win", "—"),
                ]
            )
    parts += [
        "",
        _md(
            rows,
            [
                "model",
                "digits train / held out",
                "pretraining epochs",
                "pretrained acc.",
                "arm",
                "held-out acc. (points vs reference)",
                "MACs",
                "claimed win",
            ],
        ),
    ]
    own = [(name, m["run"]) for name, m in d["models"].items() if m.get("run", d)["date"] != d["date"]]
    if own:  # models kept from another run (`--models`): each says which
        parts += ["", *(f"- {name}: " + _run_line(r).strip("_") for name, r in own)]
    return "\n".join(parts)


RENDERERS = {
    "overhead": overhead_tables,
    "accuracy": accuracy_tables,
    "structured": structured_tables,
    "structured_removal": structured_removal_tables,
    "service": service_tables,
    "zoo": zoo_tables,
    "zoo_setup": zoo_setup_tables,
    "overhead_large": overhead_large_tables,
    "overhead_floor": overhead_floor_tables,
    **BUDGET_RENDERERS,
    "budget_seeds": budget_seeds_tables,
}


def render(doc: Path = DOC, quick: bool = False) -> Path:
    """Fill the marker blocks of `doc` (quick=True reads the smoke-run results: for checking the renderer)."""
    text = doc.read_text()
    for name, fn in RENDERERS.items():
        data = _load(name, quick)
        if data is None:
            continue
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(.*?)(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            continue
        text = pattern.sub(lambda m, fn=fn, data=data: m.group(1) + fn(data) + "\n" + m.group(3), text)
    doc.write_text(text)
    return doc


if __name__ == "__main__":
    print(render())

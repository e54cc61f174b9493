"""Part 6's tables (issue 12's budget search): budget, budget_zoo, budget_tfmot, budget_timing, budget_matched and
budget_converged (6f: 6e's tables on converged input models)."""

from __future__ import annotations

import json

from bench.report_format import _margin, _md, _run_line, _spread


def _split_line(d: dict) -> list[str]:
    """How the run split the held-out digits (`bench.budget.SPLIT`): the budget job chooses on val, the results are
    judged on test. (Results from before the split scored on all the digits the job chose on; they are in the git
    history, not rendered.)"""
    return ["", f"Held-out data: {d['config']['split']}."]


def budget_tables(d: dict) -> str:
    """Part 6: the budget step per model and seed: sparsity reached within the budget, drop, trials, time."""
    cfg = d["config"]
    parts = [_run_line(d), "", f"Budget step: `{json.dumps(cfg['step'], sort_keys=True)}`; batch {cfg['batch_size']}."]
    parts += _split_line(d)
    rows = []
    for name, m in d["models"].items():
        for r in m["runs"]:
            b = r["budget"]
            rows.append(
                [
                    name,
                    r["seed"],
                    f"{m['pretrained_accuracy']:.4f}",
                    f"{r['accuracy']:.4f}",
                    f"{r['drop_points']:.2f} ({r['val_drop_points']:.2f})",
                    f"{r['sparsity']['overall']:.3f}",
                    f"{len(b['trials'])}",
                    "yes" if b["met"] else "**no**",
                    f"{r['gzip_bytes']['before']:,} → {r['gzip_bytes']['after']:,}",
                    f"{r['wall_time_s']:.0f}",
                ]
            )
    parts += [
        "",
        _md(
            rows,
            [
                "model",
                "seed",
                "input acc. (test)",
                "chosen acc. (test)",
                "drop in points: test (val, the job's own)",
                "sparsity",
                "trials",
                "budget met",
                "gzip bytes",
                "job s",
            ],
        ),
    ]
    goals = [
        [
            n,
            f"≥ {m['goal_sparsity']:.0%} within the budget on test",
            f"median {m['sparsity_median']:.3f}",
            "met" if m["goal_met"] else "**missed**",
        ]
        for n, m in d["models"].items()
    ]
    parts += ["", _md(goals, ["model", "goal (issue 12)", "value", "verdict"])]
    return "\n".join(parts)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not judged"}[met]


def _reference(r: dict) -> str:
    """The unpruned input trained as long as the returned model, on test: plain / BatchNorm re-estimated."""
    ref = r.get("reference")
    if not ref:
        return "—"
    plain, bn = (x.get("split_accuracy", {}).get("test") for x in (ref, ref.get("reestimated", {})))
    return f"{r['chain_epochs']} epochs: {plain:.4f} / " + (f"{bn:.4f}" if bn is not None else "—")


def budget_zoo_tables(d: dict) -> str:
    """Parts 6b and 6h: MobileNetV2 with a structured or a magnitude budget: every trial of every run, then the goal
    (6b only)."""
    cfg = d["config"]
    pre = d["pretrained"]
    structured = cfg["step"].get("method") == "structured"
    source = d["runs"][0]["input_accuracy"]  # the same input model in every run
    held = f"accuracy {source['val']:.4f} on val, {source['test']:.4f} on test"
    parts = [
        _run_line(d),
        "",
        f"Budget step: `{json.dumps(cfg['step'], sort_keys=True)}`; batch {cfg['batch_size']}; "
        f"{len(cfg['seeds'])} seed(s). Input model: {cfg['model']} trained {cfg['data']['pretrain_epochs']} epochs "
        f"on {cfg['data']['n_train']:,} digits, {held}, {pre['macs']:,} MACs.",
        *_split_line(d),
    ]
    rows = []
    for r in d["runs"]:
        b = r["budget"]
        for i, t in enumerate(b["trials"]):
            rows.append(
                [
                    r["seed"],
                    i,
                    f"{t['level']:.4f}",
                    "input" if t.get("start") is None else t["start"],
                    f"{t['metric']:.4f}",
                    f"{100 * t['drop']:+.2f}",
                    f"{t['macs_ratio']:.3f}×",
                    _trial_size(t, structured),
                    {"fine_tuned": "fine-tuned", "pruned": "pruned"}.get(t.get("kept"), "—"),
                    "yes" if t["within_budget"] else "no",
                    "**chosen**" if i == b["chosen"] else "",
                ]
            )
    parts += [
        "",
        _md(
            rows,
            [
                "seed",
                "trial",
                "keep ratio" if structured else "sparsity",
                "from",
                "val acc. (the job's)",
                "drop (points)",
                "MACs" if structured else "MACs (zero-skipping)",
                "params" if structured else "non-zero",
                "kept",
                "within",
                "",
            ],
        ),
    ]
    runs = [
        [
            r["seed"],
            f"{r['budget']['baseline']:.4f}",
            f"{r['input_accuracy']['test']:.4f}",
            f"{r['accuracy']:.4f}",
            f"{r['drop_points']:.2f}",
            _run_macs(r, structured),
            f"{r['params_before']:,} → {r['params_after']:,}"
            if structured
            else f"{r['nonzero_before']:,} → {r['nonzero_after']:,}",
            "yes" if r["budget"]["met"] else "**no**",
            r["epochs_spent"],
            _reference(r),
            f"{r['sensitivity_s']:.0f}" if r.get("sensitivity_s") is not None else "—",
            f"{r['wall_time_s']:.0f}",
        ]
        for r in d["runs"]
    ]
    parts += [
        "",
        _md(
            runs,
            [
                "seed",
                "input acc. (job, val)",
                "input acc. (test)",
                "returned acc. (bench, test)",
                "drop (points, test)",
                "MACs" if structured else "MACs (zero-skipping)",
                "params" if structured else "non-zero",
                "budget met",
                "epochs (all trials)",
                "unpruned, same epochs as the returned model: plain / BN re-estimated",
                "sensitivity s",
                "job s",
            ],
        ),
    ]
    if not structured:
        return "\n".join(parts)
    ratios = ", ".join(f"{r['macs_ratio']:.3f}×" for r in d["runs"])
    goal = [["MACs ≤ 0.6× within 2 points (structured, on test)", ratios, _verdict(d["goal_met"])]]
    parts += ["", _md(goal, ["goal (issue 12)", "value", "verdict"])]
    return "\n".join(parts)


def _run_macs(r: dict, structured: bool) -> str:
    """The returned model's MACs against the input's: those of the rebuilt model (structured), or the chosen trial's
    zero-skipping MACs (magnitude: the dense count does not change)."""
    if structured:
        return f"{r['macs_before']:,} → {r['macs_after']:,} ({r['macs_ratio']:.3f}×)"
    t = r["budget"]["trials"][r["budget"]["chosen"]]
    return f"{r['macs_before']:,} → {t['macs']:,} ({t['macs'] / r['macs_before']:.3f}×)"


def _trial_size(t: dict, structured: bool) -> str:
    """A trial's parameters (structured: the rebuilt model's total) or non-zero parameters (magnitude)."""
    value = t.get("params") if structured else t.get("nonzero_params")
    return f"{value:,}" if value is not None else "—"


def budget_tfmot_tables(d: dict) -> str:
    """Part 6c: the budget's model against tfmot's hand-picked settings at the same total epochs."""
    cfg = d["config"]
    parts = [
        _run_line(d),
        "",
        f"Budget step: `{json.dumps(cfg['step'], sort_keys=True)}`; tfmot PolynomialDecay per layer, 0 → s over all "
        f"steps, frequency {' and '.join(str(f) for f in cfg['frequencies'])}, for the budget job's total epochs; "
        f"batch {cfg['batch_size']}; medians over seeds {', '.join(str(s) for s in cfg['seeds'])}. Size: non-zero "
        "weights and gzip -9 of the weights as one .npz (the same for both sides).",
        *_split_line(d),
    ]
    verdicts = []
    for name, m in d["models"].items():
        base, base_val, v = m["pretrained_accuracy"], m["pretrained_val_accuracy"], m["verdict"]
        limit, limit_val = base - cfg["step"]["max_drop"], base_val - cfg["step"]["max_drop"]
        rows = []
        b = m["budget"]
        epochs = "/".join(str(e) for e in m["total_epochs"])
        rows.append(
            [
                "**budget** (Secateurs)",
                epochs,
                f"{b['sparsity']:.3f}",
                f"{b['val_accuracy']:.4f}",
                f"{b['accuracy']:.4f}",
                f"{100 * (b['accuracy'] - base):+.2f}",
                f"{b['nonzero_weights']:,.0f}",
                f"{b['weights_gzip_bytes']:,.0f}",
                _within(b, limit, limit_val),
            ]
        )
        for label, s in sorted(m["tfmot"].items(), key=lambda kv: (kv[1]["frequency"], kv[1]["target"])):
            rows.append(
                [
                    label + (" ← best within" if label == v.get("tfmot_best") else ""),
                    epochs,
                    f"{s['sparsity']:.3f}",
                    f"{s['val_accuracy']:.4f}",
                    f"{s['accuracy']:.4f}",
                    f"{100 * (s['accuracy'] - base):+.2f}",
                    f"{s['nonzero_weights']:,.0f}",
                    f"{s['weights_gzip_bytes']:,.0f}",
                    _within(s, limit, limit_val),
                ]
            )
        parts += [
            "",
            f"**{name}** (input model: val {base_val:.4f}, test {base:.4f}; budget: ≥ {limit_val:.4f} on val, "
            f"≥ {limit:.4f} on test)",
            "",
            _md(
                rows,
                [
                    "arm",
                    "epochs",
                    "sparsity",
                    "val acc.",
                    "test acc.",
                    "vs input (test, points)",
                    "non-zero",
                    "gzip bytes",
                    "within: val / test",
                ],
            ),
        ]
        if v.get("tfmot_best") is None:
            value = "no tfmot setting within the budget"
        else:
            value = (
                f"{v['size_ratio_nonzero']:.2f}× the non-zero weights, {v['size_ratio_gzip']:.2f}× the gzip bytes of "
                f"{v['tfmot_best']}, accuracy {_margin(v)} points"
            )
        dominated = v.get("dominated_by")
        if dominated is None:  # results written before the field existed
            from bench.budget_tfmot import dominated_by

            dominated = dominated_by(b, m["tfmot"])
        verdicts.append(
            [
                name,
                value,
                _verdict(v["met"]),
                "yes" if v.get("met_within_budget") else "no",
                ", ".join(dominated) if dominated else "none",
            ]
        )
    parts += [
        "",
        _md(
            verdicts,
            [
                "model",
                "budget vs the smallest tfmot setting within 1 point on val (test accuracy, points [95 % interval "
                "over the test digits])",
                "smaller at equal or better accuracy (test)",
                "smaller, both within 1 point (test)",
                "tfmot settings as small and as accurate (test)",
            ],
        ),
    ]
    return "\n".join(parts)


def _within(x: dict, limit: float, limit_val: float) -> str:
    """Whether an arm's median stays within the budget: on val / on test."""
    val = "yes" if x["val_accuracy"] >= limit_val - 1e-12 else "no"
    return f"{val} / {'yes' if x['accuracy'] >= limit - 1e-12 else 'no'}"


def budget_timing_tables(d: dict) -> str:
    """Part 6d: preflight and sensitivity sweep times of MobileNetV2, with the load they ran under."""
    p, s = d["preflight"], d["sensitivity"]
    load = d["load"]
    status = (
        "quiet machine"
        if d["quiet"]
        else f"**pending a quiet run**: load average {d['load_at_start'][0]} at the start, up to {load['load1_max']} "
        f"on {load['cores']} cores (the numbers below are real, but loaded)"
    )
    parts = [_run_line(d), "", f"Status: {status}."]
    pre_load = lambda runs: ", ".join(f"{r['load1']:.1f}" for r in runs)  # noqa: E731
    inner = lambda runs: "/".join(f"{r['inner_s']:.1f}" for r in runs)  # noqa: E731
    rows = [
        [
            "preflight, `secateurs preflight MODEL --json` (new process)",
            f"{_spread(p['cli']['wall_s'])} s (loading and table: {inner(p['cli']['runs'])} s)",
            pre_load(p["cli"]["runs"]),
            "< 10 s",
            _verdict(d["goals_met"]["preflight_s"]),
        ],
        [
            "preflight, the service's bounded child (`run_isolated`)",
            f"{_spread(p['isolated']['wall_s'])} s (loading and table: {inner(p['isolated']['runs'])} s)",
            pre_load(p["isolated"]["runs"]),
            "",
            "",
        ],
        [
            f"sensitivity step, {s['units']} layers × {len(s['levels'] or [])} levels",
            f"{s['step_wall_time_s']:.0f} s (job {s['wall_time_s']:.0f} s; per layer median "
            f"{s['per_layer_s']['median']:.2f} s, max {s['per_layer_s']['max']:.2f} s)",
            f"{load['load1_median']} (median of the run)",
            "< 300 s",
            _verdict(d["goals_met"]["sensitivity_s"]),
        ],
    ]
    parts += ["", _md(rows, ["what", "wall time", "1-min load", "goal", "verdict"])]
    return "\n".join(parts)


def _tie(d: dict) -> float:
    """What the matched max_drop adds to the setting's drop (results written before `tie` was recorded: inferred)."""
    if "tie" in d["config"]:
        return d["config"]["tie"]
    for m in d["models"].values():
        for st in m["settings"].values():
            if not st["tiny"]:
                return round(
                    st["max_drop"]
                    - round(m["pretrained_accuracy"] - st["tfmot_planned"][str(st["frequency"])]["accuracy"], 6),
                    7,
                )
    return 0.0


def budget_matched_tables(d: dict) -> str:
    """Parts 6e and 6f: per model and hand-picked tfmot setting, the budget given that setting's own drop."""
    cfg = d["config"]
    tie = _tie(d)
    parts = [
        _run_line(d),
        "",
        f"Input models trained {cfg['pretrain_epochs']} epochs on the training digits. "
        f"Budget step: `{json.dumps({k: v for k, v in cfg['step'].items() if k != 'max_drop'}, sort_keys=True)}` with "
        "`max_drop` set per row to the tfmot setting's "
        "drop (input model minus tfmot's median val accuracy at the budget's "
        f"planned {cfg['planned_epochs']} "
        + (f"epochs, plus {tie:g} so that a trial exactly as accurate counts as within; " if tie else "epochs; ")
        + f"{cfg['tiny']:g} where tfmot is not below the input model, marked ‡); tfmot PolynomialDecay per "
        f"layer at the better of frequencies {' and '.join(str(f) for f in cfg['frequencies'])}, for the epochs each "
        f"budget job spent; batch {cfg['batch_size']}; medians over seeds {', '.join(str(s) for s in cfg['seeds'])}. "
        "Size: non-zero weights and gzip -9 of the weights as one .npz.",
        *_split_line(d),
        "",
        "The setting (its frequency) is picked and its drop taken on val, where the budget job also chooses; every "
        "accuracy in the table is on test, except the column that says val.",
    ]
    rows = []
    for name, m in d["models"].items():
        base = m["pretrained_accuracy"]
        for key, st in m["settings"].items():
            b, t, v = st["budget"], st["tfmot"], st["verdict"]
            epochs = "/".join(str(e) for e in sorted(set(st["total_epochs"])))
            met = sum(bool(x) for x in st["budget_met"])
            rows.append(
                [
                    f"{name} (val {m['pretrained_val_accuracy']:.4f}, test {base:.4f})",
                    key,
                    f"{t['accuracy']:.4f} ({100 * (t['accuracy'] - base):+.2f})",
                    f"{t['val_accuracy']:.4f} / {b['val_accuracy']:.4f}",
                    f"{st['max_drop']:g}" + (" ‡" if st["tiny"] else ""),
                    epochs,
                    f"{b['sparsity']:.3f} / {t['sparsity']:.3f}",
                    f"{b['accuracy']:.4f} ({100 * (b['accuracy'] - base):+.2f})",
                    f"{met}/{len(st['budget_met'])}",
                    f"{b['nonzero_weights']:,.0f} / {t['nonzero_weights']:,.0f} ({v['size_ratio_nonzero']:.2f}×)",
                    f"{b['weights_gzip_bytes']:,.0f} / {t['weights_gzip_bytes']:,.0f} ({v['size_ratio_gzip']:.2f}×)",
                    _margin(v),
                    _verdict(v["met"]),
                ]
            )
    parts += [
        "",
        _md(
            rows,
            [
                "model (input acc.)",
                "tfmot setting",
                "tfmot acc. (vs input, points)",
                "val acc. tfmot / budget",
                "budget max_drop",
                "epochs",
                "sparsity budget / tfmot",
                "budget acc. (vs input)",
                "budget met (seeds)",
                "non-zero budget / tfmot",
                "gzip bytes budget / tfmot",
                "acc. budget − tfmot, points [95 % interval over the test digits]",
                "smaller at equal or better accuracy",
            ],
        ),
    ]
    if d.get("finetune"):
        parts += ["", _finetune_table(d["finetune"])]
    g = d.get("goal", {})
    if g:
        parts += [
            "",
            f"Pairs met: {g['met']} of {g['pairs']}"
            + (f" ({', '.join(g['met_pairs'])})" if g["met_pairs"] else "")
            + f"; smaller while both stay within the setting's drop: {g['smaller_within']} of {g['pairs']}."
            + _resolved_line(d),
        ]
    return "\n".join(parts)


def _resolved_line(d: dict) -> str:
    """How many pairs' accuracy margins the test digits resolve: their 95 % interval lies wholly above or below 0
    (an interval that touches 0 does not). Empty for runs that recorded no interval."""
    cis = [st["verdict"].get("accuracy_margin_ci95") for m in d["models"].values() for st in m["settings"].values()]
    if not cis or None in cis:
        return ""
    better, worse = sum(lo > 0 for lo, _ in cis), sum(hi < 0 for _, hi in cis)
    return (
        f" The test digits resolve the accuracy margin (its 95 % interval lies wholly above or below 0) in "
        f"{better + worse} of {len(cis)} pairs: the budget's model is the more accurate in {better}, the less "
        f"accurate in {worse}."
    )


def _finetune_table(finetune: dict) -> str:
    """Part 6f: each input model after plain fine-tuning alone, per seed: constant rate (the engine's), warmed up
    then constant (tried for the budget trials in part 6g, not adopted; absent from runs before it), warm-up +
    cosine."""
    arms = {
        "constant": "constant rate",
        "warmup": "warm-up 10 % then constant",
        "warmup_cosine": "warm-up 10 % + cosine to 0",
    }
    rows = []
    for name, m in finetune.items():
        runs = m["runs"]
        for key, what in arms.items():
            values = [r.get(key) for r in runs]
            if any(v is None for v in values):
                continue
            rows.append(
                [
                    f"{name} ({m['input']:.4f})",
                    f"{runs[0]['epochs']} epochs, Adam {runs[0]['lr']:g}, {what}",
                    " / ".join(f"{v:.4f}" for v in values),
                    " / ".join(f"{100 * (v - m['input']):+.2f}" for v in values),
                ]
            )
    return (
        "Plain fine-tuning of the input model alone (no pruning), seeds "
        + ", ".join(str(i) for i in range(len(next(iter(finetune.values()))["runs"])))
        + ":\n\n"
        + _md(rows, ["model (input acc.)", "fine-tuning", "test acc. per seed", "vs input (points)"])
    )


RENDERERS = {
    "budget": budget_tables,
    "budget_zoo": budget_zoo_tables,
    "budget_zoo_magnitude": budget_zoo_tables,
    "budget_tfmot": budget_tfmot_tables,
    "budget_timing": budget_timing_tables,
    "budget_matched": budget_matched_tables,
    "budget_converged": budget_matched_tables,
}

"""Part 5c: a job's overhead on a big model, outside training (issue 9, item 6): `python -m bench overhead_large`.

A ResNet50 (`keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)`, 23.6M parameters)
and 512 MNIST digits padded to 64x64 and repeated to RGB (80 % train, 20 % held out: the engine's default
validation_fraction). Two jobs, every spec setting but the step at the engine's defaults (export: model.keras;
latency timed; BatchNorm re-estimated):

  plain    {"kind": "finetune", "epochs": 2}
  prune    {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": 2}

Each job runs `pipeline.compress` in a fresh process (`bench/overhead_job.py`: what a CLI run pays, imports
excepted) on two code revisions: BEFORE (main before this part's changes) and this checkout, interleaved per
repetition. Recorded per run: compress() wall and CPU time, time inside `keras.Model.fit` (training), the rest
(outside training), split by the job's progress phases and by the engine functions that make it up, and the
numbers the manifest reports (held-out metrics, latency, sizes) so that before and after can be compared for
honesty. The model is not pretrained (random weights; 2 epochs on 410 digits): this part measures time, not accuracy.
Results: bench/results/overhead_large.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench.common import CACHE_DIR, PYTHON, ROOT, LoadMonitor, header, load_mnist, log, write_result

BEFORE = "547e3ca"  # main when this part was written, before the overhead changes of issue 9 item 6
JOB_SCRIPT = ROOT / "bench" / "overhead_job.py"
CACHE = CACHE_DIR / "overhead_large"
SAMPLES, EPOCHS, BATCH = 512, 2, 128
JOBS = {
    "plain": {"kind": "finetune", "epochs": EPOCHS},
    "prune": {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": EPOCHS},
}
GOAL_S = 10.0
TOTALS = ("wall_s", "cpu_s", "training_s", "outside_training_s", "outside_training_cpu_s")
FULL = {"repeats": 2}
QUICK = {"repeats": 1}


def _digits64(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = load_mnist()
    x = np.pad(x[:n], ((0, 0), (18, 18), (18, 18)))
    return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1), dtype="float32"), y[:n]


def _prepare() -> tuple[Path, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    model, data = CACHE / "resnet50.keras", CACHE / f"digits64-{SAMPLES}.npz"
    if not data.exists():
        x, y = _digits64(SAMPLES)
        np.savez(data, x_train=x, y_train=y)
    info = CACHE / "resnet50.json"
    if not model.exists() or not info.exists():
        log("overhead_large: building ResNet50")
        info.write_text(json.dumps(_script(ROOT, "prepare", str(CACHE))))
    return model, data


def _script(tree: Path, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_USE_LEGACY_KERAS", None)
    log_path = CACHE / "job.log"
    with open(log_path, "a") as err:
        done = subprocess.run([PYTHON, str(JOB_SCRIPT), *args], cwd=tree, env=env, stdout=subprocess.PIPE, stderr=err)
    if done.returncode != 0:
        raise RuntimeError(f"{JOB_SCRIPT.name} {args[0]} failed in {tree} (exit {done.returncode}); see {log_path}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def analyse(runs: list[dict]) -> dict:
    """Medians of the totals, and the median seconds per phase and per engine function (outside training)."""
    phases: dict[str, list[float]] = {}
    for r in runs:
        for p in r["phases"]:
            phases.setdefault(p["phase"], []).append(p["outside_s"])
    calls: dict[str, list[float]] = {}
    for r in runs:
        for name, c in r["calls"].items():
            calls.setdefault(name, []).append(c["s"])
    return {
        **{k: _median(runs, k) for k in TOTALS},
        "phases_outside_s": {k: statistics.median(v) for k, v in phases.items()},
        "calls_s": {k: statistics.median(v) for k, v in sorted(calls.items(), key=lambda kv: -max(kv[1]))},
        "n": len(runs),
    }


def start(name: str, command: str, quick: bool, cfg: dict, **config) -> tuple[dict, Path, Path]:
    """The cached model and data, and the results header of a part run on them (5c here, 5d)."""
    model, data = _prepare()
    config = {
        **cfg,
        "model": "keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)",
        "samples": SAMPLES,
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "jobs": JOBS,
        "goal_outside_training_s": GOAL_S,
        **config,
    }
    return header(name, command, quick, config), model, data


def run(sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    """`sides` is not used: every job is a fresh process of the tree it measures."""
    from bench.revisions import checkout

    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["repeats"] = repeats
    payload, model, data = start("overhead_large", command, quick, cfg, before=BEFORE)
    monitor = LoadMonitor()
    results: dict[str, list[dict]] = {}
    with ExitStack() as stack:
        trees = {"before": stack.enter_context(checkout(BEFORE)), "after": ROOT}
        arms = [(side, job) for job in JOBS for side in trees]
        for rep in range(cfg["repeats"]):
            k = rep % len(arms)
            for side, job in arms[k:] + arms[:k]:
                spec = {"steps": [JOBS[job]], "training": {"batch_size": BATCH}, "seed": 0}
                out = CACHE / f"out-{side}-{job}"
                monitor.sample()
                load_before = os.getloadavg()[0]
                r = _script(trees[side], "job", str(model), str(data), json.dumps(spec), str(out))
                r["load1"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                monitor.sample()
                results.setdefault(f"{side}:{job}", []).append(r)
                log(
                    f"overhead_large: {side} {job}: wall {r['wall_s']:.1f} s, training {r['training_s']:.1f} s, "
                    f"outside {r['outside_training_s']:.1f} s (load {r['load1'][0]:.2f})"
                )
            log(f"  repetition {rep + 1}/{cfg['repeats']} done")
            write_result("overhead_large", {**payload, "runs": results, "load": monitor.summary()}, quick)
    payload["runs"] = results
    payload["arms"] = {label: analyse(rs) for label, rs in results.items()}
    payload["load"] = monitor.summary()
    payload["model_params"] = json.loads((CACHE / "resnet50.json").read_text())["params"]
    path = write_result("overhead_large", payload, quick)
    log(f"overhead_large: wrote {path}")
    return payload


# --------------------------------------------------------------------------- docs/BENCHMARKS.md (bench.report)

PHASES = ("load", "before", "step", "after", "export", "report")
CALLS = {  # engine function (as bench/overhead_job.py names it) -> what it is
    "metrics.evaluate": "held-out evaluation of the model in memory",
    "metrics.latency": "latency timing (trace shared with evaluation after)",
    "batchnorm.reestimate_batchnorm": "BatchNorm re-estimation pass",
    "metrics.file_size": "gzip size (in blocks on threads after)",
    "export.save_model_file": "save to scratch for the before/after size",
    "keras.saving.save_model": "every .keras save (scratch and export)",
    "keras.saving.load_model": "loads (the upload, the exported file)",
    "export._measure_keras_file": "exported file: reload, zeros, held-out evaluation",
}


def _phase_cells(arm: dict) -> list[str]:
    p = arm["phases_outside_s"]
    step = sum(v for k, v in p.items() if k not in PHASES and k != "start")
    values = {**p, "step": step}
    return [f"{values.get(k, 0.0):.1f}" for k in PHASES]


def tables(d: dict) -> str:
    from bench.report_format import _md, _run_line

    cfg, arms = d["config"], d["arms"]
    sides = {"before": f"main {cfg['before']}", "after": f"this change ({d.get('commit')})"}
    parts = [
        _run_line(d),
        "",
        f"ResNet50 ({d.get('model_params', 0):,} parameters), {cfg['samples']} digits at 64×64 RGB, "
        f"{cfg['epochs']} epochs at batch {cfg['batch_size']}, every other setting the engine's default; each job a "
        f"fresh process; median of {cfg['repeats']} interleaved repetitions. *Outside* = compress() wall time minus "
        "the time inside `model.fit`; CPU = process CPU time of all threads (less sensitive to the other processes "
        "on the machine than wall time).",
        "",
    ]
    rows = []
    for job in cfg["jobs"]:
        for side, name in sides.items():
            a = arms.get(f"{side}:{job}")
            if a is None:
                continue
            loads = [r["load1"][0] for r in d["runs"][f"{side}:{job}"]]
            rows.append(
                [
                    job,
                    name,
                    f"{a['wall_s']:.0f}",
                    f"{a['training_s']:.0f}",
                    f"**{a['outside_training_s']:.1f}**",
                    f"{a['outside_training_cpu_s']:.1f}",
                    *_phase_cells(a),
                    f"{min(loads):.1f}–{max(loads):.1f}",
                ]
            )
    header = ["job", "code", "wall s", "training s", "outside s", "outside CPU s"]
    header += [f"{p} s" for p in PHASES] + ["load at start"]
    parts += [_md(rows, header), ""]
    rows = []
    for call, what in CALLS.items():
        cells = []
        for job in cfg["jobs"]:
            for side in sides:
                a = arms.get(f"{side}:{job}")
                cells.append(f"{a['calls_s'].get(call, 0.0):.1f}" if a else "")
        rows.append([f"`{call}`", what, *cells])
    header = ["engine function", "what", *(f"{job}, {side}" for job in cfg["jobs"] for side in sides)]
    parts += ["Seconds inside the engine functions that make up the overhead (inclusive, summed per job):", ""]
    parts += [_md(rows, header), ""]
    rows = []
    for job in cfg["jobs"]:
        for side, name in sides.items():
            runs = d["runs"].get(f"{side}:{job}")
            if not runs:
                continue
            rep = runs[-1]["reported"]
            after, keras = rep["after"], rep["artifacts"].get("keras", {})
            lat = after["latency_ms"]
            rows.append(
                [
                    job,
                    name,
                    f"{rep['before']['evaluation']['accuracy']:.4f}",
                    f"{after['evaluation']['accuracy']:.4f}",
                    f"{(keras.get('evaluation') or {}).get('accuracy', float('nan')):.4f}",
                    f"{rep['before']['file']['gzip_bytes']:,}",
                    f"{after['file']['gzip_bytes']:,}",
                    f"{lat['batch_1']['median']:.1f} ({lat['batch_1']['runs']})",
                    f"{lat['batch_32']['median']:.0f} ({lat['batch_32']['runs']})",
                ]
            )
    header = ["job", "code", "acc. before", "acc. after", "model.keras acc.", "gzip before", "gzip after"]
    header += ["latency b1 ms (runs)", "latency b32 ms (runs)"]
    parts += ["What the manifests report (last repetition):", "", _md(rows, header)]
    return "\n".join(parts)

"""Part 6d: the timing goals of issue 12 on the zoo's MobileNetV2 (`python -m bench budget_timing`).

  preflight     `secateurs preflight MODEL --json` as a user runs it: a fresh process (Python start, TensorFlow
                import, loading the model as a job loads it, the table), wall time from spawn to exit, REPEATS
                times; and the service's path, `workers.preflight.run_isolated` (the bounded child process that
                answers POST /v1/preflight) with the default limits, as many times. Goal: under 10 s.
  sensitivity   one `compress` job with the single step `{"kind": "sensitivity"}` (default levels 0.3 ... 0.95,
                method magnitude, 2,000 held-out samples) on the model and its 8,000 training digits, in the
                Secateurs worker: the job's wall time, the step's, and each layer's (from its progress event to
                the next). Goal: under 5 minutes on 2 cores.

The model is part 5b's (`bench.zoo_setup`: MobileNetV2 alpha 0.35, 32x32 RGB digits), pretrained once and cached
(`bench.zoo._pretrained`). Timing needs a quiet machine: every measurement records the 1-minute load average, and
the rendered table says "pending a quiet run" when the load at the start exceeded QUIET_START or any sample
exceeded the cores + 1 (the sweep itself keeps both cores busy). `--quick` checks the part: one preflight of each
kind and two levels. Results: bench/results/budget_timing.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, LoadMonitor, header, log, summarize, write_result
from bench.harness import Sides
from bench.zoo import _pretrained
from bench.zoo_setup import MODELS

MODEL = "mobilenet_v2"
GOALS = {"preflight_s": 10.0, "sensitivity_s": 300.0}
QUIET_START = 1.0  # 1-minute load average before the part starts
FULL = {"repeats": 3, "step": {"kind": "sensitivity"}}
QUICK = {"repeats": 1, "step": {"kind": "sensitivity", "levels": [0.5, 0.9]}}
BATCH = 128
CLI = "import sys; from service.cli import main; sys.exit(main())"  # the `secateurs` console script's body


def _cli_preflight(model_file: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, "-c", CLI, "preflight", model_file, "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"secateurs preflight failed ({proc.returncode}): {proc.stderr[-800:]}")
    answer = json.loads(proc.stdout)
    return {"wall_s": wall, "inner_s": answer.get("wall_time_s"), "layers": len(answer["layers"]), "load1": load}


def _isolated_preflight(model_file: str) -> dict:
    from workers.preflight import PreflightLimits, run_isolated

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as scratch:
        t0 = time.perf_counter()
        answer = run_isolated(model_file, None, PreflightLimits(), scratch)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "inner_s": answer.get("wall_time_s"), "layers": len(answer["layers"]), "load1": load}


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["repeats"] = repeats
    data = MODELS[MODEL]
    payload = header("budget_timing", command, quick, {**cfg, "model": MODEL, "data": data, "goals": GOALS})
    monitor = LoadMonitor()
    pre = _pretrained(sides, MODEL, data, BATCH, tfmot=False)
    model_file = str(Path(pre["keras"]).resolve())
    sides.close()  # no TensorFlow worker alive while the preflights are timed
    preflight = {"cli": [], "isolated": []}
    for i in range(cfg["repeats"]):
        for kind, fn in (("cli", _cli_preflight), ("isolated", _isolated_preflight)):
            monitor.sample()
            r = fn(model_file)
            preflight[kind].append(r)
            log(f"budget_timing: preflight {kind} {i + 1}: {r['wall_s']:.2f} s (load {r['load1']:.2f})")
    monitor.sample()
    job = sides["secateurs"].call(
        "sensitivity_job", model_file=pre["keras"], data_file=pre["data"], step=cfg["step"], batch_size=BATCH
    )
    monitor.sample()
    job["load1_after"] = os.getloadavg()[0]
    per_layer = [r["s"] for r in job["per_layer"] if r["s"] is not None]
    job["per_layer_s"] = summarize(per_layer) if per_layer else None
    log(
        f"budget_timing: sensitivity: {job['units']} layers x {len(job['levels'] or [])} levels, step "
        f"{job['step_wall_time_s']:.0f} s, job {job['wall_time_s']:.0f} s, per layer median "
        f"{statistics.median(per_layer):.2f} s"
    )
    load = monitor.summary()
    payload.update(
        pretrained={k: pre[k] for k in ("keras", "accuracy", "params", "macs", "layers") if k in pre},
        preflight={k: {"runs": v, "wall_s": summarize([r["wall_s"] for r in v])} for k, v in preflight.items()},
        sensitivity=job,
        load=load,
    )
    payload["quiet"] = payload["load_at_start"][0] <= QUIET_START and load["load1_max"] <= (load["cores"] or 2) + 1
    payload["goals_met"] = {
        "preflight_s": payload["preflight"]["cli"]["wall_s"]["median"] < GOALS["preflight_s"],
        # judged only at the goal's 6 default levels (--quick measures 2)
        "sensitivity_s": job["step_wall_time_s"] < GOALS["sensitivity_s"] if "levels" not in cfg["step"] else None,
    }
    path = write_result("budget_timing", payload, quick)
    log(f"budget_timing: wrote {path} (quiet: {payload['quiet']})")
    return payload

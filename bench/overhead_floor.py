"""Part 5d: the floor under issue 9's overhead goal (`python -m bench overhead_floor`).

Issue 9, item 6 asks for at most 10 s outside training for part 5c's ResNet50 job "with the same numbers reported".
This part adds up what those numbers cost on this machine when nothing else is paid: each piece of work the job's
measurements require is timed alone, warm (no trace, no bookkeeping) in a fresh process (`bench/overhead_job.py
floor`), and multiplied by how many times a job needs it (FLOOR). In the same run, part 5c's two jobs (plain and
pruning) run on this checkout, so the floor and the jobs' time outside training are measured under the same load.

The floor leaves out what a job cannot avoid but might make cheaper: the traces (the compiled forward pass that
latency needs, the BatchNorm pass's own), the first run of a freshly loaded model, the archive inspection of the
upload, scoring (loss and metrics of the predictions) and the manifest. Two sums: at the engine's latency settings
(up to 30 runs per batch size, at least 8, 1 s budget once 8 are in) and with a single run per batch size, the least
any latency figure can take. Results: bench/results/overhead_floor.json.
"""

from __future__ import annotations

import json
import os
import statistics

from bench.common import LoadMonitor, log, write_result
from bench.overhead_large import BATCH, CACHE, JOBS, _script, start

FLOOR = {  # piece -> (times per job, what it is)
    "load": (1, "the upload, loaded by Keras (compile=False; the engine inspects the archive first)"),
    "save": (2, "a .keras save: the model before (its size) and the exported model.keras"),
    "gzip": (2, "gzip size of those two files (the engine's level 6, in blocks on threads)"),
    "evaluate": (
        4,
        "the held-out digits through the compiled forward pass: before, either side of the BatchNorm "
        "re-estimation, the exported file",
    ),
    "batchnorm": (1, "the BatchNorm re-estimation pass over the training digits (compiled)"),
    "latency": (2, "latency before and after, batch 1 and 32, at the engine's settings"),
    "reload": (1, "the exported model.keras loaded again (compile=False)"),
}
ONE_RUN = "latency_one_run"  # one call per batch size: replaces "latency" in the second sum
TRACES = {
    "forward_first_call_s": "the compiled forward pass, first call (its trace; latency needs it)",
    "batchnorm_first_call_s": "the BatchNorm pass, first call (its trace)",
    "batchnorm_eager_s": "the BatchNorm pass run eagerly (no trace)",
    "eager_evaluation_fresh_model_s": "the held-out digits through a freshly loaded model, eagerly",
    "reload_compiled_s": "the exported file loaded with compile=True (Keras builds the optimizer)",
}
FULL = {"repeats": 2}
QUICK = {"repeats": 1}


def floors(pieces: dict[str, float]) -> dict[str, float]:
    """The two sums: at the engine's latency settings, and with one latency run per batch size."""
    total = sum(count * pieces[name] for name, (count, _) in FLOOR.items())
    one_run = total - FLOOR["latency"][0] * (pieces["latency"] - pieces[ONE_RUN])
    return {"engine_settings_s": total, "one_latency_run_s": one_run}


def analyse(floor_runs: list[dict], job_runs: dict[str, list[dict]]) -> dict:
    names = [*FLOOR, ONE_RUN]
    pieces = {n: statistics.median(r["pieces"][n]["s"] for r in floor_runs) for n in names}
    traces = {n: statistics.median(r["traces"][n] for r in floor_runs) for n in TRACES}
    extra = {  # the least a job adds to the floor for what it cannot skip
        "forward_trace_s": traces["forward_first_call_s"],  # batch 1: the trace and one ~15 ms run
        "batchnorm_trace_s": traces["batchnorm_first_call_s"] - pieces["batchnorm"],
        "batchnorm_eager_extra_s": traces["batchnorm_eager_s"] - pieces["batchnorm"],
        "fresh_model_evaluation_s": traces["eager_evaluation_fresh_model_s"] - pieces["evaluate"],
    }
    # what no job skips on top of the floor: latency's compiled forward pass (its trace), the BatchNorm pass traced
    # or run eagerly (the cheaper), the freshly loaded exported model's first evaluation (eager or traced)
    unavoidable = (
        extra["forward_trace_s"]
        + min(extra["batchnorm_trace_s"], extra["batchnorm_eager_extra_s"])
        + min(extra["fresh_model_evaluation_s"], extra["forward_trace_s"])
    )
    floor = floors(pieces)
    least = {
        "engine_settings_s": floor["engine_settings_s"] + unavoidable,
        "one_latency_run_s": floor["one_latency_run_s"] + unavoidable,
        "gzip_hidden_s": floor["engine_settings_s"] + unavoidable - FLOOR["gzip"][0] * pieces["gzip"],
    }
    jobs = {
        job: {
            k: statistics.median(r[k] for r in runs)
            for k in ("wall_s", "training_s", "outside_training_s", "outside_training_cpu_s")
        }
        for job, runs in job_runs.items()
    }
    return {
        "pieces_s": pieces,
        "traces_s": traces,
        "extra_s": extra,
        "floors_s": floor,
        "least_s": least,
        "jobs": jobs,
    }


def run(sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    """`sides` is not used: the floor and every job are fresh processes of this checkout."""
    from bench.common import ROOT

    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["repeats"] = repeats
    floor = {name: count for name, (count, _) in FLOOR.items()}
    payload, model, data = start("overhead_floor", command, quick, cfg, floor=floor)
    monitor = LoadMonitor()
    floor_runs: list[dict] = []
    job_runs: dict[str, list[dict]] = {}
    for rep in range(cfg["repeats"]):
        monitor.sample()
        r = _script(ROOT, "floor", str(model), str(data))
        r["load1"] = round(os.getloadavg()[0], 2)
        floor_runs.append(r)
        log(f"overhead_floor: floor {rep + 1}: " + ", ".join(f"{k} {v['s']:.2f}" for k, v in r["pieces"].items()))
        for job, step in JOBS.items():
            spec = {"steps": [step], "training": {"batch_size": BATCH}, "seed": 0}
            monitor.sample()
            j = _script(ROOT, "job", str(model), str(data), json.dumps(spec), str(CACHE / f"floor-out-{job}"))
            j["load1"] = round(os.getloadavg()[0], 2)
            job_runs.setdefault(job, []).append(j)
            log(f"overhead_floor: {job}: outside training {j['outside_training_s']:.1f} s")
        monitor.sample()
    payload.update(floor_runs=floor_runs, job_runs=job_runs, load=monitor.summary())
    payload["analysis"] = analyse(floor_runs, job_runs)
    payload["model_params"] = json.loads((CACHE / "resnet50.json").read_text())["params"]
    path = write_result("overhead_floor", payload, quick)
    log(f"overhead_floor: wrote {path}")
    return payload


# --------------------------------------------------------------------------- docs/BENCHMARKS.md (bench.report)


def tables(d: dict) -> str:
    from bench.report_format import _md, _run_line

    cfg, a = d["config"], d["analysis"]
    pieces, floors_s = a["pieces_s"], a["floors_s"]
    parts = [
        _run_line(d),
        "",
        f"ResNet50 ({d.get('model_params', 0):,} parameters), {cfg['samples']} digits at 64×64 RGB (410 train, "
        f"102 held out). Each piece timed alone and warm, 3 times per process, median; then the median over "
        f"{cfg['repeats']} fresh processes.",
        "",
    ]
    rows = [
        [f"`{name}`", what, str(count), f"{pieces[name]:.2f}", f"{count * pieces[name]:.2f}"]
        for name, (count, what) in FLOOR.items()
    ]
    rows.append(["**floor**", "at the engine's latency settings", "", "", f"**{floors_s['engine_settings_s']:.1f}**"])
    rows.append(
        [
            f"`{ONE_RUN}`",
            "instead of `latency`: one call of batch 1 and one of batch 32",
            str(FLOOR["latency"][0]),
            f"{pieces[ONE_RUN]:.2f}",
            f"{FLOOR['latency'][0] * pieces[ONE_RUN]:.2f}",
        ]
    )
    one_run = f"**{floors_s['one_latency_run_s']:.1f}**"
    rows.append(["**floor**", "with one latency run per batch size", "", "", one_run])
    parts += [_md(rows, ["piece", "what", "per job", "s each", "s per job"]), ""]
    extra = a["extra_s"]
    rows = [
        ["trace of the compiled forward pass (its first call, batch 1)", f"{extra['forward_trace_s']:.2f}"],
        ["trace of the BatchNorm pass (first pass minus a warm one)", f"{extra['batchnorm_trace_s']:.2f}"],
        [
            "the BatchNorm pass run eagerly, with no trace, minus a warm compiled one",
            f"{extra['batchnorm_eager_extra_s']:.2f}",
        ],
        [
            "the exported model's first (eager) evaluation minus a warm compiled one",
            f"{extra['fresh_model_evaluation_s']:.2f}",
        ],
        ["the exported file loaded with compile=True instead", f"{a['traces_s']['reload_compiled_s']:.2f}"],
    ]
    least = a["least_s"]
    rows += [
        [
            "**the least a job pays**: the floor, the forward pass's trace, the cheaper BatchNorm pass (traced or "
            "eager), the exported model's first evaluation",
            f"**{least['engine_settings_s']:.1f}**",
        ],
        ["the same with one latency run per batch size", f"**{least['one_latency_run_s']:.1f}**"],
        [
            "the same at the engine's latency settings, were both gzips hidden behind other work",
            f"**{least['gzip_hidden_s']:.1f}**",
        ],
    ]
    parts += ["Not in the floor (seconds):", "", _md(rows, ["what", "s"]), ""]
    rows = []
    for job, j in a["jobs"].items():
        loads = [r["load1"] for r in d["job_runs"][job]]
        rows.append(
            [
                job,
                f"{j['wall_s']:.0f}",
                f"{j['training_s']:.0f}",
                f"**{j['outside_training_s']:.1f}**",
                f"{j['outside_training_cpu_s']:.1f}",
                f"{floors_s['engine_settings_s']:.1f}",
                f"{least['engine_settings_s']:.1f}",
                f"{cfg['goal_outside_training_s']:.0f}",
                f"{min(loads):.1f}–{max(loads):.1f}",
            ]
        )
    header = ["job (this checkout)", "wall s", "training s", "outside s", "outside CPU s", "floor s", "least s"]
    header.append("goal s")
    parts += ["Part 5c's jobs in the same run (median):", "", _md(rows, [*header, "load after"])]
    return "\n".join(parts)

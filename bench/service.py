"""Part 4: the HTTP service under load (`secateurs serve`, embedded local workers, SQLite store).

One command starts a fresh service (temporary data directory, free port, two workers) and measures:

1. submit -> running: time from POST /v1/jobs (multipart upload of a small model + MNIST .npz) until the job
   is running, seen by the client (long-poll `?wait=`) and by the server's own timestamps, with idle workers.
2. per-job overhead beyond training: the job's wall time (submitted -> succeeded) minus the training time the
   job itself reports (the manifest's step wall times), split into queue wait, job process start + load +
   evaluation/latency/export (`compress` minus training) and the rest (sandbox start, TensorFlow import,
   storing results).
3. status latency under load: while two jobs train, 100 concurrent clients poll GET /v1/jobs/{id}: *paced*
   (each client polls every second, random phase: ~100 requests/s) and *saturating* (no think time: the
   server's throughput). p50/p90/p99 of the client-side request time. Control: the paced load again with the
   job processes paused. Measured for the current tree and for variants: the server of an older revision (a git
   worktree, bench/revisions.py) or this one with an operating choice set otherwise (SECATEURS_* settings), a
   fresh server each, interleaved by round.
4. API memory while streaming a 200 MB upload: RSS of the API process (not its worker children), sampled every
   5 ms before, during and after the request, and the kernel's peak RSS (VmHWM, reset just before the upload).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from bench.common import LoadMonitor, header, load_mnist, log, percentile, summarize, write_result
from bench.harness import Sides, pretrained
from workers.testing.servers import Server

# The commit before "Service under load: ..." (6ba69ba), which made job processes nice 19, sized TensorFlow's
# threads to cores / concurrent jobs, pooled 40 SQLite connections with WAL set once, and cached the answer "no
# API key exists".
BEFORE_SERVICE_FIXES = "6ba69ba^"
FULL = {
    "dispatch_jobs": 5,
    "job_epochs": 2,
    "clients": 100,
    "paced_seconds": 20,
    "control_seconds": 10,
    "saturate_seconds": 5,
    "poll_interval": 1.0,
    "upload_mb": 200,
    "rounds": 3,
}
QUICK = {
    "dispatch_jobs": 1,
    "job_epochs": 1,
    "clients": 100,
    "paced_seconds": 5,
    "control_seconds": 3,
    "saturate_seconds": 2,
    "poll_interval": 1.0,
    "upload_mb": 200,
    "rounds": 1,
}


def variants() -> dict[str, dict]:
    """Status-load variants: label -> how its server differs from this checkout's defaults: "revision", run the
    server of that commit (a temporary git worktree), and/or "settings", SECATEURS_* variables of the server.
    Operating choices are compared as settings; the rest of the fixes (SQLite connection handling) only as the
    older revision. Without job nice: nice 0. Without TensorFlow threads per job: every job sized to all the cores,
    as TensorFlow sizes its pools by default."""
    cores = str(len(os.sched_getaffinity(0)))
    return {
        "current": {},
        "before (all four reverted)": {"revision": BEFORE_SERVICE_FIXES},
        "without job-nice": {"settings": {"SECATEURS_WORKER__JOB_NICE": "0"}},
        "without tf-threads-per-job": {"settings": {"SECATEURS_WORKER__TF_THREADS": cores}},
    }


def _autogroup_enabled() -> bool | None:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def _rss_kib(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


@contextmanager
def serve(workers: int = 2, root: Path | None = None, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`secateurs serve` (workers/testing/servers.py) in a fresh data directory on a free port, removed afterwards.
    `root`: another revision's checkout to run. The server stays in the benchmark's session (and, on Linux, its
    scheduling autogroup), beside the load-generating client, as in every measurement in docs/BENCHMARKS.md."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    server = Server(tmp / "data", workers=workers, root=root, env=env, new_session=False, log_path=tmp / "serve.log")
    try:
        with server.start(timeout=120):
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- jobs


def _spec(epochs: int, latency: bool = True) -> dict:
    return {
        "steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": epochs}],
        "training": {"batch_size": 128, "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        "evaluation": {"latency": latency},
        "export": {"formats": ["keras"]},
    }


def _submit(client, files: dict[str, Path], spec: dict):
    handles = {k: open(p, "rb") for k, p in files.items()}
    try:
        r = client.post(
            "/v1/jobs", files={k: (p.name, handles[k]) for k, p in files.items()}, data={"spec": json.dumps(spec)}
        )
    finally:
        for h in handles.values():
            h.close()
    if r.status_code != 202:
        raise RuntimeError(f"submit answered {r.status_code}: {r.text[:500]}")
    return r.json()


def _wait_status(client, job_id: str, leave: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if doc["status"] not in leave or time.monotonic() > deadline:
            return doc


def _ts(value: str | None) -> float | None:
    from datetime import datetime

    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure_dispatch(client, files, cfg: dict) -> dict:
    """Sequential small jobs on idle workers: submit -> running, and the job's overhead beyond training."""
    rows = []
    for i in range(cfg["dispatch_jobs"]):
        t0 = time.perf_counter()
        doc = _submit(client, files, _spec(cfg["job_epochs"]))
        t_submitted = time.perf_counter()
        doc = _wait_status(client, doc["id"], {"queued"}, 120)
        t_running = time.perf_counter()
        doc = _wait_status(client, doc["id"], {"queued", "running"}, 600)
        t_done = time.perf_counter()
        if doc["status"] != "succeeded":
            raise RuntimeError(f"job {doc['id']} ended {doc['status']}: {doc.get('error')}")
        m = doc["manifest"]
        training = sum(s["wall_time_s"] for s in m["steps"])
        created, started, finished = _ts(doc["created_at"]), _ts(doc["started_at"]), _ts(doc["finished_at"])
        rows.append(
            {
                "upload_s": t_submitted - t0,
                "submit_to_running_client_s": t_running - t_submitted,
                "created_to_started_server_s": started - created,
                "submit_to_succeeded_client_s": t_done - t0,
                "created_to_finished_server_s": finished - created,
                "training_s": training,
                "compress_s": m["wall_time_s"],
                "compress_minus_training_s": m["wall_time_s"] - training,
                "process_and_store_s": (finished - started) - m["wall_time_s"],
                "overhead_beyond_training_s": (finished - created) - training,
            }
        )
        log(
            f"service: job {i + 1}/{cfg['dispatch_jobs']}: submit->running {rows[-1]['submit_to_running_client_s']:.2f}"
            f" s, overhead beyond training {rows[-1]['overhead_beyond_training_s']:.2f} s of "
            f"{rows[-1]['created_to_finished_server_s']:.2f} s"
        )
    return {"jobs": rows, "summary": {k: summarize([r[k] for r in rows]) for k in rows[0]}}


# --------------------------------------------------------------------------- status under load


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked body); return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _clients(url: str, ids: list[str], n: int, seconds: float, interval: float | None) -> dict:
    """`n` concurrent keep-alive connections, each a client polling GET /v1/jobs/{id} (one request in flight
    per client), every `interval` seconds (random phase) or back to back when `interval` is None.

    A bare asyncio HTTP/1.1 client (no httpx): on two shared cores a heavyweight client would measure itself. Its
    own CPU time is reported so its share of the machine is visible."""
    host, port = url.split("//", 1)[1].split(":")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def one(k: int) -> None:
        rng = random.Random(k)
        request = (
            f"GET /v1/jobs/{ids[k % len(ids)]} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            if interval:
                await asyncio.sleep(rng.uniform(0, interval))
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    writer.write(request)
                    status = await _read_response(reader)
                    key = None if status == 200 else str(status)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    key = type(exc).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                dt = time.perf_counter() - t0
                if key is None:
                    latencies.append(dt)
                else:
                    errors[key] = errors.get(key, 0) + 1
                if interval:
                    await asyncio.sleep(max(0.0, interval - dt))
        finally:
            writer.close()

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(n)))
    elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - c0
    ms = [x * 1000 for x in latencies]
    return {
        "clients": n,
        "interval_s": interval,
        "requests": len(ms),
        "errors": errors,
        "seconds": elapsed,
        "throughput_rps": len(ms) / elapsed,
        "client_cpu_share": client_cpu / elapsed,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


def _start_training(client, files) -> list[str]:
    ids = [_submit(client, files, _spec(400, latency=False))["id"] for _ in range(2)]
    for job_id in ids:  # running and past start-up: a progress report from training
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            doc = client.get(f"/v1/jobs/{job_id}").json()
            if doc["status"] == "running" and (doc.get("progress") or {}).get("phase") == "prune":
                break
            if doc["status"] in ("failed", "succeeded", "cancelled"):
                raise RuntimeError(f"load job {job_id} ended {doc['status']}: {doc.get('error')}")
            time.sleep(0.2)
    return ids


def _training_steps(client, ids: list[str]) -> dict[str, tuple[float, float]]:
    """(total optimizer steps so far, time) per job, from its progress report."""
    out = {}
    for job_id in ids:
        p = client.get(f"/v1/jobs/{job_id}").json().get("progress") or {}
        out[job_id] = (float(p.get("step") or 0), time.monotonic())
    return out


def measure_status_load(server: Server, client, files, cfg: dict) -> dict:
    """Two jobs training; 100 clients poll their status, paced and then saturating. Control: the same paced
    load with the two job processes paused (SIGSTOP), which separates the cost of training next to the API
    from the rest of the machine's load."""
    ids = _start_training(client, files)
    out = {"jobs": ids}
    load0 = os.getloadavg()[0]
    steps0 = _training_steps(client, ids)
    out["paced"] = asyncio.run(_clients(server.url, ids, cfg["clients"], cfg["paced_seconds"], cfg["poll_interval"]))
    steps1 = _training_steps(client, ids)
    # training throughput of the two jobs during the paced window (optimizer steps per second, summed)
    out["training_steps_per_s"] = sum(steps1[j][0] - steps0[j][0] for j in ids) / (
        statistics.fmean(steps1[j][1] - steps0[j][1] for j in ids) or 1.0
    )
    out["saturating"] = asyncio.run(_clients(server.url, ids, cfg["clients"], cfg["saturate_seconds"], None))
    states = [client.get(f"/v1/jobs/{j}").json()["status"] for j in ids]
    out["jobs_running_throughout"] = all(s == "running" for s in states)
    jobs = server.job_pids()
    for pid in jobs:
        os.kill(pid, signal.SIGSTOP)
    try:
        out["paced_jobs_paused"] = asyncio.run(
            _clients(server.url, ids, cfg["clients"], cfg["control_seconds"], cfg["poll_interval"])
        )
    finally:
        for pid in jobs:
            os.kill(pid, signal.SIGCONT)
    out["paused_processes"] = len(jobs)
    out["load1"] = [load0, os.getloadavg()[0]]
    for job_id in ids:
        client.post(f"/v1/jobs/{job_id}/cancel")
    for job_id in ids:
        _wait_status(client, job_id, {"queued", "running"}, 120)
    return out


def status_variants(files, cfg: dict, monitor: LoadMonitor) -> dict:
    """The status-under-load measurement for the current tree and each variant, interleaved by round (a fresh
    server per measurement)."""
    import httpx

    from bench.revisions import checkout, resolve

    runs: dict[str, list[dict]] = {name: [] for name in cfg["variants"]}
    with ExitStack() as trees:
        roots = {
            name: trees.enter_context(checkout(v["revision"])) if "revision" in v else None
            for name, v in cfg["variants"].items()
        }
        for rnd in range(cfg["rounds"]):
            for name, v in cfg["variants"].items():
                monitor.sample()
                with (
                    serve(root=roots[name], env=v.get("settings")) as server,
                    httpx.Client(base_url=server.url, timeout=120) as client,
                ):
                    r = measure_status_load(server, client, files, cfg)
                runs[name].append(r)
                log(
                    f"service: status [{name}] round {rnd + 1}: paced p50 {r['paced']['p50_ms']:.1f} ms, p99 "
                    f"{r['paced']['p99_ms']:.1f} ms (jobs paused: p99 {r['paced_jobs_paused']['p99_ms']:.1f} ms); "
                    f"saturating {r['saturating']['throughput_rps']:.0f} req/s"
                )
    summary = {}
    for name, rs in runs.items():
        v = cfg["variants"][name]
        summary[name] = {**v, **({"commit": resolve(v["revision"])} if "revision" in v else {})}
        for phase in ("paced", "paced_jobs_paused", "saturating"):
            summary[name][phase] = {
                k: summarize([r[phase][k] for r in rs])
                for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput_rps")
            }
            summary[name][phase]["requests"] = sum(r[phase]["requests"] for r in rs)
            summary[name][phase]["errors"] = sum(sum(r[phase]["errors"].values()) for r in rs)
        summary[name]["training_steps_per_s"] = summarize([r["training_steps_per_s"] for r in rs])
    return {"runs": runs, "summary": summary}


# --------------------------------------------------------------------------- upload memory


def _big_npz(path: Path, megabytes: int) -> int:
    x, y, _, _ = load_mnist()
    rows = int(megabytes * 2**20 / (28 * 28 * 4)) + 1
    reps = -(-rows // len(x))
    big_x = np.tile(x, (reps, 1, 1))[:rows]
    big_y = np.tile(y, reps)[:rows]
    np.savez(path, x_train=big_x, y_train=big_y)
    return path.stat().st_size


def measure_upload_memory(server: Server, client, model: Path, cfg: dict, workdir: Path) -> dict:
    big = workdir / "big.npz"
    size = _big_npz(big, cfg["upload_mb"])
    pid = server.proc.pid
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sampler():
        while not done.is_set():
            samples.append((time.perf_counter(), _rss_kib(pid)["VmRSS"]))
            time.sleep(0.005)

    time.sleep(1.0)
    baseline = _rss_kib(pid)["VmRSS"]
    peak_reset = _reset_peak(pid)
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    doc = _submit(client, {"model": model, "data": big}, _spec(1, latency=False))
    t1 = time.perf_counter()
    time.sleep(2.0)
    done.set()
    thread.join()
    hwm = _rss_kib(pid)["VmHWM"]
    client.post(f"/v1/jobs/{doc['id']}/cancel")
    _wait_status(client, doc["id"], {"queued", "running"}, 120)
    during = [kib for t, kib in samples if t0 <= t <= t1]
    after = [kib for t, kib in samples if t > t1]
    out = {
        "upload_bytes": size,
        "upload_s": t1 - t0,
        "upload_mb_per_s": size / 2**20 / (t1 - t0),
        "rss_baseline_mib": baseline / 1024,
        "rss_max_during_mib": max(during) / 1024,
        "rss_growth_during_mib": (max(during) - baseline) / 1024,
        "rss_2s_after_mib": after[-1] / 1024 if after else None,
        "peak_rss_vmhwm_growth_mib": (hwm - baseline) / 1024 if peak_reset else None,
        "samples_during": len(during),
    }
    log(
        f"service: {size / 2**20:.0f} MiB upload in {t1 - t0:.1f} s: API RSS +{out['rss_growth_during_mib']:.1f} MiB"
        f" (peak VmHWM +{out['peak_rss_vmhwm_growth_mib']:.1f} MiB)"
        if peak_reset
        else ""
    )
    big.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- entry point


def run(sides: Sides, quick: bool, command: str, repeats: int | None = None) -> dict:
    import httpx

    cfg = {**(QUICK if quick else FULL), "variants": {"current": {}} if quick else variants()}
    if repeats:
        cfg["dispatch_jobs"] = repeats
    payload = header(
        "service",
        command,
        quick,
        {
            **cfg,
            "service_workers": 2,
            "store": "sqlite",
            "dispatcher": "local (embedded)",
            "sched_autogroup": _autogroup_enabled(),
        },
    )
    monitor = LoadMonitor()
    pre = pretrained(sides, "tutorial_cnn", epochs=10, tfmot=False)
    workdir = Path(tempfile.mkdtemp(prefix="bench-service-inputs-"))
    try:
        x, y, xt, yt = load_mnist()
        data = workdir / "mnist.npz"
        np.savez(data, x_train=x, y_train=y, x_val=xt, y_val=yt)
        model = workdir / "tutorial_cnn.keras"
        shutil.copy(pre["keras"], model)
        files = {"model": model, "data": data}
        with serve() as server, httpx.Client(base_url=server.url, timeout=120) as client:
            monitor.sample()
            payload["dispatch"] = measure_dispatch(client, files, cfg)
            monitor.sample()
            payload["upload_memory"] = measure_upload_memory(server, client, model, cfg, workdir)
            monitor.sample()
        payload["status_load"] = status_variants(files, cfg, monitor)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    payload["load"] = monitor.summary()
    path = write_result("service", payload, quick)
    log(f"service: wrote {path}")
    return payload

"""`secateurs submit|status|wait|download|cancel`: the HTTP API from a shell or a CI pipeline (workers.client).

    secateurs submit MODEL --data D.npz --spec S.json [--wait] [--out DIR] [--job-file F] [gates...]
    secateurs submit MODEL --data D.npz --budget 0.01 [--spec S.json] --wait --out DIR
    secateurs status|wait|download|cancel [JOB] [--job-file F] [--out DIR]

The server is --server, else the job file's, else SECATEURS_URL, else http://127.0.0.1:8000; the API key is
--api-key, else SECATEURS_API_KEY (never written to a job file). While waiting, a progress bar shows when stdout is a
terminal, one line per event on stderr otherwise. Results go to stdout, errors to stderr as one line.

Gates (workers.gates), checked when the job has succeeded: --max-accuracy-drop X (absolute, 0.01 = 1 point),
--min-sparsity S, --max-size-ratio R (gzipped .keras after/before), --min-speedup F (beyond the measurement spread);
--budget also requires the budget to be met, and the job's own quality check always counts. Gates given to a
`submit` without --wait are saved in the job file, for the `secateurs wait --job-file F` that follows.

Exit codes (stable):
    0    the job is done and every gate is met (status, cancel: the request worked)
    1    the job failed
    2    bad input, or the server refused the request (4xx: invalid spec, refused model, unknown job, ...)
    3    a gate was missed (each missed gate is a line with the numbers)
    4    the server is unreachable or unavailable (after retries), a wait timed out, or a download failed its checksum
    130  the job was cancelled, or the command was interrupted
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_GATE, EXIT_UNREACHABLE, EXIT_CANCELLED = 0, 1, 2, 3, 4, 130


class _BadInput(Exception):
    pass


def _err(message: str) -> None:
    print(f"secateurs: {message}", file=sys.stderr, flush=True)


# -- argument types --------------------------------------------------------------------------------------------------


def _number(low: float, high: float | None = None, *, open_low: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(v) or v < low or (open_low and v == low) or (high is not None and v > high):
            bound = f"{'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be a number {bound}, not {text}")
        return v

    return parse


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="the service's URL (default: the job file's, SECATEURS_URL, http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: SECATEURS_API_KEY)")


def _add_job(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", nargs="?", help="the job id (or give --job-file)")
    p.add_argument("--job-file", help="JSON file written by `secateurs submit --job-file` (job id, URL, gates)")


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="download every artifact of the finished job here (sha256 checked)")
    p.add_argument(
        "--timeout",
        type=_number(0, open_low=True),
        help="give up waiting after this many seconds (exit 4; the job keeps running)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=_number(0, 1),
        metavar="X",
        help="gate: accuracy-like held-out metrics fall by at most X (absolute: 0.01 = 1 point)",
    )
    p.add_argument("--min-sparsity", type=_number(0, 1), metavar="S", help="gate: sparsity after >= S")
    p.add_argument(
        "--max-size-ratio",
        type=_number(0, open_low=True),
        metavar="R",
        help="gate: gzipped .keras size after / before <= R",
    )
    p.add_argument(
        "--min-speedup",
        type=_number(0, open_low=True),
        metavar="F",
        help="gate: median CPU latency improves >= F times, beyond the measurement spread",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit a job to a Secateurs server (optionally wait and gate)")
    p.add_argument("model", help="a .keras or legacy .h5 model file")
    p.add_argument("--data", help=".npz with x_train, y_train and optional x_val, y_val, x_test, y_test")
    p.add_argument("--spec", help="job spec JSON file (see `secateurs schema`); required unless --budget")
    p.add_argument(
        "--budget",
        type=_number(0, open_low=True),
        metavar="DROP",
        help="search the most compressed model within DROP of the original's held-out metric: submits "
        "a budget step (with --spec, the spec's other settings are kept) and gates on it",
    )
    p.add_argument("--webhook-url", help="POSTed a signed JSON event when the job ends")
    p.add_argument("--wait", action="store_true", help="wait until the job ends, then download (--out) and gate")
    p.add_argument("--job-file", help="write the job id and URL (JSON) here, for a later `secateurs wait`")
    _add_connection(p)
    _add_wait(p)
    p.set_defaults(func=_guarded(cmd_submit))

    for name, func, helptext in (
        ("status", cmd_status, "show a job's status"),
        ("wait", cmd_wait, "wait for a job to end, then download (--out) and gate"),
        ("download", cmd_download, "download a finished job's artifacts (sha256 checked)"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        p = subparsers.add_parser(name, help=helptext)
        _add_job(p)
        _add_connection(p)
        if name == "wait":
            _add_wait(p)
        elif name == "download":
            p.add_argument("--out", default=".", help="directory for the artifacts (default: here)")
        elif name == "status":
            p.add_argument("--json", action="store_true", help="print the job document as JSON")
        p.set_defaults(func=_guarded(func))


# -- plumbing --------------------------------------------------------------------------------------------------------


def _guarded(cmd):
    """Runs a command; every client error becomes its exit code and one line on stderr."""

    def run(args) -> int:
        from workers.client import (
            ApiError,
            ChecksumMismatch,
            ClientError,
            JobNotFinished,
            ServerUnreachable,
            WaitTimeout,
        )

        try:
            return cmd(args)
        except _BadInput as e:
            _err(f"error: {e}")
            return EXIT_BAD_INPUT
        except ApiError as e:
            where = f" (field {e.field})" if e.field else ""
            _err(f"error: the server answered {e.status} {e.code}{where}: {e.detail}")
            return EXIT_UNREACHABLE if e.status >= 500 else EXIT_BAD_INPUT
        except (ServerUnreachable, WaitTimeout, ChecksumMismatch) as e:
            _err(f"error: {e}")
            return EXIT_UNREACHABLE
        except JobNotFinished as e:
            _err(f"error: {e}")
            return {"failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(e.status, EXIT_BAD_INPUT)
        except ClientError as e:
            _err(f"error: {e}")
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            job = getattr(args, "_job_id", None)
            _err("interrupted" + (f"; job {job} keeps running (secateurs cancel {job})" if job else ""))
            return EXIT_CANCELLED

    return run


def _read_job_file(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise _BadInput(f"cannot read job file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise _BadInput(f"job file {path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
        raise _BadInput(f'job file {path} has no job id ("id")')
    return doc


def _client(args, job_file: dict | None = None):
    from workers.client import DEFAULT_URL, Client

    url = args.server or (job_file or {}).get("server") or os.environ.get("SECATEURS_URL") or DEFAULT_URL
    try:
        return Client(url, api_key=args.api_key or os.environ.get("SECATEURS_API_KEY") or None)
    except ValueError as e:
        raise _BadInput(str(e)) from None


def _target(args):
    """(client, job id, job file) of status|wait|download|cancel."""
    job_file = _read_job_file(args.job_file) if args.job_file else None
    job_id = args.job or (job_file or {}).get("id")
    if not job_id:
        raise _BadInput("give a job id or --job-file")
    args._job_id = job_id
    return _client(args, job_file), job_id, job_file


def _gates(args, job_file: dict | None = None, budget: bool = False):
    from workers.gates import Gates

    given = Gates(
        max_accuracy_drop=args.max_accuracy_drop,
        min_sparsity=args.min_sparsity,
        max_size_ratio=args.max_size_ratio,
        min_speedup=args.min_speedup,
        budget=budget,
    )
    return Gates.from_dict((job_file or {}).get("gates")).merged(given)


def _spec(args) -> dict:
    spec: dict = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except OSError as e:
            raise _BadInput(f"cannot read spec {args.spec}: {e.strerror or e}") from None
        except ValueError as e:
            raise _BadInput(f"spec {args.spec} is not JSON: {e}") from None
        if not isinstance(spec, dict):
            raise _BadInput(f"spec {args.spec} must be a JSON object")
    elif args.budget is None:
        raise _BadInput("--spec is required (or --budget DROP)")
    if args.budget is not None:
        spec = {**spec, "steps": [{"kind": "budget", "max_drop": args.budget}]}
    return spec


# -- commands --------------------------------------------------------------------------------------------------------


def cmd_submit(args) -> int:
    for label, p in (("model", args.model), ("data", args.data)):
        if p is not None and not Path(p).is_file():
            raise _BadInput(f"{label} file not found: {p}")
    spec = _spec(args)
    gates = _gates(args, budget=args.budget is not None)
    if not args.wait and not args.job_file and (args.out or gates.to_dict() or args.timeout):
        raise _BadInput("--out, --timeout and the gates need --wait (or --job-file, for a later `secateurs wait`)")
    with _client(args) as client:
        job = client.submit(args.model, args.data, spec, webhook_url=args.webhook_url)
        args._job_id = job.id
        if args.job_file:
            _write_job_file(Path(args.job_file), job, client.base_url, gates)
        if not args.wait:
            print(job.id)
            return EXIT_OK
        _err(f"submitted {job.id} ({job.url})")
        return _follow(client, job.id, args, gates)


def _write_job_file(path: Path, job, server: str, gates) -> None:
    doc = {"id": job.id, "url": job.url, "server": server}
    if gates.to_dict():
        doc["gates"] = gates.to_dict()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as e:
        raise _BadInput(f"cannot write job file {path}: {e.strerror or e} (the job {job.id} was submitted)") from None


def cmd_wait(args) -> int:
    client, job_id, job_file = _target(args)
    with client:
        return _follow(client, job_id, args, _gates(args, job_file))


def cmd_status(args) -> int:
    client, job_id, _ = _target(args)
    with client:
        job = client.get(job_id)
    if args.json:
        print(json.dumps(job.doc, indent=2))
    else:
        print(_status_line(job))
    return {"failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(job.status, EXIT_OK)


def cmd_download(args) -> int:
    client, job_id, _ = _target(args)
    with client:
        for path in client.download(job_id, _out_dir(args.out)):
            print(path)
    return EXIT_OK


def cmd_cancel(args) -> int:
    client, job_id, _ = _target(args)
    with client:
        job = client.cancel(job_id)
    print(f"{job.id} {'cancelled' if job.status == 'cancelled' else 'cancel requested (stops at its next batch)'}")
    return EXIT_OK


def _out_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _BadInput(f"cannot create --out {out}: {e.strerror or e}") from None
    return path


def _follow(client, job_id: str, args, gates) -> int:
    from workers import gates as gate_checks
    from workers.client_progress import EventPrinter

    out = _out_dir(args.out) if args.out else None
    with EventPrinter(job_id, bar=sys.stdout.isatty()) as printer:
        job = client.wait(job_id, timeout=args.timeout, on_event=printer)
    print(_status_line(job))
    if job.status == "failed":
        error = job.error or {}
        _err(f"job {job.id} failed: {error.get('type', 'error')}: {error.get('message', 'no reason given')}")
        return EXIT_FAILED
    if job.status == "cancelled":
        _err(f"job {job.id} was cancelled")
        return EXIT_CANCELLED
    if out is not None:
        for path in client.download(job, out):
            print(f"downloaded {path} (sha256 verified)")
    results = gate_checks.check(job.manifest or {}, gates)
    for r in results:
        print(f"gate {'met' if r.ok else 'MISSED'}: {r.line}")
    missed = [r for r in results if not r.ok]
    if missed:
        _err("gate missed: " + " | ".join(r.line for r in missed))
        return EXIT_GATE
    return EXIT_OK


def _status_line(job) -> str:
    parts = [job.id, job.status]
    summary = job.summary or {}
    if summary:
        parts.append(f"win={summary.get('win')}")
        if summary.get("sparsity_after") is not None:
            parts.append(f"sparsity={summary['sparsity_after']:.4f}")
        if summary.get("gzip_size_ratio") is not None:
            parts.append(f"gzip_size_ratio={summary['gzip_size_ratio']:.4f}")
        for k, c in sorted((summary.get("quality") or {}).items()):
            parts.append(f"{k}={c['before']:.4f}->{c['after']:.4f}")
    progress = job.doc.get("progress") or {}
    if not job.terminal and progress.get("phase"):
        parts.append(f"phase={progress['phase']}")
    if job.error:
        parts.append(f"error={job.error.get('type')}: {job.error.get('message')}")
    return "  ".join(parts)

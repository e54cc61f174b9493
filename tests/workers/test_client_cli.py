"""`secateurs submit|status|wait|download|cancel` (workers/client_cli.py) as a pipeline runs them: subprocesses against
a real `secateurs serve` with one embedded worker and real TensorFlow jobs. Every exit code: 0 (done, gates met),
1 (job failed), 2 (bad input, refused upload), 3 (gate missed), 4 (server down, wait timed out), 130 (cancelled)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shlex
import subprocess
import sys
import threading
from argparse import Namespace

import httpx
import numpy as np
import pytest

from tests.service.conftest import ROOT, Server, free_port
from tests.workers.jobfiles import LONG_SPEC, QUICK_SPEC
from workers.client_cli import _spec

BASE_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}, "TF_CPP_MIN_LOG_LEVEL": "3"}


def cli(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**BASE_ENV, **(env or {})},
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("client-cli") / "data", workers=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("specs") / "quick.json"
    path.write_text(json.dumps(QUICK_SPEC))
    return path


@pytest.fixture(scope="module")
def submitted(server, job_files, spec_file, tmp_path_factory):
    """`submit --job-file` without --wait, with a gate saved for the `wait` of a later pipeline step."""
    job_file = tmp_path_factory.mktemp("jobfile") / "nested" / "job.json"
    r = cli(
        "submit",
        job_files.model,
        "--data",
        job_files.data,
        "--spec",
        spec_file,
        "--server",
        server.url,
        "--job-file",
        job_file,
        "--min-sparsity",
        "0.99",
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), job_file


def job_doc(server, job_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()


def assert_artifacts(out_dir, doc: dict) -> None:
    names = {a["name"]: a["sha256"] for a in doc["artifacts"]}
    assert {"model.keras", "manifest.json"} <= set(names)
    assert {p.name for p in out_dir.iterdir()} == set(names)
    for name, sha in names.items():
        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == sha


def test_submit_wait_out_with_every_gate_met_exits_0_and_downloads_checked_artifacts(
    server, job_files, spec_file, tmp_path
):
    out = tmp_path / "out"
    r = cli(
        "submit",
        job_files.model,
        "--data",
        job_files.data,
        "--spec",
        spec_file,
        "--wait",
        "--out",
        out,
        "--max-accuracy-drop",
        "0.5",
        "--min-sparsity",
        "0.45",
        "--max-size-ratio",
        "1.5",
        env={"SECATEURS_URL": server.url},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"submitted (job_\w+)", r.stderr).group(1)
    doc = job_doc(server, job_id)
    assert doc["status"] == "succeeded"
    assert_artifacts(out, doc)
    summary = doc["manifest"]["summary"]
    assert (
        f"gate met: min-sparsity 0.45: sparsity of the prunable weights is {summary['sparsity_after']:.4f}" in r.stdout
    )
    assert f"gzipped .keras size ratio is {summary['gzip_size_ratio']:.4f}" in r.stdout
    assert "gate met: max-accuracy-drop 0.5: held-out accuracy" in r.stdout
    assert "MISSED" not in r.stdout
    # not a terminal: one line per event on stderr
    assert f"{job_id} status running" in r.stderr and f"{job_id} status succeeded" in r.stderr
    assert re.search(rf"{job_id} progress prune step 1 epoch 1/1 batch \d+/\d+ sparsity", r.stderr), r.stderr


def test_submit_without_wait_prints_the_id_and_writes_the_job_file(server, submitted):
    job_id, job_file = submitted
    assert re.fullmatch(r"job_\w+", job_id)
    saved = json.loads(job_file.read_text())
    assert saved == {
        "id": job_id,
        "url": f"{server.url}/v1/jobs/{job_id}",
        "server": server.url,
        "gates": {"min_sparsity": 0.99},
    }


def test_wait_job_file_applies_the_saved_gate_and_a_missed_gate_exits_3_with_the_numbers(server, submitted, tmp_path):
    job_id, job_file = submitted
    out = tmp_path / "out"
    r = cli("wait", "--job-file", job_file, "--out", out)  # the server comes from the job file
    assert r.returncode == 3, r.stdout + r.stderr
    doc = job_doc(server, job_id)
    sparsity = doc["manifest"]["summary"]["sparsity_after"]
    line = f"min-sparsity 0.99: sparsity of the prunable weights is {sparsity:.4f} (needed >= 0.99)"
    assert f"gate MISSED: {line}" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == f"secateurs: gate missed: {line}"
    assert_artifacts(out, doc)  # the artifacts are there to look at even when a gate is missed

    r = cli("wait", "--job-file", job_file, "--min-sparsity", "0.4")  # a flag overrides the saved gate
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gate met: min-sparsity 0.4" in r.stdout


def test_status_and_download_of_a_finished_job(server, submitted, tmp_path):
    job_id, job_file = submitted
    cli("wait", "--job-file", job_file, "--min-sparsity", "0")
    r = cli("status", "--job-file", job_file)
    assert r.returncode == 0 and r.stdout.startswith(f"{job_id}  succeeded  win="), r.stdout + r.stderr
    r = cli("status", job_id, "--json", env={"SECATEURS_URL": server.url})
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == job_id
    r = cli("download", job_id, "--server", server.url, "--out", tmp_path / "dl")
    assert r.returncode == 0, r.stderr
    doc = job_doc(server, job_id)
    assert sorted(r.stdout.split()) == sorted(str(tmp_path / "dl" / a["name"]) for a in doc["artifacts"])
    assert_artifacts(tmp_path / "dl", doc)


def test_waiting_on_a_terminal_shows_the_progress_bar(server, submitted):
    job_id, job_file = submitted
    cli("wait", "--job-file", job_file, "--min-sparsity", "0")
    primary, replica = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "wait", job_id, "--server", server.url],
        stdout=replica,
        stderr=replica,
        cwd=ROOT,
        env={**BASE_ENV, "TERM": "xterm-256color", "COLUMNS": "120"},
    )
    os.close(replica)
    assert proc.wait(120) == 0
    reader.join(10)
    os.close(primary)
    text = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control sequences
    assert "1. prune" in text and "━" in text  # the bar of the first step
    assert f"{job_id} status succeeded" in text
    assert f"{job_id}  succeeded" in text


def test_a_failed_job_exits_1_naming_the_error(server, job_files, spec_file, tmp_path):
    wrong = tmp_path / "wrong.npz"  # rows the model cannot take: the job fails inside the job process
    np.savez(wrong, x_train=np.zeros((64, 5), "float32"), y_train=np.zeros(64, "int64"))
    r = cli("submit", job_files.model, "--data", wrong, "--spec", spec_file, "--server", server.url, "--wait")
    assert r.returncode == 1, r.stdout + r.stderr
    job_id = re.search(r"submitted (job_\w+)", r.stderr).group(1)
    error = job_doc(server, job_id)["error"]
    assert f"secateurs: job {job_id} failed: {error['type']}: {error['message']}" in r.stderr


def test_bad_input_and_refused_requests_exit_2_with_one_line(server, job_files, spec_file, tmp_path):
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_bytes(b"not a zip archive" * 20)
    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text(json.dumps({"steps": [{"kind": "prune", "method": "magnitude", "target_sparsity": 1.5}]}))
    not_json = tmp_path / "not.json"
    not_json.write_text("{steps: oops")
    url = ["--server", server.url]
    cases = [
        (["submit", not_a_model, "--data", job_files.data, "--spec", spec_file, *url], "(field model)"),
        (
            ["submit", job_files.model, "--data", job_files.data, "--spec", bad_spec, *url],
            "422 validation_error (field spec.steps.0.target_sparsity)",
        ),
        (
            ["submit", job_files.model, "--data", tmp_path / "missing.npz", "--spec", spec_file, *url],
            "data file not found",
        ),
        (["submit", job_files.model, "--data", job_files.data, "--spec", not_json, *url], "is not JSON"),
        (["submit", job_files.model, "--data", job_files.data, *url], "--spec is required"),
        (["submit", job_files.model, "--spec", spec_file, "--out", tmp_path / "o", *url], "need --wait"),
        (["submit", job_files.model, "--spec", spec_file, "--min-sparsity", "2", *url], "--min-sparsity"),
        (["status", "job_does_not_exist", *url], "404 not_found"),
        (["wait", *url], "give a job id or --job-file"),
        (["wait", "--job-file", not_json, *url], "is not JSON"),
        (["status", "job_x", "--server", "ftp://example"], "http:// or https://"),
    ]
    for args, says in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert says in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_a_server_that_is_down_exits_4(tmp_path, job_files, spec_file):
    down = f"http://127.0.0.1:{free_port()}"
    r = cli("status", "job_x", "--server", down, timeout=120)
    assert r.returncode == 4, r.stderr
    assert r.stderr.startswith(f"secateurs: error: GET {down}/v1/jobs/job_x: ConnectError")
    r = cli("submit", job_files.model, "--spec", spec_file, "--wait", env={"SECATEURS_URL": down}, timeout=120)
    assert r.returncode == 4 and "ConnectError" in r.stderr, r.stderr


def test_a_wait_that_times_out_exits_4_and_a_cancelled_job_exits_130(server, job_files, tmp_path):
    spec = tmp_path / "long.json"
    spec.write_text(json.dumps(LONG_SPEC))
    job_file = tmp_path / "job.json"
    r = cli(
        "submit",
        job_files.model,
        "--data",
        job_files.data,
        "--spec",
        spec,
        "--server",
        server.url,
        "--job-file",
        job_file,
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    r = cli("wait", "--job-file", job_file, "--timeout", "2")
    assert r.returncode == 4 and f"job {job_id} is still" in r.stderr, r.stderr
    r = cli("cancel", "--job-file", job_file)
    assert r.returncode == 0 and r.stdout.startswith(job_id), r.stderr
    r = cli("wait", "--job-file", job_file, "--out", tmp_path / "never")
    assert r.returncode == 130, r.stdout + r.stderr
    assert f"job {job_id} was cancelled" in r.stderr
    assert not list((tmp_path / "never").glob("*"))  # nothing to download
    r = cli("status", "--job-file", job_file)
    assert r.returncode == 130 and "cancelled" in r.stdout


def test_budget_submits_a_budget_step_keeping_the_specs_other_settings(tmp_path):
    base = tmp_path / "spec.json"
    base.write_text(json.dumps(QUICK_SPEC))
    spec = _spec(Namespace(spec=str(base), budget=0.01))
    assert spec["steps"] == [{"kind": "budget", "max_drop": 0.01}]
    assert spec["training"] == QUICK_SPEC["training"] and spec["evaluation"] == QUICK_SPEC["evaluation"]
    assert _spec(Namespace(spec=None, budget=0.02)) == {"steps": [{"kind": "budget", "max_drop": 0.02}]}


def documented_commands(text: str) -> list[str]:
    """Every `secateurs ...` command in docs/CI.md: shell blocks (with continuation lines) and YAML `run`/`script`."""
    import yaml

    out = []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        if lang == "bash":
            joined = body.replace("\\\n", " ")
            out += [line.split("#")[0] for line in joined.splitlines() if line.startswith("secateurs ")]
        elif lang == "yaml":

            def walk(node):
                if isinstance(node, dict):
                    for v in node.values():
                        walk(v)
                elif isinstance(node, list):
                    for v in node:
                        walk(v)
                elif isinstance(node, str) and node.strip().startswith("secateurs "):
                    out.append(node)  # noqa: B023 (called at once)

            walk(yaml.safe_load(body))
    return out


def test_the_ci_guide_commands_parse_and_its_exit_codes_are_the_clis():
    from workers import client_cli
    from workers.cli import build_parser

    text = (ROOT / "docs" / "CI.md").read_text()
    commands = documented_commands(text)
    assert len(commands) >= 6 and any("--job-file" in c for c in commands)
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # an unknown flag exits here
        assert args.command in ("submit", "wait", "status", "download", "cancel"), command
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", text, re.M)}
    assert documented == {
        client_cli.EXIT_OK,
        client_cli.EXIT_FAILED,
        client_cli.EXIT_BAD_INPUT,
        client_cli.EXIT_GATE,
        client_cli.EXIT_UNREACHABLE,
        client_cli.EXIT_CANCELLED,
    }

"""report.html in a real headless Chromium (Debian's `chromium`): it loads nothing, shows its plots and tables, and
paints a page that is not blank.

The page is served without any Content-Security-Policy header (and, for the request check, without its own CSP meta
tag) by a local server that records every request, so what is checked is the file itself, not a policy that would
hide its attempts; with its policy on, the console must show no violation either. Chromium's net log lists every URL
request the browser made; the page's own requests are those of its network isolation key (the local origin) —
the browser's background traffic (component updates, account checks) carries none. A control page with an
external image and stylesheet shows that the check sees such loads. Host names resolve nowhere, so nothing leaves
the machine either way. Under CI=true a missing Chromium fails these tests (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.engine import manifests
from tests.engine.test_report import Page
from workers.engine.plots import AFTER
from workers.engine.report import render_report


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: CI must run the report's browser test (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@dataclass
class Visit:
    stdout: str
    stderr: str
    served: list[tuple[str, str]]  # (method, path) of every request that reached the local server
    page_requests: list[str] = field(default_factory=list)  # URLs the page itself asked for, beyond the document


class _Site:
    """Serves one HTML document at /report.html on 127.0.0.1 and records every request it gets."""

    def __init__(self, html: bytes):
        requests: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - the http.server API
                requests.append(("GET", self.path))
                found = self.path == "/report.html"
                body = html if found else b""
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.requests = requests
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _page_requests(net_log: Path, origin: str, document: str) -> list[str]:
    """URLs requested on behalf of the page (its network isolation key names its origin), except the document."""
    text = net_log.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for ev in log["events"]:
        params = ev.get("params") or {}
        if names.get(ev["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        mine = origin in str(params.get("network_isolation_key", "")) or params.get("initiator") == origin
        if mine and params["url"] != document and not params["url"].startswith("data:"):
            urls.append(params["url"])
    return urls


def visit(chromium: str, html: str, tmp_path: Path, *actions: str, width: int = 1000, height: int = 1200) -> Visit:
    """Open the page in headless Chromium with `actions` (--dump-dom, --screenshot=..., --print-to-pdf=...)."""
    site = _Site(html.encode("utf-8"))
    net_log = tmp_path / "net.json"
    document = f"{site.origin}/report.html"
    try:
        run = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--window-size={width},{height}",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--log-net-log={net_log}",
                "--net-log-capture-mode=Default",
                "--enable-logging=stderr",
                "--v=0",
                *actions,
                document,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        site.close()
    assert run.returncode == 0, run.stderr[-3000:]
    return Visit(run.stdout, run.stderr, list(site.requests), _page_requests(net_log, site.origin, document))


def _report() -> str:
    names = ("conv", manifests.HOSTILE, "dense_1", "predictions")
    m = manifests.manifest(names)
    m["budget"] = manifests.budget()
    return render_report(m, manifests.sensitivity(names))


def test_the_check_sees_a_page_that_loads_from_elsewhere(chromium, tmp_path):
    control = (
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="https://fonts.example.invalid/a.css"></head>'
        '<body><img src="http://images.example.invalid/x.png"></body></html>'
    )
    seen = visit(chromium, control, tmp_path, "--dump-dom")
    assert sorted(seen.page_requests) == ["http://images.example.invalid/x.png", "https://fonts.example.invalid/a.css"]
    assert seen.served == [("GET", "/report.html")]


def _without_policy(html: str) -> str:
    """The report less its own Content-Security-Policy meta tag: any load it tried would then really happen."""
    policy = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n', html)
    assert policy
    return html.replace(policy.group(0), "")


def test_the_report_loads_nothing_and_its_plots_and_tables_are_in_the_dom(chromium, tmp_path):
    seen = visit(chromium, _without_policy(_report()), tmp_path, "--dump-dom")
    assert seen.served == [("GET", "/report.html")]  # not even /favicon.ico
    assert seen.page_requests == []
    dom = Page(seen.stdout)
    assert {"verdict", "before-after", "artifacts", "budget", "sensitivity", "layers", "training"} <= dom.ids
    assert not dom.all("script")
    assert len(dom.all("table")) >= 5 and len(dom.all("figure")) == 5
    plots = [img["src"] for img in dom.all("img")]
    assert len(plots) == 5 and all(src.startswith("data:image/svg+xml;base64,") for src in plots)
    assert manifests.HOSTILE in "".join(dom.text)  # the hostile layer name is text, not markup, in the browser too


def test_the_report_paints_its_plots_and_prints(chromium, tmp_path):
    from PIL import Image

    shot, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    seen = visit(chromium, _report(), tmp_path, f"--screenshot={shot}", height=6000)
    assert seen.served == [("GET", "/report.html")] and seen.page_requests == []
    assert "Content Security Policy" not in seen.stderr  # its own policy blocked nothing: it tried nothing
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (6000, 1000)
    assert pixels.std() > 20  # not blank
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # text, table rules and plots: a few percent of the page
    blue = np.array([int(AFTER[i : i + 2], 16) for i in (1, 3, 5)])
    painted = (np.abs(pixels - blue).max(axis=2) < 12).sum()
    assert painted > 2000, f"only {painted} pixels of the plots' colour: the SVG images were not drawn"

    printed = visit(chromium, _report(), tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert printed.page_requests == []
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", data)) >= 2  # the report runs over several sheets

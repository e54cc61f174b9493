"""Real Secateurs processes for tests and benchmarks: `secateurs serve` on a free port, started and waited for
until it answers, `secateurs worker`, and the /proc look-ups that find their children.

One harness for `tests/` and `bench/` (the benchmarks do not import the tests). Nothing here imports the service:
processes run the `secateurs` command of a checkout (this one by default, or another revision's, which
`bench/revisions.py` checks out), as that checkout's pyproject.toml declares it, so a harness at one revision can
start the server of another. Raises AssertionError where a test would, like numpy.testing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx

_CHECKOUT = Path(__file__).resolve().parents[2]
ROOT: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None
"""The checkout this package is imported from; None when it is installed (then the installed command runs)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- commands


def _entry_point(root: Path | None) -> str:
    if root is not None and (root / "pyproject.toml").is_file():
        scripts = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {}).get("scripts", {})
        if "secateurs" in scripts:
            return scripts["secateurs"]
    from importlib.metadata import entry_points

    found = entry_points(group="console_scripts", name="secateurs")
    if not found:
        raise RuntimeError(
            f"no `secateurs` command: neither {root}/pyproject.toml nor an installed distribution declares one"
        )
    return next(iter(found)).value


def secateurs_command(*args: str, root: Path | None = None) -> list[str]:
    """`secateurs ARGS` of the checkout at `root` (default: this one), run by this Python interpreter; run it with
    `cwd=root` so that the checkout's packages come first."""
    module, _, function = _entry_point(root or ROOT).partition(":")
    return [
        sys.executable,
        "-c",
        f"import sys; from {module} import {function}; sys.exit({function}())",
        *map(str, args),
    ]


def process_env(root: Path | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a started process: this one's without SECATEURS_* settings (a test or benchmark sets the
    ones it means) and without TF_USE_LEGACY_KERAS (tf_keras, the benchmark's tfmot side), quiet TensorFlow, the
    checkout's packages first on PYTHONPATH (for the job processes too, which run elsewhere), then `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_") and k != "TF_USE_LEGACY_KERAS"}
    root = root or ROOT
    if root is not None:
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), base.get("PYTHONPATH")]))
    return {**base, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}


def wait_until_up(
    url: str, proc: subprocess.Popen, timeout: float, *, status: int | None = 200, log: Callable[[], str] = lambda: ""
) -> None:
    """Poll `url` until it answers (with `status`; None: any answer). RuntimeError, with `log()`, when `proc` exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]}... exited with {proc.returncode} before {url} answered:\n{log()}")
        try:
            r = httpx.get(url, timeout=2)
            if status is None or r.status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer {status or ''} within {timeout} s:\n{log()}")


def start_worker(*args: str, env: dict[str, str], root: Path | None = None, **popen) -> subprocess.Popen:
    """`secateurs worker ARGS` of the checkout at `root` with the complete environment `env` (e.g. a Server's);
    other keyword arguments go to Popen (stdout, stderr, start_new_session, ...)."""
    root = root or ROOT
    return subprocess.Popen(secateurs_command("worker", *args, root=root), cwd=root, env=env, **popen)


# --------------------------------------------------------------------------- processes (/proc)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids, timeout: float = 30.0) -> None:
    """Wait until every process of `pids` has exited; AssertionError naming those that outlive `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    assert not left, f"processes {left} outlived their server"


# --------------------------------------------------------------------------- secateurs serve


class Server:
    """One `secateurs serve` process on a free port, with its data directory and environment.

    `env`: SECATEURS_* settings and other variables on top of `process_env`; `root`: the checkout to run (default:
    this one); `new_session`: the server leads its own process group (and, on Linux, its own scheduling autogroup),
    so that `kill_group` takes its workers along. `start()` picks a fresh port each time (a restart test starts the
    same Server again) and returns once `/readyz` (or `ready`) answers 200. Also a context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        root: Path | None = None,
        new_session: bool = True,
        preexec_fn=None,
        log_path: Path | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.root = Path(root) if root is not None else ROOT
        self.new_session = new_session
        self.preexec_fn = preexec_fn  # e.g. resource limits of the server process
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = process_env(
            self.root, {"SECATEURS_DATA_DIR": str(self.data_dir), "SECATEURS_LOG_LEVEL": "warning", **(env or {})}
        )
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path is not None else self.data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 90.0, ready: str = "/readyz") -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.log_path, "ab")
        command = secateurs_command(
            "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers), root=self.root
        )
        self.proc = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
            preexec_fn=self.preexec_fn,
        )
        wait_until_up(f"{self.url}{ready}", self.proc, timeout, log=self.log_tail)
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The embedded worker processes (multiprocessing children of the API)."""
        return [p for p in children(self.proc.pid) if "spawn_main" in cmdline(p) and alive(p)]

    def job_pids(self) -> list[int]:
        """The job processes (sandbox children) below the server."""
        return [p for p in descendants(self.proc.pid) if "workers.sandbox" in cmdline(p) and alive(p)]

    def stop(self, timeout: float = 40.0) -> None:
        """Graceful: SIGTERM, as a service manager would; AssertionError when its workers outlive it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.worker_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
        self.log.close()
        wait_gone(workers)

    def kill(self) -> list[int]:
        """SIGKILL the API process only; returns its worker pids (they notice and stop on their own)."""
        workers = self.worker_pids()
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        return workers

    def kill_group(self) -> None:
        """SIGKILL the API and its workers at once, like a machine losing power (job processes notice)."""
        if not self.new_session:  # not a group of its own: the API alone
            self.proc.kill()
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def __enter__(self) -> Server:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

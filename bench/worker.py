"""A long-lived benchmark process for one side, answering JSON-line requests on stdin.

`python -m bench.worker secateurs|tfmot` imports `bench.sides.<side>` and runs its TASKS on request. Replies go to
the original stdout; anything else printed there (Keras, TensorFlow) is redirected to stderr so it cannot corrupt
the protocol. The orchestrator (`Side`) starts one worker per side and alternates requests between them, so both
sides are measured in the same time windows and never compete for the cores.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

SIDE_ENV = {
    "secateurs": {"TF_USE_LEGACY_KERAS": None},
    "tfmot": {"TF_USE_LEGACY_KERAS": "1"},
}


class WorkerError(RuntimeError):
    pass


class Side:
    """Orchestrator handle of one worker subprocess."""

    def __init__(self, name: str, extra_env: dict | None = None, root: Path | None = None, label: str | None = None):
        """`root`: the tree whose `bench` and `workers` the worker imports (another revision's worktree, see
        `bench.revisions`; default: this one)."""
        if name not in SIDE_ENV:
            raise ValueError(f"unknown side '{name}'; known: {', '.join(SIDE_ENV)}")
        self.name = label or name
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        for k, v in {**SIDE_ENV[name], **(extra_env or {})}.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        here = Path(__file__).resolve().parents[1]
        root = Path(root) if root is not None else here
        if root != here:  # another revision: its imports first, the shared data where it always is
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            env.setdefault("SECATEURS_MNIST_DIR", str(here.parent / "shared" / "data" / "mnist"))
        self.stderr_path = here / "bench" / ".cache" / f"worker-{self.name}.log"
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", name],
            cwd=root,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.call("ping")

    def call(self, task: str, **args):
        self.proc.stdin.write(json.dumps({"task": task, "args": args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self.name} worker died during '{task}'; see {self.stderr_path}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(f"{self.name} worker failed in '{task}': {reply['error']}\n{reply['traceback']}")
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(side: str) -> None:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints (Keras, TF) go to stderr
    replies = os.fdopen(reply_fd, "w", buffering=1)
    module = importlib.import_module(f"bench.sides.{side}")
    tasks = {"ping": lambda: {"pid": os.getpid(), "side": side}, **module.TASKS}
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        try:
            result = tasks[req["task"]](**req["args"])
            reply = {"ok": True, "result": result}
        except Exception as exc:  # reported to the orchestrator, which stops
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(f"[worker {side}] {req['task']} took {time.perf_counter() - t0:.2f}s", file=sys.stderr, flush=True)
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _serve(sys.argv[1])

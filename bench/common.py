"""Shared pieces: the MNIST split, machine/load/version facts, robust statistics, result files."""

from __future__ import annotations

import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("SECATEURS_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
RESULTS_DIR = ROOT / "bench" / "results"
CACHE_DIR = ROOT / "bench" / ".cache"
PYTHON = sys.executable


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


def load_mnist():
    """Real MNIST digits (the 10k test set): images 0..7999 to train, 8000..9999 held out; pixels in [0, 1]."""
    images, labels = MNIST_DIR / "t10k-images-idx3-ubyte.gz", MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images.exists():
        raise SystemExit(f"MNIST not found at {MNIST_DIR} (set SECATEURS_MNIST_DIR)")
    x = _read_idx(images, 16).reshape(10_000, 28, 28).astype("float32") / 255.0
    y = _read_idx(labels, 8).astype("int64")
    return x[:8000], y[:8000], x[8000:], y[8000:]


# --------------------------------------------------------------------------- machine facts


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    """Package versions without importing TensorFlow in this (orchestrating) process."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "tensorflow",
        "keras",
        "tf_keras",
        "tensorflow-model-optimization",
        "numpy",
        "secateurs",
        "fastapi",
        "uvicorn",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- statistics


def summarize(values: list[float]) -> dict:
    """Median, min, max, and relative spread ((max - min) / median) of repeated measurements."""
    vals = [float(v) for v in values]
    med = statistics.median(vals)
    return {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "spread": (max(vals) - min(vals)) / med if med else None,
        "values": vals,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = max(0, min(len(vals) - 1, int(np.ceil(q / 100 * len(vals))) - 1))
    return vals[k]


# --------------------------------------------------------------------------- results


class LoadMonitor:
    """Samples the 1-minute load average while a benchmark runs (how noisy was the machine?)."""

    def __init__(self):
        self.samples: list[float] = []
        self.started = time.monotonic()

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {
            "load1_min": round(min(s), 2),
            "load1_median": round(statistics.median(s), 2),
            "load1_max": round(max(s), 2),
            "samples": len(s),
            "cores": os.cpu_count(),
        }


def portable(text: str) -> str:
    """Paths inside this checkout written relative to it: results name no directory of the machine they ran on."""
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")


def write_result(name: str, payload: dict, quick: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(portable(json.dumps(payload, indent=2, sort_keys=True)))
    os.replace(tmp, path)
    return path


def header(benchmark: str, command: str, quick: bool, config: dict) -> dict:
    return {
        "benchmark": benchmark,
        "command": command,
        "quick": quick,
        "date": now_iso(),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "load_at_start": loadavg(),
        "config": config,
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

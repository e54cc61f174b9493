"""Interleaved, repeated measurement of *arms* (one side + one task + its arguments) and the shared setup.

Every repetition runs every arm once, in an order rotated by the repetition index, so that a burst of load
from other processes hits all arms alike; ratios are computed per repetition (arms run seconds apart) and
then summarized by their median.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import CACHE_DIR, LoadMonitor, log, summarize
from bench.worker import Side


@dataclass(frozen=True)
class Arm:
    label: str
    side: str  # "secateurs" | "tfmot"
    task: str
    args: dict = field(default_factory=dict)


class Sides:
    """The worker processes, started lazily, closed together. A name "secateurs@<rev>" is the Secateurs side
    running on that git revision, checked out into a temporary worktree (`bench.revisions`)."""

    def __init__(self):
        self._sides: dict[str, Side] = {}
        self._trees = ExitStack()

    def __getitem__(self, name: str) -> Side:
        if name not in self._sides:
            log(f"starting the {name} worker")
            base, _, rev = name.partition("@")
            root = None
            if rev:
                from bench.revisions import checkout

                root = self._trees.enter_context(checkout(rev))
            self._sides[name] = Side(base, root=root, label=name)
        return self._sides[name]

    def close(self) -> None:
        for side in self._sides.values():
            side.close()
        self._sides.clear()
        self._trees.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pretrained(sides: Sides, model: str, epochs: int, batch_size: int = 128, seed: int = 0, tfmot: bool = True) -> dict:
    """Train `model` once in Keras 3 (cached under bench/.cache) and give both sides the same weights:
    {"weights": .npz, "keras": Keras 3 .keras, "tfk": tf_keras .keras, "accuracy": held-out accuracy}."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    stem = CACHE_DIR / f"{model}-e{epochs}-b{batch_size}-s{seed}"
    weights = stem.with_suffix(".npz")
    info_path = stem.with_suffix(".json")
    if weights.exists() and stem.with_suffix(".keras").exists() and info_path.exists():
        import json

        info = json.loads(info_path.read_text())
    else:
        log(f"pretraining {model} for {epochs} epochs")
        info = sides["secateurs"].call(
            "pretrain", model=model, epochs=epochs, batch_size=batch_size, out=str(weights), seed=seed
        )
        import json

        info_path.write_text(json.dumps(info))
    tfk = Path(f"{stem}-tfk.keras")
    if tfmot and not tfk.exists():
        sides["tfmot"].call("prepare", model=model, weights=str(weights), out=str(tfk))
    return {**info, "tfk": str(tfk) if tfmot else None, "pretrain_epochs": epochs}


def run_interleaved(
    sides: Sides, arms: list[Arm], repeats: int, monitor: LoadMonitor, warmup: bool = True
) -> dict[str, list[dict]]:
    """Run every arm `repeats` times, interleaved; returns label -> list of task results (one per repetition)."""
    if warmup:
        for arm in arms:
            sides[arm.side].call(arm.task, **arm.args)
    results: dict[str, list[dict]] = {arm.label: [] for arm in arms}
    for rep in range(repeats):
        k = rep % len(arms)
        for arm in arms[k:] + arms[:k]:
            monitor.sample()
            results[arm.label].append(sides[arm.side].call(arm.task, **arm.args))
        log(f"  repetition {rep + 1}/{repeats} done (load {monitor.samples[-1]:.2f})")
    return results


def paired_ratio(num: list[dict], den: list[dict], key: str) -> dict:
    """Median over repetitions of num[i][key] / den[i][key]."""
    return summarize([a[key] / b[key] for a, b in zip(num, den)])


def times(results: list[dict], key: str) -> dict:
    return summarize([r[key] for r in results])

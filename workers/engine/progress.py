"""Progress events and cancellation: how the engine reports to whoever runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Progress:
    phase: str  # load | evaluate | regularize | prune | structured | finetune | sensitivity | budget | export | done
    step_index: int = -1  # index into JobSpec.steps, -1 outside a step
    epoch: int | None = None  # 1-based epoch within the step
    epochs: int | None = None
    step: int | None = None  # optimizer step within the step's training (1-based)
    steps: int | None = None
    sparsity: float | None = None  # current overall sparsity of the prunable weights
    loss: float | None = None
    message: str = ""
    trial: int | None = None  # budget step: 1-based trial number ...
    trials: int | None = None  # ... of at most this many
    layer: str | None = None  # sensitivity: the layer (or structured group) being measured

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def no_progress(_: Progress) -> None:
    return None


def never_cancel() -> bool:
    return False

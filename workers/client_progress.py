"""What `secateurs submit --wait` / `secateurs wait` shows while a job runs: the rich progress bar of
`secateurs compress` on a terminal, one plain line per event otherwise (CI logs)."""

from __future__ import annotations

import sys
from dataclasses import fields

from rich.console import Console
from rich.markup import escape

from workers.client import Event
from workers.console import ProgressDisplay
from workers.engine.progress import Progress

_PROGRESS_FIELDS = {f.name for f in fields(Progress)}


def event_line(job_id: str, ev: Event) -> str:
    """One line for a log: `<job> <kind> <details>`."""
    d = ev.data
    if ev.kind == "status":
        extra = []
        if d.get("attempt"):
            extra.append(f"attempt {d['attempt']}/{d.get('max_attempts', '?')}")
        if d.get("reason"):
            extra.append(str(d["reason"]))
        return " ".join([job_id, "status", str(d.get("status")), *extra])
    if ev.kind == "progress":
        parts = [job_id, "progress", str(d.get("phase", ""))]
        if d.get("step_index", -1) >= 0:
            parts.append(f"step {d['step_index'] + 1}")
        if d.get("epoch"):
            parts.append(f"epoch {d['epoch']}/{d.get('epochs', '?')}")
        if d.get("steps"):
            parts.append(f"batch {d.get('step', 0)}/{d['steps']}")
        if d.get("sparsity") is not None:
            parts.append(f"sparsity {d['sparsity']:.1%}")
        if d.get("loss") is not None:
            parts.append(f"loss {d['loss']:.4f}")
        if d.get("message"):
            parts.append(str(d["message"]))
        return " ".join(parts)
    return " ".join([job_id, ev.kind, str(d.get("message", ""))]).rstrip()


class EventPrinter:
    """A callable for `Client.wait(on_event=...)`; use as a context manager around the wait."""

    def __init__(self, job_id: str, bar: bool, console: Console | None = None):
        self.job_id = job_id
        self.bar = bar
        self.console = console or Console(stderr=True)
        self._display = ProgressDisplay(enabled=True, console=self.console) if bar else None

    def __enter__(self) -> EventPrinter:
        if self._display is not None:
            self._display.__enter__()
        return self

    def __exit__(self, *exc):
        if self._display is not None:
            return self._display.__exit__(*exc)
        return None

    def __call__(self, ev: Event) -> None:
        if self._display is None:
            print(event_line(self.job_id, ev), file=sys.stderr, flush=True)
        elif ev.kind == "progress":
            fields_ = {k: v for k, v in ev.data.items() if k in _PROGRESS_FIELDS}
            self._display.update(Progress(**{"phase": "", **fields_}))
        else:
            self.console.print(escape(event_line(self.job_id, ev)))  # above the bars

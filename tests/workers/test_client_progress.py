"""workers.client_progress: the plain one-line-per-event form for CI logs (the terminal bar is checked in a real
pseudo-terminal by tests/workers/test_client_cli.py)."""

from __future__ import annotations

import io

from rich.console import Console

from workers.client import Event
from workers.client_progress import EventPrinter, event_line


def test_each_kind_of_event_is_one_readable_line():
    status = Event("status", 2, {"status": "running", "attempt": 1, "max_attempts": 2})
    progress = Event(
        "progress",
        5,
        {
            "phase": "prune",
            "step_index": 0,
            "epoch": 1,
            "epochs": 3,
            "step": 4,
            "steps": 8,
            "sparsity": 0.25,
            "loss": 0.41234,
        },
    )
    log = Event("log", 6, {"message": "exported model.keras"})
    assert event_line("job_1", status) == "job_1 status running attempt 1/2"
    assert event_line("job_1", progress) == "job_1 progress prune step 1 epoch 1/3 batch 4/8 sparsity 25.0% loss 0.4123"
    assert event_line("job_1", log) == "job_1 log exported model.keras"


def test_the_bar_form_draws_a_bar_per_step_and_prints_status_lines_above_it():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with EventPrinter("job_1", bar=True, console=console) as printer:
        printer(Event("status", 1, {"status": "running"}))
        printer(
            Event("progress", 2, {"phase": "finetune", "step_index": 1, "epoch": 1, "epochs": 1, "step": 3, "steps": 6})
        )
        printer(Event("progress", 3, {"phase": "export", "message": "writing model.keras"}))
    text = out.getvalue()
    assert "job_1 status running" in text and "2. finetune" in text and "3/6" in text
